"""The one place that decides where models run."""

from __future__ import annotations

import os

import torch


def pick_device(preference: str | None = None) -> str:
    """CUDA when present, else CPU. ``preference`` (or VS_DEVICE) overrides: "cpu", "cuda", "cuda:1", "mps"."""
    wanted = (preference or os.environ.get("VS_DEVICE") or "auto").strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {wanted!r} was asked for but CUDA is not available; use --device cpu")
    return wanted


def uses_half_precision(device: str) -> bool:
    """Autocast to fp16 on CUDA only; CPU stays float32 (fp16 on CPU is slow and lossy)."""
    return device.startswith("cuda")
