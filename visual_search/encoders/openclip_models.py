"""open_clip CLIP models (images and texts in one space): architecture names with a pretrained tag or a
local checkpoint, ``hf-hub:`` repositories, ``local-dir:`` folders, and ``test:tiny``.

``test:tiny`` is a tiny randomly initialised CLIP (seed 0, identical in every process) whose config
ships as ``vs-test-tiny.json`` and is registered with open_clip's public ``add_model_config``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from visual_search.core.errors import ModelUnavailableError
from visual_search.encoders.base import Encoder
from visual_search.encoders.identity import (  # torch-free: `info` computes the same ids
    DEFAULT_TAGS,
    TINY_SEED,
    file_model_id,
    hf_hub_model_id,
    local_dir_model_id,
    tiny_model_id,
)
from visual_search.encoders.weights import (
    Source,
    existing_file,
    hf_source,
    load_local,
    looks_like_path,
    remote_weights,
    split_weights,
    unknown_name_message,
)

TINY_ARCH = "vs-test-tiny"  # the config file's stem: open_clip's own functions know it once registered
TINY_CONFIG_FILE = Path(__file__).with_name(f"{TINY_ARCH}.json")


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


def _open_clip_dim(model: torch.nn.Module, device: str) -> int:
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    size = getattr(model.visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    with torch.inference_mode():
        return int(model.encode_image(torch.zeros(1, 3, *size, device=device)).shape[-1])


@functools.cache
def register_tiny_config() -> None:
    """Make ``vs-test-tiny`` an open_clip architecture (once per process: open_clip rescans its
    config folders on every call)."""
    import open_clip

    open_clip.add_model_config(TINY_CONFIG_FILE)


def _local_hint(arch_spec: str) -> str:
    return (
        "Download the checkpoint on a machine with internet access and pass "
        f"--model {arch_spec}@/path/to/open_clip_pytorch_model.bin (or --model local-dir:/path/to/folder "
        "holding open_clip_config.json and the weights), or use --model test:tiny to try the app "
        "without real weights."
    )


def build_open_clip(spec: str, rest: str, device: str, cache_dir: str | None) -> Encoder:
    """``ARCH``, ``ARCH@tag`` or ``ARCH@/path/weights``: an open_clip architecture name."""
    import open_clip

    register_tiny_config()
    name, weights = split_weights(rest)
    known = open_clip.list_models()
    if name not in known:
        raise ModelUnavailableError(unknown_name_message(spec, name, known, "open_clip"))
    if weights is not None and looks_like_path(weights):
        path = existing_file(spec, weights)
        return load_local(
            spec, path, lambda: _open_clip_encoder(name, str(path), spec, file_model_id(name, path), device)
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
    with remote_weights(spec, f"{name} ({tag})", open_clip_source(cfg, cache_dir), _local_hint(name)):
        return _open_clip_encoder(
            name, tag, spec, f"{name}@{tag}", device, cache_dir, force_quick_gelu=bool(cfg.get("quick_gelu"))
        )


def build_hf_hub(spec: str, rest: str, device: str, cache_dir: str | None) -> Encoder:
    """``hf-hub:org/repo``: config and weights from a Hugging Face repository (cached after once)."""
    repo = rest.strip().strip("/")
    if not repo:
        raise ModelUnavailableError(
            f"{spec!r}: give a repository, e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
        )
    files = [("open_clip_config.json",), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
    hint = (
        "Download the repository's files (open_clip_config.json and the weights) on a machine with "
        "internet access and pass --model local-dir:/path/to/that/folder."
    )
    with remote_weights(spec, f"hf-hub:{repo}", hf_source(repo, files, cache_dir), hint):
        return _open_clip_encoder(f"hf-hub:{repo}", None, spec, hf_hub_model_id(repo), device, cache_dir)


def build_local_dir(spec: str, rest: str, device: str, cache_dir: str | None = None) -> Encoder:
    """``local-dir:/path``: a folder with open_clip_config.json and the weights (no network)."""
    from open_clip.factory import _find_checkpoint_in_dir

    folder = Path(rest.strip()).expanduser()
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
    model_id = local_dir_model_id(folder, path)
    return load_local(
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


def build_test(spec: str, rest: str, device: str, cache_dir: str | None) -> Encoder:
    name, weights = split_weights(rest)
    if name != "tiny":
        raise ModelUnavailableError(f"Unknown test model {spec!r}; the only one is test:tiny")
    register_tiny_config()
    if weights is not None:  # test:tiny@/path/ckpt: same architecture, trained weights
        path = existing_file(spec, weights)
        return load_local(
            spec,
            path,
            lambda: _open_clip_encoder(TINY_ARCH, str(path), spec, tiny_model_id(path), device),
        )
    # Same seed -> identical weights in every process (index in one, search in another). fork_rng
    # restores the global CPU RNG afterwards; the model is built on the CPU, then moved.
    quiet = _DropMessage("No pretrained weights loaded")  # random weights are the point here
    logging.getLogger().addFilter(quiet)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            encoder = _open_clip_encoder(TINY_ARCH, None, spec, tiny_model_id(), "cpu")
    finally:
        logging.getLogger().removeFilter(quiet)
    if device != "cpu":
        encoder.model.to(device)
        encoder.device = device
    return encoder


def open_clip_source(cfg: dict, cache_dir: str | None) -> Source:
    if cfg.get("file"):
        return "", True, False
    if cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/filename" or "org/repo/" (default file name)
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        alternatives = [filename, filename.rsplit(".", 1)[0] + ".safetensors"]
        if filename == "open_clip_pytorch_model.bin":
            alternatives.append("open_clip_model.safetensors")
        return hf_source(repo, [alternatives], cache_dir)
    url = cfg.get("url", "")
    target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
    return url, target.is_file(), False
