"""Catalog audit on hand-made vectors, so every expectation is exact.

Three clusters on orthogonal axes (shoes e0, kitchen e1, bags e2); each product adds its own
orthogonal direction, so two products of one cluster score 1/1.36 ~ 0.735. Planted: a near copy of
shoe-1 (~0.999) and a 'kitchen' product that sits in the shoes cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visual_search.audit import (
    CategorySuspect,
    DuplicatePair,
    catalog_stats,
    miscategorised,
    near_duplicates,
    neighbours,
)
from visual_search.catalog import CatalogImage, Product
from visual_search.core.types import IndexPoint
from visual_search.engine import SearchEngine
from visual_search.store import open_store

DIM = 24
SHOES, KITCHEN, BAGS = 0, 1, 2


class _NoEncoder:
    """The audit never embeds anything; the engine only needs something in the slot."""

    model_id = "test:hand-made"
    dim = DIM
    device = "cpu"
    supports_text = False


def _vec(axis: int, own: int, weight: float = 0.6, extra: tuple[int, float] | None = None) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[axis] = 1.0
    v[own] = weight
    if extra is not None:
        v[extra[0]] = extra[1]
    return v / np.linalg.norm(v)


# product id -> (category, brand, price, [vectors per image])
CATALOG: dict[str, tuple[str | None, str | None, float | None, list[np.ndarray]]] = {
    "shoe-1": ("shoes", "Acme", 50.0, [_vec(SHOES, 3), _vec(SHOES, 4)]),
    "shoe-2": ("shoes", "Acme", 60.0, [_vec(SHOES, 5)]),
    "shoe-3": ("shoes", "Bolt", None, [_vec(SHOES, 6)]),
    "shoe-dup": ("shoes", "Bolt", 55.0, [_vec(SHOES, 4, extra=(7, 0.05))]),
    "kitchen-1": ("kitchen", "Chef", 20.0, [_vec(KITCHEN, 8)]),
    "kitchen-2": ("kitchen", "Chef", 25.0, [_vec(KITCHEN, 9)]),
    "kitchen-3": ("kitchen", None, 30.0, [_vec(KITCHEN, 10)]),
    "kitchen-odd": ("kitchen", "Chef", 35.0, [_vec(SHOES, 11, weight=0.8)]),
    "bag-1": ("bags", "Acme", 80.0, [_vec(BAGS, 12)]),
    "bag-2": ("bags", None, None, [_vec(BAGS, 13)]),
    "mystery": (None, None, 10.0, [_vec(BAGS, 14, weight=0.9)]),
}


def _image_path(pid: str, i: int) -> str:
    return f"/catalog/{pid}-{i}.jpg"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SearchEngine:
    store = open_store(tmp_path_factory.mktemp("audit") / "idx", None, None)
    store.ensure_collection(DIM, _NoEncoder.model_id)
    points: list[IndexPoint] = []
    for pid, (category, brand, price, vectors) in CATALOG.items():
        images = tuple(CatalogImage(pid, i, _image_path(pid, i), row=2) for i in range(len(vectors)))
        product = Product(pid, f"Title {pid}", category, brand, price, None, None, {}, images)
        points += [
            IndexPoint(img.point_id, vec, product.payload(img))
            for img, vec in zip(images, vectors, strict=True)
        ]
    store.upsert(points)
    eng = SearchEngine(_NoEncoder(), store)  # type: ignore[arg-type]
    yield eng
    eng.close()


def test_stats_count_products_not_images(engine: SearchEngine) -> None:
    stats = catalog_stats(engine)
    assert stats.products == 11
    assert stats.images == 12
    assert stats.categories == {"kitchen": 4, "shoes": 4, "bags": 2}
    assert list(stats.categories) == ["kitchen", "shoes", "bags"]  # most first, ties by name
    assert stats.brands == {"Acme": 3, "Chef": 3, "Bolt": 2}
    assert list(stats.brands) == ["Acme", "Chef", "Bolt"]
    # prices 10, 20, 25, 30, 35, 50, 55, 60, 80 (two products unpriced), counted in round bins
    assert (stats.price_min, stats.price_max) == (10.0, 80.0)
    assert [(b.low, b.high, b.products) for b in stats.price_bins if b.products] == [
        (10.0, 20.0, 1),
        (20.0, 30.0, 2),
        (30.0, 40.0, 2),
        (50.0, 60.0, 2),
        (60.0, 70.0, 1),
        (70.0, 80.0, 1),  # the last bin includes the maximum
    ]


@pytest.mark.parametrize("max_matrix_images", [50_000, 0], ids=["matrix", "store-search"])
def test_only_the_planted_duplicate_is_above_the_threshold(
    engine: SearchEngine, max_matrix_images: int
) -> None:
    pairs = near_duplicates(engine, threshold=0.92, max_matrix_images=max_matrix_images)
    assert len(pairs) == 1
    pair = pairs[0]
    assert isinstance(pair, DuplicatePair)
    assert (pair.product_a, pair.product_b) == ("shoe-1", "shoe-dup")
    assert (pair.title_a, pair.title_b) == ("Title shoe-1", "Title shoe-dup")
    # shoe-1's second photo is the one that matches
    assert (pair.image_a, pair.image_b) == (_image_path("shoe-1", 1), _image_path("shoe-dup", 0))
    assert pair.score == pytest.approx(1.36 / np.sqrt(1.36 * 1.3625), abs=1e-4)


def test_duplicates_best_first_each_pair_once_and_limited(engine: SearchEngine) -> None:
    pairs = near_duplicates(engine, threshold=0.7, limit=100)
    keys = [(p.product_a, p.product_b) for p in pairs]
    assert len(keys) == len({frozenset(k) for k in keys})
    assert all(a != b for a, b in keys)
    scores = [p.score for p in pairs]
    assert scores == sorted(scores, reverse=True)
    assert keys[0] == ("shoe-1", "shoe-dup")
    # shoes: 4 products -> 6 pairs; kitchen 3 -> 3; bags 2 -> 1 (0.735 each); kitchen-odd/mystery < 0.7
    assert len(pairs) == 10
    assert len(near_duplicates(engine, threshold=0.7, limit=3)) == 3
    assert near_duplicates(engine, threshold=0.9999) == []


@pytest.mark.parametrize("max_matrix_images", [50_000, 0], ids=["matrix", "store-search"])
def test_planted_miscategorised_product_is_the_only_suspect(
    engine: SearchEngine, max_matrix_images: int
) -> None:
    suspects = miscategorised(engine, k=5, max_matrix_images=max_matrix_images)
    assert [s.product_id for s in suspects] == ["kitchen-odd"]
    s = suspects[0]
    assert isinstance(s, CategorySuspect)
    assert s.category == "kitchen"
    assert s.suggested_category == "shoes"
    assert s.neighbour_categories["shoes"] == 4
    assert sum(s.neighbour_categories.values()) <= 5
    assert s.neighbour_id.startswith("shoe-")
    assert s.neighbour_title == f"Title {s.neighbour_id}"
    assert s.image == _image_path("kitchen-odd", 0)
    assert s.neighbour_image.startswith(f"/catalog/{s.neighbour_id}-")
    assert s.score == pytest.approx(1 / np.sqrt(1.36 * 1.64), abs=1e-4)


def test_neighbours_wraps_more_like_this(engine: SearchEngine) -> None:
    results = neighbours(engine, "shoe-1", k=3)
    assert len(results) == 3
    assert results[0].product_id == "shoe-dup"
    assert "shoe-1" not in {r.product_id for r in results}


def test_empty_store(tmp_path: Path) -> None:
    store = open_store(tmp_path / "idx", None, None)
    store.ensure_collection(DIM, _NoEncoder.model_id)
    eng = SearchEngine(_NoEncoder(), store)  # type: ignore[arg-type]
    try:
        assert catalog_stats(eng).products == 0
        assert near_duplicates(eng) == []
        assert miscategorised(eng) == []
    finally:
        eng.close()


def test_small_blocks_give_the_same_answers(engine: SearchEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks cut at product boundaries (shoe-1 has two images) must not change anything."""
    import visual_search.audit as audit

    expected_dups = near_duplicates(engine, threshold=0.7, limit=100)
    expected_suspects = miscategorised(engine, k=5)
    for floats in (1, 12 * 3, 12 * 5):  # 1 row, 3 rows, 5 rows per block (12 images in all)
        monkeypatch.setattr(audit, "_BLOCK_FLOATS", floats)
        assert near_duplicates(engine, threshold=0.7, limit=100) == expected_dups
        assert miscategorised(engine, k=5) == expected_suspects
