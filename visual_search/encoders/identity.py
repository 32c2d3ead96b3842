"""A model spec's ``model_id`` without building the network or reading the weights into memory.

``info`` names the configured model beside the index's; loading ViT-B-32 only to print its id costs
seconds (and on a first run an ONNX export). The id is a function of the spec: an open_clip tag
resolved against open_clip's own tables, a local file's content hash (``weights.file_id``), or a
constant for ``test:tiny``. Where the id is only known once the weights are loaded (a timm
pretrained tag: timm resolves it while creating the model), ``model_identity`` returns None and the
caller loads the encoder. tests/test_info.py checks the spec forms here against ``create_encoder``.

This module imports neither torch nor open_clip unless it must: a name or tag is checked against
open_clip's (or timm's) tables, which import torch (seconds), except when the id it would give is
the id the index was built with (``index_model_id``): that model loaded when the index was built,
so the name and tag are known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visual_search.encoders.weights import existing_file, file_id, looks_like_path, split_weights

# Pretrained tag used when a spec names an open_clip architecture without one. Others: first tag listed
# by open_clip.list_pretrained().
DEFAULT_TAGS = {
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-L-14": "laion2b_s32b_b82k",
    "ViT-H-14": "laion2b_s32b_b79k",
}
TINY_SEED = 0  # test:tiny's random weights: the same in every process


def file_model_id(name: str, path: Path) -> str:
    """Id of a model whose weights come from a local file: ``NAME@file:...#sha256:...`` (the
    builders and ``model_identity`` both use it, so the two cannot drift)."""
    return f"{name}@{file_id(path)}"


def tiny_model_id(path: Path | None = None) -> str:
    """``test:tiny``: random weights from TINY_SEED, or a tiny checkpoint file."""
    return f"test:tiny@random-seed{TINY_SEED}" if path is None else file_model_id("test:tiny", path)


def local_dir_model_id(folder: Path, checkpoint: Path) -> str:
    return file_model_id(f"local-dir:{folder.resolve().name}", checkpoint)


def hf_hub_model_id(repo: str) -> str:
    return f"hf-hub:{repo}"


@dataclass(frozen=True)
class ModelIdentity:
    model_id: str
    supports_text: bool  # open_clip models embed texts too; timm backbones are image-only


def model_identity(spec: str, index_model_id: str | None = None) -> ModelIdentity | None:
    """The id ``create_encoder(spec).model_id`` would have, or None when only loading tells.

    None also for a spec that cannot load (unknown name or tag): loading it raises the builder's
    message. A missing weights file raises ModelUnavailableError (the builders' own message).
    ``index_model_id``: the id stored with the index, which spares the name/tag check when equal.
    """
    spec = (spec or "").strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _KNOWN:
        return _KNOWN[prefix](spec, rest, index_model_id)
    if sep:
        from visual_search.encoders.registry import BUILDERS

        if prefix in BUILDERS:  # a third-party prefix: only its builder knows its ids
            return None
    return _open_clip(spec, index_model_id)  # the same dispatch as registry._create


def _test(spec: str, rest: str, index_model_id: str | None) -> ModelIdentity | None:
    name, weights = split_weights(rest)
    if name != "tiny":
        return None  # the builder's error message
    if weights is None:
        return ModelIdentity(tiny_model_id(), True)
    return ModelIdentity(tiny_model_id(existing_file(spec, weights)), True)


def _hf_hub(spec: str, rest: str, index_model_id: str | None) -> ModelIdentity | None:
    repo = rest.strip().strip("/")
    return ModelIdentity(hf_hub_model_id(repo), True) if repo else None


def _local_dir(spec: str, rest: str, index_model_id: str | None) -> ModelIdentity | None:
    from open_clip.factory import _find_checkpoint_in_dir

    folder = Path(rest.strip()).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        return None  # the builder's error message
    checkpoint = _find_checkpoint_in_dir(folder)
    if checkpoint is None:
        return None
    return ModelIdentity(local_dir_model_id(folder, Path(checkpoint)), True)


def _timm(spec: str, rest: str, index_model_id: str | None) -> ModelIdentity | None:
    name, weights = split_weights(rest)
    if weights is None or not looks_like_path(weights):
        return None  # a pretrained tag: timm resolves it while creating the model
    model_id = file_model_id(f"timm:{name}", existing_file(spec, weights))
    if model_id != index_model_id:
        import timm

        if not timm.is_model(name.split(".", 1)[0]):
            return None
    return ModelIdentity(model_id, False)


def _open_clip(spec: str, index_model_id: str | None) -> ModelIdentity | None:
    name, weights = split_weights(spec)
    path = weights is not None and looks_like_path(weights)
    if path:
        candidate: str | None = file_model_id(name, existing_file(spec, weights))
    elif weights is None:
        candidate = f"{name}@{DEFAULT_TAGS[name]}" if name in DEFAULT_TAGS else None
    else:
        candidate = f"{name}@{weights.lower().replace('-', '_')}"
    if candidate is not None and candidate == index_model_id:
        return ModelIdentity(candidate, True)

    import open_clip

    from visual_search.encoders.openclip_models import register_tiny_config

    register_tiny_config()
    if name not in open_clip.list_models():
        return None
    if path:
        return ModelIdentity(str(candidate), True)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if weights is None:
        if not tags:
            return None
        weights = DEFAULT_TAGS.get(name) if DEFAULT_TAGS.get(name) in tags else tags[0]
    tag = weights.lower().replace("-", "_")
    return ModelIdentity(f"{name}@{tag}", True) if tag in tags else None


_KNOWN = {"test": _test, "hf-hub": _hf_hub, "local-dir": _local_dir, "timm": _timm}
