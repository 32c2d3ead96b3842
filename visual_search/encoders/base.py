"""The Encoder interface: images (and, for CLIP models, texts) -> L2-normalised float32 vectors."""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from visual_search.core.config import DEFAULT_MODEL
from visual_search.core.errors import UnsupportedQueryError
from visual_search.device import uses_half_precision


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
        raise NotImplementedError  # only reached when supports_text; embed_texts checks first

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

    def require_text(self) -> None:
        """Raise UnsupportedQueryError unless this model embeds text: the one place that says text
        search needs a CLIP model (the engine, the UI and ``embed_texts`` all ask here)."""
        if not self.supports_text:
            raise UnsupportedQueryError(
                f"Model {self.spec} embeds images only, so text search is not available; search with a "
                f"photo, or use a CLIP model such as --model {DEFAULT_MODEL}."
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
        self.require_text()
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
