"""One table from model spec to builder: every ``prefix:`` the ``--model`` grammar knows, plus the
default for plain open_clip names (``ARCH``, ``ARCH@tag``, ``ARCH@/path/weights``)."""

from __future__ import annotations

from collections.abc import Callable

from visual_search.core.config import DEFAULT_MODEL
from visual_search.core.errors import ModelUnavailableError
from visual_search.device import pick_device, pick_runtime
from visual_search.encoders import openclip_models, timm_models
from visual_search.encoders.base import Encoder

Builder = Callable[[str, str, str, "str | None"], Encoder]  # (spec, rest after "prefix:", device, cache_dir)

BUILDERS: dict[str, Builder] = {
    "test": openclip_models.build_test,
    "hf-hub": openclip_models.build_hf_hub,
    "local-dir": openclip_models.build_local_dir,
    "timm": timm_models.build_timm,
}
DEFAULT_BUILDER: Builder = openclip_models.build_open_clip  # a spec without a registered prefix


def register_encoder(prefix: str) -> Callable[[Builder], Builder]:
    """Register ``builder(spec, rest, device, cache_dir)`` for specs ``"<prefix>:<rest>"``."""

    def decorate(builder: Builder) -> Builder:
        BUILDERS[prefix] = builder
        return builder

    return decorate


def create_encoder(
    spec: str, device: str | None = None, cache_dir: str | None = None, runtime: str | None = "torch"
) -> Encoder:
    """Build the encoder for a model spec (grammar in the module docstring).

    ``device``: None picks via visual_search.device.pick_device (CUDA if present, VS_DEVICE overrides).
    ``cache_dir``: where downloads go (default: the huggingface_hub / timm caches); ONNX exports go
    under ``cache_dir``/onnx (default ``$VS_ONNX_CACHE`` or ~/.cache/visual_search/onnx).
    ``runtime``: "torch" (default: exact fp32 eager, what training and evaluation code wants), "onnx",
    "onnx-int8", or "auto"/None (visual_search.device.pick_runtime: VS_RUNTIME, else the measured CPU
    default; torch on CUDA). The app passes its --runtime setting. ``model_id`` is the same for every
    runtime (figures in visual_search.encoders.runtime).
    Raises ModelUnavailableError with a message for people when weights cannot be loaded.
    """
    encoder = _create(spec, device, cache_dir)
    chosen = pick_runtime(runtime, encoder.device)
    if chosen != "torch":
        from visual_search.encoders.runtime import accelerate

        accelerate(encoder, chosen, cache_dir)
    return encoder


def _create(spec: str, device: str | None, cache_dir: str | None) -> Encoder:
    spec = (spec or "").strip()
    if not spec:
        raise ModelUnavailableError(f"No model given; use e.g. --model {DEFAULT_MODEL} or --model test:tiny")
    device = pick_device(device)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in BUILDERS:
        return BUILDERS[prefix](spec, rest, device, cache_dir)
    return DEFAULT_BUILDER(spec, spec, device, cache_dir)
