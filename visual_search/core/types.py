"""Typed values shared by the engine, the store and the UI (no Qdrant or torch types here)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visual_search.core.errors import InvalidQueryError

# Payload keys every indexed point carries. Extra catalog columns live under ATTRS_KEY.
PRODUCT_ID = "product_id"
IMAGE_INDEX = "image_index"
IMAGE = "image"
IMAGE_HASH = "image_hash"
TITLE = "title"
CATEGORY = "category"
BRAND = "brand"
PRICE = "price"
DESCRIPTION = "description"
URL = "url"
ATTRS_KEY = "attrs"
INDEXED_AT = "indexed_at"  # ISO 8601 UTC time the point was last embedded (set by the engine)

KEYWORD_FIELDS = (PRODUCT_ID, CATEGORY, BRAND)
FLOAT_FIELDS = (PRICE,)


@dataclass(frozen=True)
class SearchFilters:
    """What the caller wants to restrict results to. Empty tuples / None mean 'no restriction'.

    ``attributes`` filters any other catalog column (stored under ``attrs.<column>``): any-of match.
    """

    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Validate once, here, for every caller (CLI, API, UI): a NaN price would otherwise reach
        Qdrant's Rust code and panic, and min > max would silently match nothing."""
        for name in ("categories", "brands"):
            value = getattr(self, name)
            if isinstance(value, str):  # "shoes" means ("shoes",), not ("s", "h", ...)
                object.__setattr__(self, name, (value,))
            elif not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        low = _price(self.min_price, "minimum")
        high = _price(self.max_price, "maximum")
        if low is not None and high is not None and low > high:
            raise InvalidQueryError(
                f"The minimum price ({low:g}) is above the maximum ({high:g}); swap them or clear one."
            )
        object.__setattr__(self, "min_price", low)
        object.__setattr__(self, "max_price", high)

    def describe(self) -> str:
        """One line for people: what was applied."""
        parts: list[str] = []
        if self.categories:
            parts.append("category: " + " or ".join(self.categories))
        if self.brands:
            parts.append("brand: " + " or ".join(self.brands))
        if self.min_price is not None and self.max_price is not None:
            parts.append(f"price {self.min_price:g}–{self.max_price:g}")
        elif self.min_price is not None:
            parts.append(f"price ≥ {self.min_price:g}")
        elif self.max_price is not None:
            parts.append(f"price ≤ {self.max_price:g}")
        for key, values in self.attributes.items():
            if values:
                parts.append(f"{key}: " + " or ".join(values))
        return "; ".join(parts) if parts else "no filters"


def _price(value: Any, label: str) -> float | None:
    """None, or a finite, non-negative float; InvalidQueryError with a one-line message otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise InvalidQueryError(f"The {label} price must be a number, not {value!r}.")
    try:
        price = float(value)
    except ValueError:
        raise InvalidQueryError(f"The {label} price must be a number, not {value!r}.") from None
    if not math.isfinite(price):
        raise InvalidQueryError(f"The {label} price must be a finite number, not {price}.")
    if price < 0:
        raise InvalidQueryError(f"The {label} price cannot be negative (got {price:g}).")
    return price


@dataclass(frozen=True)
class IndexPoint:
    """One image of one product, ready to store."""

    id: str  # uuid5 string
    vector: np.ndarray  # float32, L2-normalised
    payload: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """One stored point returned by the store, best first."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CollectionInfo:
    """What the store knows about itself."""

    backend: str  # "qdrant-edge" or "qdrant-remote"
    location: str  # directory or URL
    model_id: str | None
    dim: int | None
    points: int


@dataclass(frozen=True)
class EngineStatus:
    """What ``info`` and the Catalog tab show (engine.status); here, not in engine.py, so ``info``
    can build one from the index's saved summary without importing the engine (torch)."""

    model_id: str
    device: str
    supports_text: bool
    store: CollectionInfo
    products: int
    last_indexed: str | None
    runtime: str = "torch"  # what runs the encoder: torch, onnx, onnx-int8 (or onnx-mixed)


@dataclass(frozen=True)
class ProductResult:
    """One product in a result list (best-scoring image of that product)."""

    product_id: str
    score: float
    title: str
    price: float | None
    category: str | None
    brand: str | None
    image: str
    description: str | None = None
    url: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hit(cls, hit: Hit) -> ProductResult:
        p = hit.payload
        return cls(
            product_id=str(p[PRODUCT_ID]),
            score=float(hit.score),
            title=str(p.get(TITLE) or p[PRODUCT_ID]),
            price=p.get(PRICE),
            category=p.get(CATEGORY),
            brand=p.get(BRAND),
            image=str(p.get(IMAGE, "")),
            description=p.get(DESCRIPTION),
            url=p.get(URL),
            attributes=dict(p.get(ATTRS_KEY) or {}),
            payload=dict(p),
        )
