"""Contract tests for the vector store: the same suite runs against both backends.

Edge runs in tmp_path; Remote runs on qdrant-client's in-process ``QdrantClient(":memory:")``.
Vectors are hand-built in 16-d so every expected result is exact.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from visual_search.core.errors import ModelMismatchError, StoreUnavailableError
from visual_search.core.types import SearchFilters
from visual_search.store import EdgeStore, RemoteStore, VectorStore, open_store

DIM = 16
MODEL = "test-model-a"


def pid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"test-store/{name}"))


def vec(*pairs: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for i, x in pairs:
        v[i] = x
    return v


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# name: (vector, category, brand, price, attrs)
CATALOG = {
    "p0": (vec((0, 1.0)), "shoes", "acme", 10.0, {"color": "red"}),
    "p1": (vec((0, 0.9), (1, 0.1)), "shoes", "bolt", 20.0, {"color": "blue"}),  # not normalised on purpose
    "p2": (vec((0, 0.7), (1, 0.3)), "bags", "acme", 30.0, {"color": "red"}),
    "p3": (vec((1, 1.0)), "bags", "bolt", 40.0, {"color": "green"}),
    "p4": (vec((2, 1.0)), "hats", "acme", 50.0, {"material": "wool"}),
    "p5": (vec((3, 1.0)), "hats", "cora", np.float32(60.0), {"color": "red"}),
    "p6": (vec((0, -1.0)), "shoes", "cora", 70.0, {"color": "blue"}),
    "p7": (vec((1, 1.0), (2, 1.0)), "bags", "acme", float("nan"), {"color": "blue"}),  # NaN price -> None
}
ALL = set(CATALOG)


def points(overrides: dict[str, dict] | None = None):
    from visual_search.core.types import IndexPoint

    out = []
    for name, (v, cat, brand, price, attrs) in CATALOG.items():
        payload = {"product_id": name, "category": cat, "brand": brand, "price": price, "attrs": dict(attrs)}
        payload.update((overrides or {}).get(name, {}))
        out.append(IndexPoint(id=pid(name), vector=v, payload=payload))
    return out


def names(hits) -> list[str]:
    by_id = {pid(n): n for n in CATALOG}
    return [by_id[h.id] for h in hits]


def expected(pred: Callable[[str, str, float | None, dict], bool]) -> set[str]:
    out = set()
    for name, (_v, cat, brand, price, attrs) in CATALOG.items():
        p = None if price is None or np.isnan(price) else float(price)
        if pred(cat, brand, p, attrs):
            out.add(name)
    return out


# ---------------------------------------------------------------------------------------------
# Backends: a factory that opens (or re-opens) the same underlying store.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["edge", "remote"])
def opener(request, tmp_path: Path):
    opened: list[VectorStore] = []
    if request.param == "edge":

        def open_() -> VectorStore:
            for s in opened:  # one process may hold the directory at a time
                s.close()
            store = EdgeStore(tmp_path / "edge")
            opened.append(store)
            return store

    else:
        client = QdrantClient(":memory:")

        def open_() -> VectorStore:
            store = RemoteStore(client=client, collection="products_test")
            opened.append(store)
            return store

    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def store(opener) -> VectorStore:
    s = opener()
    s.ensure_collection(DIM, MODEL, keyword_fields=("color",))
    s.upsert(points())
    s.optimize()
    return s


# ---------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------


def test_search_nearest_first_with_cosine_scores(store: VectorStore):
    hits = store.search(vec((0, 5.0)), top_k=3)
    assert names(hits) == ["p0", "p1", "p2"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].score == pytest.approx(float(unit(CATALOG["p1"][0])[0]), abs=1e-5)
    assert hits[0].payload["category"] == "shoes"
    assert hits[0].payload["attrs"] == {"color": "red"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_top_k_is_respected(store: VectorStore):
    assert len(store.search(vec((0, 1.0)), top_k=2)) == 2
    assert len(store.search(vec((0, 1.0)), top_k=100)) == len(CATALOG)
    assert store.search(vec((0, 1.0)), top_k=0) == []


def test_score_threshold(store: VectorStore):
    hits = store.search(vec((0, 1.0)), top_k=10, score_threshold=0.95)
    assert set(names(hits)) == {"p0", "p1"}
    assert all(h.score >= 0.95 for h in hits)


FILTER_CASES = {
    "category": (SearchFilters(categories=("shoes",)), lambda c, b, p, a: c == "shoes"),
    "categories any-of": (
        SearchFilters(categories=("shoes", "hats")),
        lambda c, b, p, a: c in ("shoes", "hats"),
    ),
    "brand": (SearchFilters(brands=("acme",)), lambda c, b, p, a: b == "acme"),
    "min price": (SearchFilters(min_price=30), lambda c, b, p, a: p is not None and p >= 30),
    "max price": (SearchFilters(max_price=30), lambda c, b, p, a: p is not None and p <= 30),
    "price range": (
        SearchFilters(min_price=20, max_price=50),
        lambda c, b, p, a: p is not None and 20 <= p <= 50,
    ),
    "attrs any-of": (
        SearchFilters(attributes={"color": ("red", "green")}),
        lambda c, b, p, a: a.get("color") in ("red", "green"),
    ),
    "category and brand": (
        SearchFilters(categories=("bags",), brands=("acme",)),
        lambda c, b, p, a: c == "bags" and b == "acme",
    ),
    "all together": (
        SearchFilters(
            categories=("shoes", "bags"),
            brands=("acme", "bolt"),
            max_price=35,
            attributes={"color": ("red",)},
        ),
        lambda c, b, p, a: (
            c in ("shoes", "bags")
            and b in ("acme", "bolt")
            and p is not None
            and p <= 35
            and a.get("color") == "red"
        ),
    ),
    "empty filter": (SearchFilters(), lambda c, b, p, a: True),
}


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_filters_give_exactly_the_expected_subset(store: VectorStore, case: str):
    filters, pred = FILTER_CASES[case]
    want = expected(pred)
    assert want, "test data should match something"
    got = set(names(store.search(vec((0, 1.0)), top_k=100, filters=filters)))
    assert got == want
    assert store.count(filters) == len(want)


def test_spot_check_expected_subsets():
    # Guard the predicate helper itself with literal answers.
    assert expected(FILTER_CASES["price range"][1]) == {"p1", "p2", "p3", "p4"}
    assert expected(FILTER_CASES["attrs any-of"][1]) == {"p0", "p2", "p3", "p5"}
    assert expected(FILTER_CASES["all together"][1]) == {"p0", "p2"}


def test_filter_with_no_match_and_unknown_attribute(store: VectorStore):
    assert store.search(vec((0, 1.0)), top_k=10, filters=SearchFilters(categories=("nope",))) == []
    assert store.count(SearchFilters(attributes={"size": ("XL",)})) == 0
    assert store.count(SearchFilters(attributes={"material": ("wool",)})) == 1  # not indexed, still filters


def test_reupsert_same_ids_does_not_duplicate(store: VectorStore):
    store.upsert(points({"p0": {"price": 11.0}}))
    assert store.count() == len(CATALOG)
    p0 = next(h for h in store.scroll() if h.id == pid("p0"))
    assert p0.payload["price"] == 11.0


def test_delete(store: VectorStore):
    store.delete([pid("p6"), pid("p7"), pid("never-stored")])
    assert store.count() == len(CATALOG) - 2
    assert set(names(store.search(vec((0, -1.0)), top_k=100))) == ALL - {"p6", "p7"}
    store.delete([])


def test_scroll_returns_every_payload(store: VectorStore):
    hits = list(store.scroll())
    assert set(names(hits)) == ALL
    by_name = dict(zip(names(hits), hits, strict=True))
    assert by_name["p3"].payload == {
        "product_id": "p3",
        "category": "bags",
        "brand": "bolt",
        "price": 40.0,
        "attrs": {"color": "green"},
    }
    assert by_name["p5"].payload["price"] == 60.0  # numpy scalar stored as a plain number
    assert by_name["p7"].payload["price"] is None  # NaN stored as null
    assert all(h.score == 0.0 for h in hits)


def test_get_vectors_round_trips_normalised(store: VectorStore):
    got = store.get_vectors([pid("p1"), pid("p7"), pid("never-stored")])
    assert set(got) == {pid("p1"), pid("p7")}
    np.testing.assert_allclose(got[pid("p1")], unit(CATALOG["p1"][0]), atol=1e-6)
    np.testing.assert_allclose(got[pid("p7")], unit(CATALOG["p7"][0]), atol=1e-6)
    assert got[pid("p1")].dtype == np.float32
    assert store.get_vectors([]) == {}


def test_facet_counts_are_exact(store: VectorStore):
    assert store.facet("category") == {"bags": 3, "shoes": 3, "hats": 2}
    assert store.facet("brand") == {"acme": 4, "bolt": 2, "cora": 2}
    assert store.facet("attrs.color") == {"red": 3, "blue": 3, "green": 1}
    assert store.facet("attrs.material") == {"wool": 1}  # no index: counted from payloads
    assert list(store.facet("category", limit=2).values()) == [3, 3]


def test_recommend_moves_toward_positive_and_excludes_examples(store: VectorStore):
    pos, neg = pid("p1"), pid("p3")
    plain = store.recommend([pos], [], top_k=10)
    with_neg = store.recommend([pos], [neg], top_k=10)
    for hits in (plain, with_neg):
        assert pos not in {h.id for h in hits}
    assert neg not in {h.id for h in with_neg}
    assert names(with_neg)[0] == "p0"
    # average_vector: query = mean(pos) + (mean(pos) - mean(neg)), scored by cosine
    q = unit(2 * unit(CATALOG["p1"][0]) - unit(CATALOG["p3"][0]))
    for h in with_neg:
        name = names([h])[0]
        assert h.score == pytest.approx(float(q @ unit(CATALOG[name][0])), abs=1e-5)
    # the negative example pushes e1-heavy items down
    score = {n: h.score for n, h in zip(names(plain), plain, strict=True)}
    score_neg = {n: h.score for n, h in zip(names(with_neg), with_neg, strict=True)}
    assert score_neg["p2"] < score["p2"]
    assert score_neg["p7"] < score["p7"]
    assert names(plain)[0] == "p0"


def test_recommend_with_filters_threshold_and_unknown_ids(store: VectorStore):
    hits = store.recommend([pid("p0")], [], top_k=10, filters=SearchFilters(categories=("bags",)))
    assert set(names(hits)) == {"p2", "p3", "p7"}
    hits = store.recommend(
        [pid("p0"), pid("never-stored")], [pid("never-stored-2")], top_k=10, score_threshold=0.9
    )
    assert names(hits) == ["p1", "p2"]
    assert store.recommend([pid("never-stored")], [pid("p0")], top_k=10) == []


def _expected_scores(query: np.ndarray, exclude: set[str]) -> dict[str, float]:
    q = unit(query)
    return {n: float(q @ unit(v)) for n, (v, *_rest) in CATALOG.items() if n not in exclude}


def test_recommend_with_extra_positive_vectors(store: VectorStore):
    # The shopper's own query vector (not normalised on purpose) as a positive example.
    query = vec((0, 3.0), (1, 3.0))
    q = unit(query)
    # Dislikes only: away from p3, still near the query.
    hits = store.recommend([], [pid("p3")], top_k=10, extra_positive=[query])
    want = _expected_scores(2 * q - unit(CATALOG["p3"][0]), {"p3"})
    assert set(names(hits)) == set(want)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        assert h.score == pytest.approx(want[names([h])[0]], abs=1e-5)
    assert names(hits)[:2] == ["p2", "p1"]  # pushed from the e0+e1 query towards e0, away from p3
    # Ids and vectors together: mean(unit(p4), unit(query)) + (mean - unit(p3)).
    hits = store.recommend([pid("p4")], [pid("p3")], top_k=10, extra_positive=[query])
    avg = (unit(CATALOG["p4"][0]) + q) / 2
    want = _expected_scores(2 * avg - unit(CATALOG["p3"][0]), {"p3", "p4"})
    assert set(names(hits)) == set(want)
    for h in hits:
        assert h.score == pytest.approx(want[names([h])[0]], abs=1e-5)
    # Unknown example ids are ignored; the vector alone still recommends (and filters apply).
    hits = store.recommend(
        [pid("never-stored")],
        [],
        top_k=10,
        filters=SearchFilters(categories=("bags",)),
        extra_positive=[query],
    )
    assert names(hits) == ["p2", "p3", "p7"]
    assert store.recommend([], [pid("p3")], top_k=10) == []
    with pytest.raises(ValueError, match="dimensions"):
        store.recommend([], [], top_k=10, extra_positive=[np.ones(DIM + 1, dtype=np.float32)])


def test_recommend_with_extra_positive_is_identical_on_both_backends(tmp_path: Path):
    rng = np.random.default_rng(7)
    edge = EdgeStore(tmp_path / "edge")
    remote = RemoteStore(client=QdrantClient(":memory:"), collection="products_test")
    try:
        for s in (edge, remote):
            s.ensure_collection(DIM, MODEL, keyword_fields=("color",))
            s.upsert(points())
            s.optimize()
        cases = [
            ([], ["p3"], 1),
            ([], ["p3", "p6"], 2),
            (["p4"], ["p1"], 1),
            (["p0", "p5"], [], 2),
            (["never-stored"], ["p2"], 1),
        ]
        for pos, neg, n_extra in cases:
            extra = [rng.normal(size=DIM).astype(np.float32) * 4 for _ in range(n_extra)]
            got = [
                s.recommend([pid(n) for n in pos], [pid(n) for n in neg], top_k=10, extra_positive=extra)
                for s in (edge, remote)
            ]
            assert names(got[0]) == names(got[1]), (pos, neg)
            assert not {*pos, *neg} & set(names(got[0]))
            for a, b in zip(*got, strict=True):
                assert a.score == pytest.approx(b.score, abs=1e-5)
                assert a.payload == b.payload
    finally:
        edge.close()
        remote.close()


def test_model_mismatch_and_persistence(opener):
    first = opener()
    first.ensure_collection(DIM, MODEL, keyword_fields=("color",))
    first.upsert(points())
    first.optimize()
    assert first.info().model_id == MODEL
    again = opener()  # Edge: closes `first` and re-opens the directory
    assert again.info().model_id == MODEL and again.info().dim == DIM
    with pytest.raises(ModelMismatchError) as err:
        again.ensure_collection(DIM, "other-model")
    msg = str(err.value)
    assert MODEL in msg and "other-model" in msg and f"--model {MODEL}" in msg and "--data-dir" in msg
    with pytest.raises(ModelMismatchError):
        again.ensure_collection(DIM * 2, MODEL)
    again.ensure_collection(DIM, MODEL, keyword_fields=("color", "material"))  # same model: fine
    assert again.count() == len(CATALOG)
    assert names(again.search(vec((0, 1.0)), top_k=1)) == ["p0"]
    assert again.facet("attrs.material") == {"wool": 1}
    info = again.info()
    assert (info.points, info.dim, info.model_id) == (len(CATALOG), DIM, MODEL)


def test_empty_store_reads_are_empty(opener):
    s = opener()
    assert s.count() == 0
    assert s.search(vec((0, 1.0)), top_k=5) == []
    assert list(s.scroll()) == []
    assert s.info().model_id is None


def test_wrong_vector_dimension_is_a_clear_error(store: VectorStore):
    with pytest.raises(ValueError, match="16"):
        store.search(np.ones(DIM + 1, dtype=np.float32), top_k=3)


# ---------------------------------------------------------------------------------------------
# Backend-specific behaviour
# ---------------------------------------------------------------------------------------------


def test_edge_directory_in_use_is_unavailable(tmp_path: Path):
    with EdgeStore(tmp_path / "s") as first:
        first.ensure_collection(DIM, MODEL)
        with pytest.raises(StoreUnavailableError, match="in use"):
            EdgeStore(tmp_path / "s")


def test_edge_corrupt_directory_is_unavailable(tmp_path: Path):
    shard = tmp_path / "s" / "shard"
    shard.mkdir(parents=True)
    (shard / "edge_config.json").write_text("garbage")
    with pytest.raises(StoreUnavailableError, match="corrupt"):
        EdgeStore(tmp_path / "s")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "meta.json").write_text("{not json")
    with EdgeStore(tmp_path / "t") as s:  # meta without a shard: ignored, rewritten on create
        s.ensure_collection(DIM, MODEL)
    (tmp_path / "t" / "meta.json").write_text("{not json")
    with pytest.raises(StoreUnavailableError, match="metadata"):
        EdgeStore(tmp_path / "t")


def test_edge_concurrent_search_and_upsert(tmp_path: Path):
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_collection(DIM, MODEL)
        s.upsert(points())
        rng = np.random.default_rng(0)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                for _ in range(200):
                    assert len(s.search(rng.standard_normal(DIM), top_k=3)) == 3
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        def writer() -> None:
            from visual_search.core.types import IndexPoint

            try:
                for i in range(20):
                    batch = [
                        IndexPoint(
                            pid(f"x{i}-{j}"), rng.standard_normal(DIM).astype(np.float32), {"category": "x"}
                        )
                        for j in range(25)
                    ]
                    s.upsert(batch)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert s.count() == len(CATALOG) + 500


def test_edge_optimize_in_a_child_process_keeps_the_process_responsive(tmp_path: Path):
    # qdrant-edge holds the GIL during optimize(); EdgeStore runs it in a child process instead.
    with EdgeStore(tmp_path / "s", optimize_in_subprocess=True) as s:
        s.ensure_collection(DIM, MODEL, keyword_fields=("color",))
        s.upsert(points())
        ticks: list[float] = []
        stop = threading.Event()

        def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                time.sleep(0.005)

        thread = threading.Thread(target=ticker)
        thread.start()
        start = time.perf_counter()
        s.optimize()
        end = time.perf_counter()
        stop.set()
        thread.join()
        during = [t for t in ticks if start <= t <= end]
        assert len(during) >= 2, "another Python thread should keep running during optimize()"
        assert s.count() == len(CATALOG)
        assert names(s.search(vec((0, 1.0)), top_k=1)) == ["p0"]
        assert s.facet("attrs.color") == {"red": 3, "blue": 3, "green": 1}


def test_edge_reads_wait_for_optimize_then_fail_clearly(tmp_path: Path):
    with EdgeStore(tmp_path / "s", busy_timeout_s=0.05) as s:
        s.ensure_collection(DIM, MODEL)
        s.upsert(points())
        with s._gate.exclusive():  # what optimize()/close() hold
            result: list[object] = []
            thread = threading.Thread(target=lambda: result.append(_capture(lambda: s.count())))
            thread.start()
            thread.join()
        assert isinstance(result[0], StoreUnavailableError) and "optimised" in str(result[0])
        assert s.count() == len(CATALOG)


def _capture(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return exc


def test_closed_edge_store_says_so(tmp_path: Path):
    s = EdgeStore(tmp_path / "s")
    s.ensure_collection(DIM, MODEL)
    s.close()
    s.close()
    with pytest.raises(StoreUnavailableError, match="closed"):
        s.search(vec((0, 1.0)), top_k=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_remote_unreachable_url_fails_with_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(StoreUnavailableError) as err:
        RemoteStore(url, timeout=2)
    msg = str(err.value)
    assert url in msg and "connection refused" in msg and "QDRANT_URL" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one error, no chained noise


@pytest.mark.parametrize(
    ("status", "body", "expect"),
    [
        (401, b'{"status":{"error":"Must provide an API key"}}', "refused the API key (HTTP 401)"),
        (403, b'{"status":{"error":"Forbidden"}}', "refused the API key (HTTP 403)"),
        (404, b"<html>not found</html>", "did not answer like a Qdrant server"),
    ],
)
def test_remote_auth_and_non_qdrant_servers_are_explained(status: int, body: bytes, expect: str):
    class Fake(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with warnings.catch_warnings(), pytest.raises(StoreUnavailableError) as err:
            warnings.simplefilter("ignore", UserWarning)  # qdrant-client: API key over plain http
            RemoteStore(url, api_key="wrong", timeout=2)
        assert expect in str(err.value) and url in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


def test_open_store_picks_the_backend(tmp_path: Path):
    with open_store(tmp_path, None, None) as edge:
        assert isinstance(edge, EdgeStore) and edge.backend == "qdrant-edge"
        edge.ensure_collection(DIM, MODEL)
        assert edge.info().location.startswith(str(tmp_path))
    with open_store(tmp_path, ":memory:", None, collection="c") as remote:
        assert isinstance(remote, RemoteStore) and remote.backend == "qdrant-remote"
    with pytest.raises(StoreUnavailableError):
        open_store(tmp_path, f"http://127.0.0.1:{_free_port()}", None)


# ---------------------------------------------------------------------------------------------
# Remote: cluster settings reach the collection, uploads go through upload_points
# ---------------------------------------------------------------------------------------------


class _SpyClient:
    """A real in-process client that records what the store asks of it. Local mode ignores the
    cluster layout, so the test reads the create_collection / upload_points / query requests."""

    def __init__(self) -> None:
        self.inner = QdrantClient(":memory:")
        self._client = self.inner._client  # RemoteStore checks this to spot local mode
        self.calls: dict[str, list[dict]] = {}

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def record(*args, **kwargs):
            self.calls.setdefault(name, []).append(kwargs)
            return attr(*args, **kwargs)

        return record


def test_remote_cluster_settings_reach_create_collection():
    from qdrant_client import models as qm

    from visual_search.store import RemoteOptions

    opts = RemoteOptions(
        shard_number=6,
        replication_factor=2,
        write_consistency_factor=2,
        on_disk_vectors=True,
        on_disk_payload=True,
        quantization="int8",
        always_ram=True,
        oversampling=3.0,
    )
    spy = _SpyClient()
    store = RemoteStore(client=spy, collection="cluster", options=opts)
    store.ensure_collection(DIM, MODEL)
    (create,) = spy.calls["create_collection"]
    assert (create["shard_number"], create["replication_factor"], create["write_consistency_factor"]) == (
        6,
        2,
        2,
    )
    assert create["on_disk_payload"] is True
    vector = create["vectors_config"]["image"]
    assert vector.on_disk is True and vector.size == DIM and vector.distance == qm.Distance.COSINE
    quant = create["quantization_config"]
    assert isinstance(quant, qm.ScalarQuantization)
    assert quant.scalar.type == qm.ScalarType.INT8 and quant.scalar.always_ram is True
    params = store.search_params()  # what a server query carries: rescore k * 3 candidates
    assert params.quantization.rescore is True and params.quantization.oversampling == 3.0
    assert params.hnsw_ef == store.hnsw_ef
    # the collection still works (local mode ignores the layout but keeps the data)
    store.upsert(points())
    assert store.count() == len(CATALOG)
    indexes = {c["field_name"]: c["field_schema"] for c in spy.calls["create_payload_index"]}
    assert indexes["image_index"] == qm.PayloadSchemaType.INTEGER
    assert indexes["indexed_at"] == qm.PayloadSchemaType.DATETIME
    assert indexes["title"].tokenizer == qm.TokenizerType.PREFIX  # the picker matches as you type


def test_remote_binary_quantization_and_defaults():
    from qdrant_client import models as qm

    from visual_search.store import RemoteOptions

    spy = _SpyClient()
    RemoteStore(
        client=spy, collection="bin", options=RemoteOptions(quantization="binary", always_ram=False)
    ).ensure_collection(DIM, MODEL)
    quant = spy.calls["create_collection"][0]["quantization_config"]
    assert isinstance(quant, qm.BinaryQuantization) and quant.binary.always_ram is False
    plain = _SpyClient()
    store = RemoteStore(client=plain, collection="plain")
    store.ensure_collection(DIM, MODEL)
    create = plain.calls["create_collection"][0]
    assert create["quantization_config"] is None and create["shard_number"] is None
    assert create["vectors_config"]["image"].on_disk is None  # the server's defaults
    assert store.search_params().quantization is None


def test_remote_upload_goes_through_upload_points_in_batches_with_retries():
    from visual_search.store import RemoteOptions

    spy = _SpyClient()
    store = RemoteStore(
        client=spy,
        collection="up",
        options=RemoteOptions(upload_parallel=4, upload_retries=5, upload_batch=3),
    )
    store.ensure_collection(DIM, MODEL)
    before = store.generation
    store.upsert(points())
    (call,) = spy.calls["upload_points"]
    assert (call["batch_size"], call["max_retries"], call["wait"]) == (3, 5, True)
    assert call["parallel"] == 1  # in-process local mode cannot be shared with worker processes
    assert store.count() == len(CATALOG) and store.generation > before
    assert "upsert" not in spy.calls


def test_remote_options_from_env_and_flags():
    import argparse

    from visual_search.store import RemoteOptions, StoreSettingsError, add_remote_arguments

    env = {
        "QDRANT_SHARDS": "4",
        "QDRANT_REPLICAS": "2",
        "QDRANT_WRITE_CONSISTENCY": "1",
        "QDRANT_ON_DISK": "true",
        "QDRANT_QUANTIZATION": "Binary",
        "QDRANT_OVERSAMPLING": "4",
        "QDRANT_UPLOAD_PARALLEL": "3",
    }
    opts = RemoteOptions.from_env(env)
    assert (opts.shard_number, opts.replication_factor, opts.write_consistency_factor) == (4, 2, 1)
    assert opts.on_disk_vectors and opts.on_disk_payload is None and opts.quantization == "binary"
    assert (opts.oversampling, opts.upload_parallel, opts.upload_retries) == (4.0, 3, 3)
    assert RemoteOptions.from_env({}) == RemoteOptions()

    parser = argparse.ArgumentParser()
    add_remote_arguments(parser)
    args = parser.parse_args(
        ["--qdrant-shards", "8", "--qdrant-quantization", "int8", "--qdrant-on-disk-payload"]
    )
    flagged = opts.with_args(args)
    assert (flagged.shard_number, flagged.quantization, flagged.on_disk_payload) == (8, "int8", True)
    assert flagged.replication_factor == 2  # not given on the command line: the environment's value

    for bad, message in (
        ({"QDRANT_SHARDS": "many"}, "QDRANT_SHARDS must be a whole number"),
        ({"QDRANT_ON_DISK": "maybe"}, "QDRANT_ON_DISK must be 1/0"),
        ({"QDRANT_QUANTIZATION": "pq"}, "Quantization must be one of none, int8, binary"),
        ({"QDRANT_REPLICAS": "0"}, "replication_factor must be 1 or more"),
    ):
        with pytest.raises(StoreSettingsError, match=message):
            RemoteOptions.from_env(bad)


def test_cli_settings_carry_the_cluster_flags(monkeypatch):
    from visual_search.cli.main import build_parser
    from visual_search.core.config import Settings

    monkeypatch.setenv("QDRANT_REPLICAS", "3")
    args = build_parser().parse_args(["info", "--qdrant-shards", "12", "--qdrant-on-disk"])
    settings = Settings.from_args(args)
    assert (settings.remote.shard_number, settings.remote.replication_factor) == (12, 3)
    assert settings.remote.on_disk_vectors is True


def test_edge_indexing_threads_reach_the_hnsw_build(tmp_path: Path):
    """The thread cap is written at create and re-applied by the optimize child to an existing shard."""
    import json

    def stored_threads() -> int:
        cfg = json.loads((tmp_path / "e" / "shard" / "edge_config.json").read_text())
        return cfg["hnsw_config"]["max_indexing_threads"]

    store = EdgeStore(tmp_path / "e", indexing_threads=1)
    store.ensure_collection(DIM, MODEL)
    store.upsert(points())
    store.close()
    assert stored_threads() == 1
    store = EdgeStore(tmp_path / "e", indexing_threads=3, optimize_in_subprocess=True)
    try:
        store.optimize()
        assert stored_threads() == 3
        assert names(store.search(vec((0, 1.0)), top_k=1)) == ["p0"]  # the reloaded shard still answers
        assert store.count() == len(CATALOG)
    finally:
        store.close()
    with pytest.raises(ValueError, match="0 \\(all cores\\) or more"):
        EdgeStore(tmp_path / "other", indexing_threads=-1)


def test_indexing_threads_setting_from_env_and_flag(monkeypatch):
    from visual_search.cli.main import build_parser
    from visual_search.core.config import Settings

    monkeypatch.setenv("VS_INDEXING_THREADS", "2")
    assert Settings.from_args(build_parser().parse_args(["info"])).indexing_threads == 2
    args = build_parser().parse_args(["info", "--indexing-threads", "1"])
    assert Settings.from_args(args).indexing_threads == 1
    monkeypatch.setenv("VS_INDEXING_THREADS", "lots")
    with pytest.warns(UserWarning, match="VS_INDEXING_THREADS"):
        assert Settings.from_env().indexing_threads == 0
