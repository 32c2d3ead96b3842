"""The command line, run as a user would (a subprocess per command, so the index must persist)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from visual_search.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_catalog" / "catalog.csv"


def _cli(*args: str, data_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "VS_MODEL": "test:tiny", "VS_DATA_DIR": str(data_dir), "VS_DEVICE": "cpu"}
    env.pop("QDRANT_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "visual_search", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("cli-data")
    out = _cli("index", str(SAMPLE), "--json", data_dir=data)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["embedded"] == report["images"] > 80 and report["issues"] == []
    return data


def test_index_again_embeds_nothing(indexed: Path) -> None:
    out = _cli("index", str(SAMPLE), "--json", data_dir=indexed)
    report = json.loads(out.stdout)
    assert report["embedded"] == 0 and report["unchanged"] == report["images"]


def test_search_by_image_text_and_both_with_filters(indexed: Path) -> None:
    photo = ROOT / "sample_catalog" / "images" / sorted(os.listdir(ROOT / "sample_catalog" / "images"))[0]
    out = _cli("search", "--image", str(photo), "--top-k", "5", "--json", data_dir=indexed)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["mode"] == "image" and len(data["results"]) == 5
    assert data["results"][0]["image"].endswith(photo.name)  # its own photo ranks first

    out = _cli(
        "search",
        "--text",
        "coffee",
        "--image",
        str(photo),
        "--max-price",
        "30",
        "--top-k",
        "50",
        "--json",
        data_dir=indexed,
    )
    data = json.loads(out.stdout)
    assert data["mode"] == "image+text"
    assert data["results"] and all(r["price"] <= 30 for r in data["results"])

    out = _cli("search", "--text", "lamp", "--category", "Electronics", "--top-k", "50", data_dir=indexed)
    assert out.returncode == 0 and "text search, category: Electronics" in out.stdout
    assert out.stdout.count("[Electronics]") == len(out.stdout.strip().splitlines()) - 1


def test_info(indexed: Path) -> None:
    out = _cli("info", "--json", data_dir=indexed)
    info = json.loads(out.stdout)
    assert info["model_id"].startswith("test:tiny") and info["device"] == "cpu"
    assert info["store"]["backend"] == "qdrant-edge" and info["products"] > 80


def test_errors_are_one_line_without_traceback(indexed: Path, tmp_path: Path) -> None:
    broken = tmp_path / "x.jpg"
    broken.write_bytes(b"nope")
    for args in (["search", "--image", str(broken)], ["search"], ["index", str(tmp_path / "none.csv")]):
        out = _cli(*args, data_dir=indexed)
        assert out.returncode == 2, args
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _cli("info", "--qdrant-url", f"http://127.0.0.1:{port}", data_dir=indexed, timeout=60)
    assert out.returncode == 2 and f"127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


def test_help_everywhere(capsys) -> None:
    for args in ([], ["index"], ["search"], ["info"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*args, "--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out
