"""Catalog audit for merchandisers: near-duplicate products, products filed in the wrong category
(and ``catalog_stats``, the counts, which stats.py computes from payload indexes).

Everything works from what is already in the vector store (payloads and image vectors), so an audit
needs no model and no access to the original photos.

Similarity between two products is the cosine similarity of their closest pair of images (a product
with a front and a side shot is a duplicate of another if any shot matches). Up to
``MAX_MATRIX_IMAGES`` images, all vectors are pulled into memory and compared exactly with blocked
matrix products (50k images of 512 floats is ~100 MB; time grows with the square of the image count:
measured 3-10 s for 10k images on 2 busy CPU cores, so 50k take one to four minutes there).
Larger catalogs fall back to one store search per image, which is slower and approximate (only the
nearest points of each image are looked at).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import stats
from .core.types import CATEGORY, IMAGE, IMAGE_INDEX, PRODUCT_ID, TITLE, ProductResult
from .stats import CatalogStats

if TYPE_CHECKING:
    from .engine import SearchEngine
    from .store import VectorStore

MAX_MATRIX_IMAGES = 50_000
# Upper bound on floats in one block of the similarity matrix (32 MB of float32).
_BLOCK_FLOATS = 8_000_000
_VECTOR_CHUNK = 1_000


@dataclass(frozen=True)
class DuplicatePair:
    product_a: str
    product_b: str
    title_a: str
    title_b: str
    image_a: str  # the two images that matched best
    image_b: str
    score: float


@dataclass(frozen=True)
class CategorySuspect:
    product_id: str
    title: str
    category: str
    image: str  # the product's image closest to the nearest neighbour
    neighbour_categories: dict[str, int]  # categories of the k nearest products, most first
    suggested_category: str
    neighbour_id: str  # nearest other product
    neighbour_title: str
    neighbour_image: str
    score: float  # similarity to the nearest neighbour


# ---------------------------------------------------------------- stats


def catalog_stats(engine: SearchEngine) -> CatalogStats:
    """Counts per product, not per image, from payload-index counts and facets (see stats.py);
    never a scan, so it answers at once on a 1M-point index."""
    return stats.catalog_stats(engine.store)


# ---------------------------------------------------------------- duplicates


def near_duplicates(
    engine: SearchEngine,
    threshold: float = 0.92,
    limit: int = 50,
    *,
    max_matrix_images: int = MAX_MATRIX_IMAGES,
) -> list[DuplicatePair]:
    """Pairs of different products whose closest images score >= threshold, best first, each pair once.

    Exact: a pair in the overall top ``limit`` is always in the top ``limit`` neighbours of both its
    products, so looking at each product's top ``limit`` neighbours is enough.
    """
    if limit <= 0:
        return []
    index = _ProductIndex.load(engine.store, max_matrix_images)
    neighbours, scores = index.top_neighbours(limit)
    best: dict[tuple[int, int], float] = {}
    for a in range(len(index.products)):
        for b, score in zip(neighbours[a], scores[a], strict=True):
            if b < 0 or score < threshold:
                break
            key = (min(a, int(b)), max(a, int(b)))
            best[key] = max(best.get(key, -np.inf), float(score))
    ranked = sorted(
        best.items(), key=lambda kv: (-kv[1], index.products[kv[0][0]], index.products[kv[0][1]])
    )[:limit]
    pairs: list[DuplicatePair] = []
    for (a, b), score in ranked:
        pa, pb = index.best_images(a, b)
        pairs.append(
            DuplicatePair(
                product_a=index.products[a],
                product_b=index.products[b],
                title_a=_title(pa),
                title_b=_title(pb),
                image_a=str(pa.get(IMAGE, "")),
                image_b=str(pb.get(IMAGE, "")),
                score=score,
            )
        )
    return pairs


# ---------------------------------------------------------------- categories


def miscategorised(
    engine: SearchEngine,
    k: int = 5,
    limit: int = 50,
    *,
    max_matrix_images: int = MAX_MATRIX_IMAGES,
) -> list[CategorySuspect]:
    """Products that look like another category: their nearest other product is in another category
    and most of their k nearest products (those with a category) are outside their own.

    Most confident first: the largest share of neighbours agreeing on one other category, then the
    closest nearest neighbour. Products without a category are neither judged nor counted as votes.
    """
    if k <= 0 or limit <= 0:
        return []
    index = _ProductIndex.load(engine.store, max_matrix_images)
    neighbours, scores = index.top_neighbours(k)
    cats = [index.payloads[p][0].get(CATEGORY) or None for p in range(len(index.products))]
    found: list[tuple[float, float, str, CategorySuspect]] = []
    for a, own in enumerate(cats):
        if own is None:
            continue
        near = [(int(b), float(s)) for b, s in zip(neighbours[a], scores[a], strict=True) if b >= 0]
        if not near:
            continue
        nearest, nearest_score = near[0]
        if cats[nearest] is None or cats[nearest] == own:
            continue
        votes: Counter[str] = Counter()
        weight: dict[str, float] = defaultdict(float)
        for b, s in near:
            if cats[b] is not None:
                votes[cats[b]] += 1
                weight[cats[b]] += s
        voters = sum(votes.values())
        outside = voters - votes[own]
        if outside * 2 <= voters:
            continue
        suggested = max((c for c in votes if c != own), key=lambda c: (votes[c], weight[c]))
        mine, theirs = index.best_images(a, nearest)
        suspect = CategorySuspect(
            product_id=index.products[a],
            title=_title(mine),
            category=own,
            image=str(mine.get(IMAGE, "")),
            neighbour_categories=_ranked(votes),
            suggested_category=suggested,
            neighbour_id=index.products[nearest],
            neighbour_title=_title(theirs),
            neighbour_image=str(theirs.get(IMAGE, "")),
            score=nearest_score,
        )
        found.append((votes[suggested] / voters, nearest_score, index.products[a], suspect))
    found.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [t[3] for t in found[:limit]]


def neighbours(engine: SearchEngine, product_id: str, k: int = 8) -> list[ProductResult]:
    """The k products that look most like this one (for the audit's 'compare' view)."""
    return engine.more_like_this(product_id, top_k=k).results


# ---------------------------------------------------------------- internals


@dataclass
class _ProductIndex:
    """Every stored image, grouped by product (contiguous, ordered by image index)."""

    store: VectorStore
    products: list[str]  # product id per product index
    point_ids: list[list[str]]  # per product
    payloads: list[list[dict[str, Any]]]  # per product, parallel to point_ids
    vectors: np.ndarray | None  # all points, product after product (matrix mode only)
    starts: np.ndarray  # first row of each product in ``vectors``

    @classmethod
    def load(cls, store: VectorStore, max_matrix_images: int) -> _ProductIndex:
        grouped: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
        for hit in store.scroll():
            grouped[str(hit.payload.get(PRODUCT_ID))].append((_image_index(hit.payload), hit.id, hit.payload))
        products = sorted(grouped)
        point_ids: list[list[str]] = []
        payloads: list[list[dict[str, Any]]] = []
        for pid in products:
            images = sorted(grouped[pid], key=lambda t: (t[0], t[1]))
            point_ids.append([t[1] for t in images])
            payloads.append([t[2] for t in images])
        total = sum(len(ids) for ids in point_ids)
        vectors = None
        if total <= max_matrix_images:
            vectors, point_ids, payloads = _load_vectors(store, point_ids, payloads)
            products = [p for p, ids in zip(products, point_ids, strict=True) if ids]
            point_ids = [ids for ids in point_ids if ids]
            payloads = [pl for pl in payloads if pl]
        sizes = np.array([len(ids) for ids in point_ids], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes
        return cls(store, products, point_ids, payloads, vectors, starts)

    def top_neighbours(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """For each product, its m most similar other products: (indices, scores), best first.

        Rows are padded with index -1 / score -inf when there are fewer than m other products.
        """
        n_products = len(self.products)
        idx = np.full((n_products, m), -1, dtype=np.int64)
        sim = np.full((n_products, m), -np.inf, dtype=np.float32)
        if n_products < 2:
            return idx, sim
        if self.vectors is not None:
            self._top_by_matrix(m, idx, sim)
        else:
            self._top_by_search(m, idx, sim)
        return idx, sim

    def _top_by_matrix(self, m: int, idx: np.ndarray, sim: np.ndarray) -> None:
        assert self.vectors is not None
        vectors, starts = self.vectors, self.starts
        n_points, n_products = len(vectors), len(self.products)
        ends = np.append(starts[1:], n_points)
        rows_per_block = max(1, _BLOCK_FLOATS // max(n_points, 1))
        one_image_each = n_points == n_products
        first = 0
        while first < n_products:
            last = first + 1  # at least one product per block, whole products only
            while last < n_products and ends[last] - starts[first] <= rows_per_block:
                last += 1
            block = vectors[starts[first] : ends[last - 1]] @ vectors.T  # points x points
            if one_image_each:  # the common case: points are products already
                per_pair = block
            else:  # best image pair per product pair: max over columns, then over rows
                per_product = np.maximum.reduceat(block, starts, axis=1)  # points x products
                per_pair = np.maximum.reduceat(per_product, starts[first:last] - starts[first], axis=0)
            rows = np.arange(last - first)
            per_pair[rows, rows + first] = -np.inf  # never one's own neighbour
            take = min(m, n_products - 1)
            part = np.argpartition(per_pair, n_products - take, axis=1)[:, n_products - take :]
            part_scores = np.take_along_axis(per_pair, part, axis=1)
            order = np.lexsort((part, -part_scores), axis=1)  # best first, ties by product order
            idx[first:last, :take] = np.take_along_axis(part, order, axis=1)
            sim[first:last, :take] = np.take_along_axis(part_scores, order, axis=1)
            first = last

    def _top_by_search(self, m: int, idx: np.ndarray, sim: np.ndarray) -> None:
        """Large catalogs: the nearest points of each image, grouped per product (approximate)."""
        position = {pid: i for i, pid in enumerate(self.products)}
        per_query = 4 * m + 32  # room for the product's own images and several images per neighbour
        for a, ids in enumerate(self.point_ids):
            vecs = self.store.get_vectors(ids)
            best: dict[int, float] = {}
            for point in ids:
                if point not in vecs:
                    continue
                for hit in self.store.search(vecs[point], per_query):
                    b = position.get(str(hit.payload.get(PRODUCT_ID)))
                    if b is None or b == a:
                        continue
                    best[b] = max(best.get(b, -np.inf), float(hit.score))
            ranked = sorted(best.items(), key=lambda t: (-t[1], t[0]))[:m]
            for j, (b, score) in enumerate(ranked):
                idx[a, j] = b
                sim[a, j] = score

    def best_images(self, a: int, b: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Payloads of the closest image pair of two products (what a person should look at)."""
        va, vb = self._product_vectors(a), self._product_vectors(b)
        if va is None or vb is None:
            return self.payloads[a][0], self.payloads[b][0]
        scores = va[1] @ vb[1].T
        i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        return self.payloads[a][va[0][i]], self.payloads[b][vb[0][j]]

    def _product_vectors(self, p: int) -> tuple[list[int], np.ndarray] | None:
        if self.vectors is not None:
            start = int(self.starts[p])
            count = len(self.point_ids[p])
            return list(range(count)), self.vectors[start : start + count]
        found = self.store.get_vectors(self.point_ids[p])
        keep = [i for i, point in enumerate(self.point_ids[p]) if point in found]
        if not keep:
            return None
        return keep, _normalised(np.stack([found[self.point_ids[p][i]] for i in keep]))


def _load_vectors(
    store: VectorStore, point_ids: Sequence[list[str]], payloads: Sequence[list[dict[str, Any]]]
) -> tuple[np.ndarray, list[list[str]], list[list[dict[str, Any]]]]:
    """All vectors in product order; points whose vector is missing are dropped with their payload."""
    flat = [point for ids in point_ids for point in ids]
    found: dict[str, np.ndarray] = {}
    for i in range(0, len(flat), _VECTOR_CHUNK):
        found.update(store.get_vectors(flat[i : i + _VECTOR_CHUNK]))
    kept_ids: list[list[str]] = []
    kept_payloads: list[list[dict[str, Any]]] = []
    rows: list[np.ndarray] = []
    for ids, pls in zip(point_ids, payloads, strict=True):
        keep = [(p, pl) for p, pl in zip(ids, pls, strict=True) if p in found]
        kept_ids.append([p for p, _ in keep])
        kept_payloads.append([pl for _, pl in keep])
        rows.extend(found[p] for p, _ in keep)
    matrix = _normalised(np.stack(rows)) if rows else np.zeros((0, 0), dtype=np.float32)
    return matrix, kept_ids, kept_payloads


def _normalised(matrix: np.ndarray) -> np.ndarray:
    """Cosine similarity as a dot product, even if a backend hands back unnormalised vectors."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def _image_index(payload: dict[str, Any]) -> int:
    try:
        return int(payload.get(IMAGE_INDEX) or 0)
    except (TypeError, ValueError):
        return 0


def _title(payload: dict[str, Any]) -> str:
    return str(payload.get(TITLE) or payload.get(PRODUCT_ID))


def _ranked(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
