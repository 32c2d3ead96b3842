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


def _cli(
    *args: str, data_dir: Path, timeout: float = 300, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "VS_MODEL": "test:tiny", "VS_DATA_DIR": str(data_dir), "VS_DEVICE": "cpu"}
    env.update(env_extra or {})
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
    out = _cli(
        "search", "--image", str(photo), "--top-k", "5", "--background", "off", "--json", data_dir=indexed
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["mode"] == "image" and len(data["results"]) == 5
    assert data["results"][0]["image"].endswith(photo.name)  # its own photo ranks first (whole photo)

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


def test_search_background_and_box(indexed: Path, u2net_home: Path, tmp_path: Path) -> None:
    from PIL import Image

    images = ROOT / "sample_catalog" / "images"
    photo = Image.new("RGB", (900, 420), (255, 255, 255))
    for i, name in enumerate(("saleor-blue-hoodie.jpg", "saleor-light-speed-yellow-paint.jpg")):
        item = Image.open(images / name).convert("RGB")
        item.thumbnail((300, 300))
        photo.paste(item, (40 if i == 0 else 860 - item.width, (420 - item.height) // 2))
    photo.save(tmp_path / "two.jpg")
    env = {"U2NET_HOME": str(u2net_home)}

    def search(*extra: str) -> subprocess.CompletedProcess:
        return _cli("search", "--image", str(tmp_path / "two.jpg"), *extra, data_dir=indexed, env_extra=env)

    first = json.loads(search("--json").stdout)
    assert first["background"] == "auto" and first["views"] == ["cutout", "box"]
    assert len(first["objects"]) == 2 and first["box"] == 1
    assert first["objects"][0]["x1"] < 0.5 < first["objects"][1]["x0"]
    second = json.loads(search("--box", "2", "--json").stdout)
    assert second["box"] == 2 and second["objects"] == first["objects"]
    assert [r["product_id"] for r in second["results"]] != [r["product_id"] for r in first["results"]]
    text = search("--box", "2").stdout
    assert "background auto: searched cut-out + object box" in text
    assert "2 items in the photo" in text and "searched item 2" in text
    legacy = json.loads(search("--remove-background", "--json").stdout)
    assert legacy["background"] == "on" and legacy["views"] == ["cutout"]
    off = json.loads(search("--background", "off", "--json").stdout)
    assert off["views"] == ["photo"] and off["objects"] == [] and off["box"] is None
    for extra, message in (
        (("--box", "3"), "no object 3 in this photo"),
        (("--box", "0"), "--box counts items from 1"),
        (("--background", "off", "--box", "2"), "use --background auto or on"),
        (("--background", "off", "--remove-background"), "drop one of them"),
    ):
        out = search(*extra)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


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
