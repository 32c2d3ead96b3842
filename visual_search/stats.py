"""The catalog view (status tiles, facets, price histogram, product picker) from counts, not scans.

At 1M points a full scroll of the collection takes minutes, so nothing a page load calls may read
every payload. Everything here is a handful of payload-index queries, whatever the catalog size:

- products: ``count`` of the points that are a product's first image (``image_index == 0``),
  images: ``count`` of all points;
- products per category / brand: a ``facet`` over the keyword index, restricted to first images;
- price range: the cheapest and dearest first image, each one ordered read of the float index;
  the histogram: one ``count`` per bin over the same index;
- last indexed: the newest ``indexed_at``, one ordered read of the datetime index;
- product picker: the first N products, or up to N whose id is the query or whose title has
  words starting with the query's words (prefix text index), never all of them.

A product is counted by its first image. The engine stores image 0 of every product whose first
photo could be read; a product whose first photo failed but a later one loaded is searchable yet
not counted until the photo is fixed (the indexing report lists the failure).

At 1M points these queries take about a second or two together on 2 busy cores (exact facets
restricted to first images dominate), so the result is also *saved with the index*: the engine
computes it at the end of every indexing run and the embedded store keeps it in meta.json until
the next write clears it (``VectorStore.summary``). ``info`` and page loads then read one dict.

``StatsCache`` keeps one view per store and recomputes it when the store's ``generation`` moves
(every write through this process), and after ``ttl_s`` for a server other processes may write
(a remote store keeps no saved summary: another process may have written since).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import VectorStore

from .core.conditions import AnyOf, Between, Condition, TextMatch
from .core.types import BRAND, CATEGORY, IMAGE_INDEX, INDEXED_AT, PRICE, PRODUCT_ID, TITLE

# One point per product: its first image.
FIRST_IMAGE: Condition = AnyOf(IMAGE_INDEX, (0,))
# Most categories / brands listed (filter choices); the charts show the top 20 of these.
FACET_LIMIT = 2000
PRICE_BINS = 10
REMOTE_TTL_S = 30.0
_LOOKUP_CHUNK = 256


@dataclass(frozen=True)
class PriceBin:
    """Products priced ``low <= price < high`` (the last bin includes ``high``)."""

    low: float
    high: float
    products: int


@dataclass(frozen=True)
class CatalogStats:
    """Counts per product, not per image: a product with five photos is one product."""

    products: int = 0
    images: int = 0
    categories: dict[str, int] = field(default_factory=dict)  # most first; uncategorised not listed
    brands: dict[str, int] = field(default_factory=dict)  # most first
    price_min: float | None = None  # over products that have a price
    price_max: float | None = None
    price_bins: tuple[PriceBin, ...] = ()
    last_indexed: str | None = None  # ISO time of the newest embedded image

    def to_dict(self) -> dict[str, Any]:
        return {
            "products": self.products,
            "images": self.images,
            "categories": dict(self.categories),
            "brands": dict(self.brands),
            "price_min": self.price_min,
            "price_max": self.price_max,
            "price_bins": [[b.low, b.high, b.products] for b in self.price_bins],
            "last_indexed": self.last_indexed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogStats:
        return cls(
            products=int(data["products"]),
            images=int(data["images"]),
            categories={str(k): int(v) for k, v in data["categories"].items()},
            brands={str(k): int(v) for k, v in data["brands"].items()},
            price_min=_number(data.get("price_min")),
            price_max=_number(data.get("price_max")),
            price_bins=tuple(PriceBin(float(a), float(b), int(n)) for a, b, n in data.get("price_bins", ())),
            last_indexed=data.get("last_indexed"),
        )


def catalog_view(store: VectorStore, refresh: bool = False) -> CatalogStats:
    """The summary saved with the index when nothing was written since (one dict read, any size),
    else computed by ``catalog_stats`` and saved for the next reader (``info`` in a later process
    included). The engine computes it at the end of each indexing run, so page loads find it."""
    if not refresh:
        saved = store.summary()
        if saved is not None:
            try:
                return CatalogStats.from_dict(saved)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # a summary from another version: compute a fresh one
    generation = store.generation
    view = catalog_stats(store)
    store.save_summary(view.to_dict(), generation)
    return view


def index_status(store: VectorStore) -> tuple[int, str | None]:
    """(products, last indexed) for ``info``: from the saved summary, else two index queries."""
    saved = store.summary()
    if saved is not None and "products" in saved:
        return int(saved["products"]), saved.get("last_indexed")
    return product_count(store), last_indexed(store)


def catalog_stats(
    store: VectorStore, *, facet_limit: int = FACET_LIMIT, bins: int = PRICE_BINS
) -> CatalogStats:
    """The whole catalog view: about 15 index queries, none of which reads every point."""
    where = [FIRST_IMAGE]
    products = store.count(where=where)
    if not products:
        return CatalogStats(images=store.count())
    low, high = (
        _number(store.extreme(PRICE, where=where)),
        _number(store.extreme(PRICE, largest=True, where=where)),
    )
    return CatalogStats(
        products=products,
        images=store.count(),
        categories=store.facet(CATEGORY, facet_limit, where=where),
        brands=store.facet(BRAND, facet_limit, where=where),
        price_min=low,
        price_max=high,
        price_bins=price_bins(store, low, high, bins) if low is not None and high is not None else (),
        last_indexed=last_indexed(store),
    )


def product_count(store: VectorStore) -> int:
    return store.count(where=[FIRST_IMAGE])


def last_indexed(store: VectorStore) -> str | None:
    stamp = store.extreme(INDEXED_AT, largest=True)
    return None if stamp is None else str(stamp)


def bin_edges(low: float, high: float, bins: int = PRICE_BINS) -> list[float]:
    """Round-number edges covering [low, high] in about ``bins`` steps (0-50, 50-100, ...),
    starting at 0 for non-negative prices so the chart reads like a price list."""
    start = 0.0 if low >= 0 else math.floor(low)
    step = _nice_step((high - start) / bins if high > start else 1.0)
    start = math.floor(start / step) * step
    count = max(1, math.ceil((high - start) / step - 1e-9))  # the last bin includes ``high``
    return [start + i * step for i in range(count + 1)]


def price_bins(store: VectorStore, low: float, high: float, bins: int = PRICE_BINS) -> tuple[PriceBin, ...]:
    """Products per price bin: one count per bin over the float index."""
    edges = bin_edges(low, high, bins)
    out = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = i == len(edges) - 2
        rng = Between(PRICE, gte=a, lte=b) if last else Between(PRICE, gte=a, lt=b)
        out.append(PriceBin(a, b, store.count(where=[FIRST_IMAGE, rng])))
    return tuple(out)


def _nice_step(raw: float) -> float:
    base = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * base:
            return float(m * base)
    return float(10 * base)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------- product lookups


@dataclass(frozen=True)
class ProductChoice:
    product_id: str
    title: str


def find_products(store: VectorStore, query: str = "", limit: int = 50) -> list[ProductChoice]:
    """At most ``limit`` products for a picker, sorted by title: the first ones in the index when
    ``query`` is empty, else the product whose id is ``query`` and those whose title has words
    starting with each word of ``query``. One or two bounded page reads."""
    query = " ".join(query.split())[:200]
    where = [FIRST_IMAGE]
    found: dict[str, ProductChoice] = {}
    if query:
        hits, _ = store.page(1, where=[*where, AnyOf(PRODUCT_ID, (query,))])
        _add(found, hits)
        hits, _ = store.page(limit, where=[*where, TextMatch(TITLE, query)])
    else:
        hits, _ = store.page(limit, where=where)
    _add(found, hits)
    choices = list(found.values())[:limit]
    return sorted(choices, key=lambda c: (c.title.lower(), c.product_id))


def _add(found: dict[str, ProductChoice], hits: Iterable[Any]) -> None:
    for hit in hits:
        pid = str(hit.payload.get(PRODUCT_ID))
        if pid not in found:
            found[pid] = ProductChoice(pid, str(hit.payload.get(TITLE) or pid))


def product_payloads(store: VectorStore, product_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """product id -> the payload of its first stored image, for just these products (evaluation
    needs the categories of the expected products, not of the whole catalog)."""
    wanted = list(dict.fromkeys(str(p) for p in product_ids))
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        chunk = tuple(wanted[start : start + _LOOKUP_CHUNK])
        hits, _ = store.page(len(chunk), where=[FIRST_IMAGE, AnyOf(PRODUCT_ID, chunk)])
        for hit in hits:
            out.setdefault(str(hit.payload.get(PRODUCT_ID)), hit.payload)
        missing = tuple(p for p in chunk if p not in out)  # first photo failed: any image will do
        offset: Any = None
        while missing:
            hits, offset = store.page(_LOOKUP_CHUNK, offset, where=[AnyOf(PRODUCT_ID, missing)])
            for hit in hits:
                out.setdefault(str(hit.payload.get(PRODUCT_ID)), hit.payload)
            if offset is None or not hits:
                break
    return out


# ---------------------------------------------------------------- cache


class StatsCache:
    """One CatalogStats per store, recomputed only when the index changed.

    The store's ``generation`` moves with every write through this process; a store that other
    processes may write too (a remote server: ``store.exclusive`` is False) also expires after
    ``ttl_s``. Thread-safe: concurrent page loads share one computation.
    """

    def __init__(self, ttl_s: float = REMOTE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._at = 0.0
        self._stats: CatalogStats | None = None

    def get(self, store: VectorStore, refresh: bool = False) -> CatalogStats:
        with self._lock:
            key = (id(store), store.generation)
            fresh = (
                self._stats is not None
                and self._key == key
                and (store.exclusive or time.monotonic() - self._at < self.ttl_s)
            )
            if refresh or not fresh:
                self._stats = catalog_view(store, refresh=refresh)
                self._key, self._at = key, time.monotonic()
            assert self._stats is not None
            return self._stats

    def clear(self) -> None:
        with self._lock:
            self._stats, self._key = None, None
