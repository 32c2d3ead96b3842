"""The prepared GPU check (bench/bench_gpu_smoke.py) must still run when a GPU is finally lent:
it is exercised here on the CPU with the tiny model, so an API change that breaks it fails CI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu_smoke", ROOT / "bench" / "bench_gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_smoke_script_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert (
        _load_script().main(["--device", "cpu", "--model", "test:tiny", "--queries", "1", "--out", str(out)])
        == 0
    )
    report = out.read_text(encoding="utf-8")
    assert "device `cpu`" in report
    assert "images embedded" in report
    assert "pipeline off: 3 SYNTHETIC shopper photos" in report
    assert "pipeline auto:" in report
    # Same device and runtime family on both sides: the agreement check must report (near) identity.
    cos_min = float(report.split("cosine min ")[1].split(",")[0])
    assert cos_min > 0.999
