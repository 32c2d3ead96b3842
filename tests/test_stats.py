"""The catalog view (stats.py) on both backends: exact per-product counts, facets, price bins and
product lookups from payload indexes, a cache that follows the index, and never a full scan."""

from __future__ import annotations

import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from visual_search import stats
from visual_search.core.types import IndexPoint
from visual_search.stats import FIRST_IMAGE, CatalogStats, StatsCache, catalog_stats, find_products
from visual_search.store import EdgeStore, RemoteStore, VectorStore

DIM = 8

# product id -> (title, category, brand, price, images, indexed_at)
PRODUCTS = {
    "s1": ("Red running shoe", "shoes", "Acme", 49.0, 3, "2026-11-01T10:00:00+00:00"),
    "s2": ("Blue trail shoe", "shoes", "Bolt", 120.0, 1, "2026-11-02T10:00:00+00:00"),
    "s3": ("Shoe horn", "shoes", None, None, 1, "2026-11-03T10:00:00+00:00"),
    "b1": ("Leather bag", "bags", "Acme", 250.0, 2, "2026-11-04T10:00:00+00:00"),
    "b2": ("Canvas tote bag", "bags", "Cora", 15.5, 1, "2026-12-01T09:30:00+00:00"),
    "m1": ("Coffee mug", None, "Acme", 8.0, 1, "2026-11-05T10:00:00+00:00"),
}


def point(product: str, index: int, payload: dict) -> IndexPoint:
    rng = np.random.default_rng(zlib.crc32(f"{product}/{index}".encode()))
    pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"test-stats/{product}/{index}"))
    return IndexPoint(pid, rng.normal(size=DIM).astype(np.float32), payload)


def catalog_points(products: dict = PRODUCTS) -> list[IndexPoint]:
    out = []
    for product, (title, category, brand, price, images, stamp) in products.items():
        for i in range(images):
            payload = {
                "product_id": product,
                "image_index": i,
                "title": title,
                "category": category,
                "brand": brand,
                "price": price,
                "indexed_at": stamp,
            }
            out.append(point(product, i, payload))
    return out


@pytest.fixture(params=["edge", "remote"])
def store(request, tmp_path: Path):
    s: VectorStore = (
        EdgeStore(tmp_path / "edge")
        if request.param == "edge"
        else RemoteStore(client=QdrantClient(":memory:"), collection="stats_test")
    )
    s.ensure_collection(DIM, "test-model")
    s.upsert(catalog_points())
    yield s
    s.close()


class NoScan:
    """Fails the test if anything reads the whole collection or an unbounded page."""

    def __init__(self, store: VectorStore, max_page: int) -> None:
        self.store, self.max_page, self.pages = store, max_page, 0

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def scroll(self, **_kw):
        raise AssertionError("the catalog view must not scroll the whole collection")

    def page(self, limit: int, offset=None, *, where=()):
        assert limit <= self.max_page, f"page of {limit} points"
        self.pages += 1
        return self.store.page(limit, offset, where=where)


def test_catalog_stats_count_products_not_images(store: VectorStore):
    view = catalog_stats(NoScan(store, max_page=0))  # type: ignore[arg-type]
    assert (view.products, view.images) == (6, 9)
    assert view.categories == {"shoes": 3, "bags": 2}  # per product; the uncategorised mug not listed
    assert list(view.brands) == ["Acme", "Bolt", "Cora"] and view.brands["Acme"] == 3
    assert (view.price_min, view.price_max) == (8.0, 250.0)
    assert view.last_indexed == "2026-12-01T09:30:00+00:00"


def test_price_bins_are_exact_counts_in_round_steps(store: VectorStore):
    view = catalog_stats(store)
    bins = [(b.low, b.high, b.products) for b in view.price_bins]
    assert bins[0][:2] == (0.0, 25.0) and bins[-1][1] == 250.0  # the maximum sits in the last bin
    assert all(b[1] - b[0] == 25.0 for b in bins)
    assert sum(b[2] for b in bins) == 5  # five priced products; s1's three images count once
    counted = {b[0]: b[2] for b in bins if b[2]}
    assert counted == {0.0: 2, 25.0: 1, 100.0: 1, 225.0: 1}


