"""Training data: product captions, the product-level train/validation split, the augmented
training set (each sample's randomness a function of (seed, epoch, index)) and its batches."""

from __future__ import annotations

import hashlib
import os
import random
import sys
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from PIL import Image

from visual_search.catalog import Product
from visual_search.core.errors import ImageError
from visual_search.encoders import OpenClipEncoder
from visual_search.images.load import load_image
from visual_search.training.augment import train_augment
from visual_search.training.finetune.config import LOAD_MAX_SIDE


def product_text(product: Product) -> str:
    """The caption a product image is trained against: title, category, brand, then description.

    The tokenizer truncates (77 tokens for most CLIPs), so the short, decisive fields come first.
    """
    head = [product.title]
    if product.category:
        head.append(product.category)
    if product.brand:
        head.append(f"by {product.brand}")
    text = ", ".join(head)
    if product.description:
        text += ". " + " ".join(product.description.split())
    return text


def split_products(
    product_ids: Collection[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train, validation) product ids: disjoint, deterministic for a seed, independent of order.

    Products are ranked by sha256(seed, id); the first ``round(n * val_fraction)`` (at least one when
    the fraction is positive) go to validation. Adding products to a catalog moves few others.
    """
    ids = sorted(set(product_ids))
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    n_val = 0 if val_fraction == 0 or len(ids) < 2 else max(1, round(len(ids) * val_fraction))
    ranked = sorted(ids, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    val = set(ranked[:n_val])
    return [pid for pid in ids if pid not in val], [pid for pid in ids if pid in val]


@dataclass(frozen=True)
class Sample:
    source: str
    label: int  # index into the run's product list (train + val, sorted)
    product_id: str


class TrainSet(torch.utils.data.Dataset):
    """Keys are (epoch, index): each sample's augmentation is a function of (seed, epoch, index)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess: Callable[[Image.Image], torch.Tensor],
        size: int,
        seed: int,
        background_p: float,
    ):
        self.samples = list(samples)
        self.preprocess = preprocess
        self.size = size
        self.seed = seed
        self.background_p = background_p

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        epoch, index = key
        sample = self.samples[index]
        rng = random.Random(f"train:{self.seed}:{epoch}:{index}")
        try:
            image = load_image(sample.source, max_side=LOAD_MAX_SIDE)
        except ImageError as exc:
            print(f"warning: skipping {sample.source}: {exc}", file=sys.stderr)
            return None
        image = train_augment(image, rng, self.size, background_p=self.background_p)
        return self.preprocess(image), sample.label


def collate(items: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
    good = [item for item in items if item is not None]
    if len(good) < 2:
        return None
    return torch.stack([pixels for pixels, _ in good]), torch.tensor([label for _, label in good])


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """Shuffled batches of (epoch, index) keys; a last batch of one sample joins the previous one."""
    order = list(range(n))
    random.Random(f"order:{seed}:{epoch}").shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2].extend(batches.pop())
    return [[(epoch, i) for i in batch] for batch in batches]


def image_size(encoder: OpenClipEncoder) -> int:
    size = getattr(encoder.model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def load_many(sources: Sequence[str]) -> list[Image.Image | None]:
    def one(source: str) -> Image.Image | None:
        try:
            return load_image(source, max_side=LOAD_MAX_SIDE)
        except ImageError as exc:
            print(f"warning: skipping {source}: {exc}", file=sys.stderr)
            return None

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, sources))
