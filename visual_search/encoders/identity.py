"""A model spec's ``model_id`` without building the network or reading the weights into memory.

``info`` names the configured model beside the index's; loading ViT-B-32 only to print its id costs
seconds (and on a first run an ONNX export). The id is a function of the spec: an open_clip tag
resolved against open_clip's own tables, a local file's content hash (``weights.file_id``), or a
constant for ``test:tiny``. Where the id is only known once the weights are loaded (a timm
pretrained tag: timm resolves it while creating the model), ``model_identity`` returns None and the
caller loads the encoder. tests/test_info.py checks every spec form here against ``create_encoder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visual_search.encoders.weights import existing_file, file_id, looks_like_path, split_weights


@dataclass(frozen=True)
class ModelIdentity:
    model_id: str
    supports_text: bool  # open_clip models embed texts too; timm backbones are image-only


def model_identity(spec: str) -> ModelIdentity | None:
    """The id ``create_encoder(spec).model_id`` would have, or None when only loading tells.

    None also for a spec that cannot load (unknown name or tag): loading it raises the builder's
    message. A missing weights file raises ModelUnavailableError (the builders' own message).
    """
    spec = (spec or "").strip()
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in _KNOWN:
        from visual_search.encoders.registry import BUILDERS

        # the same dispatch as registry._create: a registered prefix, else an open_clip name
        return None if sep and prefix in BUILDERS else _open_clip(spec)
    return _KNOWN[prefix](spec, rest)


def _test(spec: str, rest: str) -> ModelIdentity | None:
    from visual_search.encoders.openclip_models import TINY_SEED

    name, weights = split_weights(rest)
    if name != "tiny":
        return None  # the builder's error message
    if weights is None:
        return ModelIdentity(f"test:tiny@random-seed{TINY_SEED}", True)
    return ModelIdentity(f"test:tiny@{file_id(existing_file(spec, weights))}", True)


def _hf_hub(spec: str, rest: str) -> ModelIdentity | None:
    repo = rest.strip().strip("/")
    return ModelIdentity(f"hf-hub:{repo}", True) if repo else None


def _local_dir(spec: str, rest: str) -> ModelIdentity | None:
    from open_clip.factory import _find_checkpoint_in_dir

    folder = Path(rest.strip()).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        return None  # the builder's error message
    checkpoint = _find_checkpoint_in_dir(folder)
    if checkpoint is None:
        return None
    return ModelIdentity(f"local-dir:{folder.resolve().name}@{file_id(Path(checkpoint))}", True)


def _timm(spec: str, rest: str) -> ModelIdentity | None:
    name, weights = split_weights(rest)
    if weights is None or not looks_like_path(weights):
        return None  # a pretrained tag: timm resolves it while creating the model
    import timm

    if not timm.is_model(name.split(".", 1)[0]):
        return None
    return ModelIdentity(f"timm:{name}@{file_id(existing_file(spec, weights))}", False)


def _open_clip(spec: str) -> ModelIdentity | None:
    import open_clip

    from visual_search.encoders.openclip_models import DEFAULT_TAGS, register_tiny_config

    register_tiny_config()
    name, weights = split_weights(spec)
    if name not in open_clip.list_models():
        return None
    if weights is not None and looks_like_path(weights):
        return ModelIdentity(f"{name}@{file_id(existing_file(spec, weights))}", True)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if weights is None:
        if not tags:
            return None
        weights = DEFAULT_TAGS.get(name) if DEFAULT_TAGS.get(name) in tags else tags[0]
    tag = weights.lower().replace("-", "_")
    return ModelIdentity(f"{name}@{tag}", True) if tag in tags else None


_KNOWN = {"test": _test, "hf-hub": _hf_hub, "local-dir": _local_dir, "timm": _timm}