def test_empty_and_unpriced_catalogs(tmp_path: Path):
    store = EdgeStore(tmp_path / "e")
    try:
        assert catalog_stats(store) == CatalogStats()  # no collection yet
        store.ensure_collection(DIM, "m")
        assert catalog_stats(store) == CatalogStats()
        unpriced = {"x": ("Thing", "misc", None, None, 2, "2026-11-01T00:00:00+00:00")}
        store.upsert(catalog_points(unpriced))
        view = catalog_stats(store)
        assert (view.products, view.images, view.price_min, view.price_bins) == (1, 2, None, ())
    finally:
        store.close()


def test_cache_follows_writes_and_expires_for_shared_servers(store: VectorStore, monkeypatch):
    calls = []
    real = stats.catalog_stats
    monkeypatch.setattr(stats, "catalog_stats", lambda s: calls.append(1) or real(s))
    cache = StatsCache(ttl_s=3600)
    first = cache.get(store)
    assert cache.get(store) is first and len(calls) == 1
    store.upsert(catalog_points({"n1": ("New hat", "hats", "Acme", 30.0, 1, "2026-12-02T00:00:00+00:00")}))
    second = cache.get(store)
    assert len(calls) == 2 and second.products == 7 and second.categories["hats"] == 1
    assert cache.get(store, refresh=True) is not second and len(calls) == 3
    cache.ttl_s = 0.0  # another process may have written a remote collection: expire by time
    cache.get(store)
    assert len(calls) == (3 if store.exclusive else 4)


def test_find_products_is_bounded_and_matches_ids_and_title_words(store: VectorStore):
    guarded = NoScan(store, max_page=3)
    first = find_products(guarded, "", limit=3)  # type: ignore[arg-type]
    assert len(first) == 3 and len({c.product_id for c in first}) == 3
    assert [c.title for c in first] == sorted(c.title for c in first)
    assert [c.product_id for c in find_products(store, "b2")] == ["b2"]
    found = find_products(store, "  shoe  ")
    assert {c.product_id for c in found} == {"s1", "s2", "s3"}  # one entry per product, not per image
    assert {c.product_id for c in find_products(store, "bag leather")} == {"b1"}
    assert find_products(store, "umbrella") == []


def test_title_lookup_matches_word_prefixes_on_edge(tmp_path: Path):
    store = EdgeStore(tmp_path / "e")
    try:
        store.ensure_collection(DIM, "m")
        store.upsert(catalog_points())
        assert {c.product_id for c in find_products(store, "sho")} == {"s1", "s2", "s3"}
        assert {c.product_id for c in find_products(store, "Tra Sh")} == {"s2"}
    finally:
        store.close()


def test_product_payloads_looks_up_only_the_asked_products(store: VectorStore):
    # a product whose first photo failed: only its second image is stored
    late = {"title": "Late photo", "product_id": "late", "image_index": 1, "category": "misc"}
    store.upsert([point("late", 1, late)])
    found = stats.product_payloads(NoScan(store, max_page=256), ["s1", "late", "nope", "s1"])  # type: ignore[arg-type]
    assert set(found) == {"s1", "late"}
    assert found["s1"]["image_index"] == 0 and found["late"]["category"] == "misc"
    assert stats.product_count(store) == 6  # counted by first image (documented)


def test_an_index_from_before_the_catalog_view_gets_its_indexes_on_open(tmp_path: Path):
    import qdrant_edge as qe

    store = EdgeStore(tmp_path / "old")
    store.ensure_collection(DIM, "m")
    store.upsert(catalog_points())
    for key in ("image_index", "indexed_at", "title"):  # as an older version left it
        store._shard.update(qe.UpdateOperation.delete_field_index(key))
    assert "indexed_at" not in store._shard.info().payload_schema
    store.close()
    reopened = EdgeStore(tmp_path / "old")
    try:
        schema = reopened._shard.info().payload_schema
        assert {"image_index", "indexed_at", "title"} <= set(schema)
        assert stats.last_indexed(reopened) == "2026-12-01T09:30:00+00:00"
        assert reopened.count(where=[FIRST_IMAGE]) == 6
    finally:
        reopened.close()


