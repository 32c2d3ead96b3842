"""The one place that decides where models run, and with which inference runtime."""

from __future__ import annotations

import logging
import os
import sys

from visual_search.core.config import device_from_env, runtime_from_env
from visual_search.core.errors import VisualSearchError

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "onnx-int8")
# Measured default on CPU (bench/RESULTS.md "CPU inference runtime", visual_search/encoders/runtime.py): ONNX
# Runtime with int8 matrix multiplies runs ViT-B-32 ~4x faster than eager torch at cosine >= 0.9998, and
# holds cosine 1.0000 on EfficientNet-Lite0's real weights (its convolutions stay fp32). A tower whose
# int8 cosine falls under 0.99 is served in ONNX fp32 instead; a model that will not export stays on torch.
CPU_DEFAULT_RUNTIME = "onnx-int8"


BACKGROUND_RUNTIMES = ("rembg", "onnx", "onnx-int8")
# Background removal (u2netp) always runs on ONNX Runtime; what changes is how (bench/RESULTS.md "Background
# removal", visual_search/images/background.py): "rembg" is rembg's own session (its default options: worker
# threads spin between runs, its own pre/post-processing), "onnx" the same model on this app's session options
# (visual_search.encoders.runtime.session_options: threads = cores, graph optimisation ALL, no spinning) with
# the app's leaner pre/post-processing (images.background._soft_mask), fp32 at MODEL_INPUT_SIDE (320).
# int8 (static, calibrated on catalog photos) and smaller input sides failed the mask IoU >= 0.95 guard, so
# "onnx-int8" runs "onnx".
CPU_DEFAULT_BACKGROUND_RUNTIME = "onnx"


# Traces of a GPU torch could use on Linux: the device nodes and /proc entry of the NVIDIA driver, AMD
# ROCm's node (torch.cuda on ROCm builds), WSL2's GPU paravirtualisation; and on the PCI bus an NVIDIA
# (0x10de) or AMD/ATI graphics (0x1002) device, so a driver that loads on first use still counts.
GPU_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
GPU_PCI_VENDORS = ("0x10de", "0x1002")
PCI_DEVICES = "/sys/bus/pci/devices"


def gpu_may_be_present() -> bool:
    """False only when no GPU can be there: Linux with none of the traces above (and a readable PCI
    bus), or macOS (no CUDA). Then "auto" is "cpu" without importing torch, which takes seconds
    (``info`` needs no torch). Anything unsure says True, and torch decides as before."""
    if sys.platform == "darwin":
        return False
    if not sys.platform.startswith("linux"):
        return True  # only torch can tell
    if any(os.path.exists(path) for path in GPU_PATHS):
        return True
    try:
        devices = os.listdir(PCI_DEVICES)
        if not devices:
            return True  # no PCI bus to read (some sandboxes): unsure
        for device in devices:
            with open(os.path.join(PCI_DEVICES, device, "vendor"), encoding="ascii") as fh:
                if fh.read().strip().lower() in GPU_PCI_VENDORS:
                    return True
    except OSError:
        return True
    return False


def pick_device(preference: str | None = None) -> str:
    """CUDA when present, else CPU. ``preference`` (or VS_DEVICE) overrides: "cpu", "cuda", "cuda:1", "mps"."""
    wanted = (preference or device_from_env() or "auto").strip().lower()
    if wanted == "cpu" or (wanted == "auto" and not gpu_may_be_present()):
        return "cpu"
    import torch  # here, not at import: seconds that `info` and other torch-free callers do not pay

    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {wanted!r} was asked for but CUDA is not available; use --device cpu")
    return wanted


def pick_runtime(requested: str | None, device: str) -> str:
    """torch, onnx or onnx-int8 for ``device``. ``requested`` (or VS_RUNTIME) is one of those or "auto".

    CUDA (and MPS) keep torch, with fp16 autocast on CUDA (``uses_half_precision``): the ONNX path is a CPU
    path. On the CPU "auto" means CPU_DEFAULT_RUNTIME.
    """
    wanted = (requested or runtime_from_env() or "auto").strip().lower()
    if wanted not in (*RUNTIMES, "auto"):
        raise VisualSearchError(f"Unknown runtime {wanted!r}; use one of {', '.join(RUNTIMES)} or auto.")
    if not device.startswith("cpu"):
        if wanted not in ("auto", "torch"):
            log.warning("runtime %s runs on the CPU only; using torch on %s", wanted, device)
        return "torch"
    return CPU_DEFAULT_RUNTIME if wanted == "auto" else wanted


def uses_half_precision(device: str) -> bool:
    """Autocast to fp16 on CUDA only; CPU stays float32 (fp16 on CPU is slow and lossy)."""
    return device.startswith("cuda")


def pick_background_runtime(requested: str | None, device: str = "cpu") -> str:
    """How background removal runs: "rembg", "onnx" or "onnx-int8", from the app's runtime setting.

    ``requested`` is the app's --runtime (or VS_RUNTIME): "torch" keeps rembg's own session (the exact
    reference), "onnx"/"onnx-int8" ask for the tuned session, "auto" means CPU_DEFAULT_BACKGROUND_RUNTIME.
    Off the CPU rembg's own session stays: it picks the CUDA execution provider itself when one is there.
    """
    wanted = (requested or runtime_from_env() or "auto").strip().lower()
    if wanted not in (*RUNTIMES, "auto"):
        raise VisualSearchError(f"Unknown runtime {wanted!r}; use one of {', '.join(RUNTIMES)} or auto.")
    if not device.startswith("cpu") or wanted == "torch":
        return "rembg"
    return CPU_DEFAULT_BACKGROUND_RUNTIME if wanted == "auto" else wanted