def test_engine_status_reads_counts_not_payloads(store: VectorStore):
    from visual_search.engine import SearchEngine

    class _Enc:
        model_id, dim, device, supports_text = "test-model", DIM, "cpu", False

    engine = SearchEngine(_Enc(), NoScan(store, max_page=0))  # type: ignore[arg-type]
    status = engine.status()
    assert (status.products, status.store.points) == (6, 9)
    assert status.last_indexed == "2026-12-01T09:30:00+00:00"


def test_catalog_tab_picker_and_charts_use_the_view(store: VectorStore):
    from types import SimpleNamespace

    from visual_search.ui.tabs.catalog import CatalogHandlers, price_histogram

    handlers = CatalogHandlers(SimpleNamespace(engine=SimpleNamespace(store=store)))  # type: ignore[arg-type]
    assert handlers.product_choices("leather") == [("Leather bag · b1", "b1")]
    assert len(handlers.product_choices()) == 6
    update = handlers.lookup_products(SimpleNamespace(input_value="shoe"))
    assert sorted(pid for _, pid in update["choices"]) == ["s1", "s2", "s3"]
    frame, labels = price_histogram(catalog_stats(store).price_bins, "€")
    assert labels[0] == "€0–25" and int(frame["products"].sum()) == 5


class NoQueries(NoScan):
    """Fails the test on any index query: what a saved summary must make unnecessary."""

    def count(self, *_a, **_kw):
        raise AssertionError("counted")

    def facet(self, *_a, **_kw):
        raise AssertionError("faceted")

    def extreme(self, *_a, **_kw):
        raise AssertionError("ordered read")


def test_the_view_is_saved_with_the_index_and_cleared_by_writes(tmp_path: Path):
    import json

    store = EdgeStore(tmp_path / "e")
    store.ensure_collection(DIM, "m")
    store.upsert(catalog_points())
    view = stats.catalog_view(store)
    assert json.loads((tmp_path / "e" / "meta.json").read_text())["summary"]["products"] == 6
    store.close()

    reopened = EdgeStore(tmp_path / "e")  # a later process (``info``): one dict read, no query
    try:
        assert stats.catalog_view(NoQueries(reopened, max_page=0)) == view  # type: ignore[arg-type]
        assert stats.index_status(NoQueries(reopened, max_page=0)) == (6, view.last_indexed)  # type: ignore[arg-type]
        stale = reopened.generation
        reopened.delete([catalog_points()[0].id])  # s1's first image
        assert "summary" not in json.loads((tmp_path / "e" / "meta.json").read_text())
        assert reopened.summary() is None
        assert stats.catalog_view(reopened).products == 5
        # a view computed before a write is not saved after it
        assert reopened.save_summary(view.to_dict(), stale) is False
        assert stats.catalog_view(reopened).products == 5
    finally:
        reopened.close()


def test_remote_keeps_no_saved_view(store: VectorStore):
    stats.catalog_view(store)
    assert (store.summary() is None) == (not store.exclusive)


def test_indexing_saves_the_view_for_info(tmp_path: Path, tiny_encoder):
    from PIL import Image

    from visual_search.engine import SearchEngine
    from visual_search.store import open_store

    photos = tmp_path / "img"
    photos.mkdir()
    rows = ["product_id,image,title,category,price"]
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (64, 64), colour).save(photos / f"{i}.png")
        rows.append(f"p{i},{photos / f'{i}.png'},{colour} thing,cat{i % 2},{10 * (i + 1)}")
    (tmp_path / "catalog.csv").write_text("\n".join(rows) + "\n")
    engine = SearchEngine(tiny_encoder, open_store(tmp_path / "data", None, None))
    try:
        engine.index_catalog(tmp_path / "catalog.csv")
        saved = engine.store.summary()
        assert saved is not None and saved["products"] == 3 and saved["categories"] == {"cat0": 2, "cat1": 1}
        assert engine.status().products == 3
    finally:
        engine.close()
