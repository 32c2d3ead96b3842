"""Retrieval evaluation: exact metrics, query-set builders, a real-feature run, the CLI end to end.

Retrieval quality assertions use real ImageNet EfficientNet-Lite0 features (from a PyPI wheel); the
CLI run uses the tiny random CLIP, where only plumbing, filters and files matter.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visual_search.catalog import Catalog, read_catalog
from visual_search.cli.main import main
from visual_search.core.errors import VisualSearchError
from visual_search.encoders import create_encoder
from visual_search.engine import SearchEngine
from visual_search.evaluation import (
    EvalReport,
    Metrics,
    Query,
    QueryResult,
    evaluate_engine,
    format_markdown,
    holdout_queries,
    live_synthetic_eval,
    load_queries,
    ndcg_at_k,
    percentile,
    recall_at_k,
    reciprocal_rank,
    shopper_queries,
    synthetic_queries,
)
from visual_search.store import open_store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_catalog" / "catalog.csv"
RANKED = list("abcdefghijk")


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_on_hand_made_rankings() -> None:
    # one relevant product at rank 3
    assert [recall_at_k(RANKED, {"c"}, k) for k in (1, 2, 3, 5, 10)] == [0, 0, 1, 1, 1]
    assert reciprocal_rank(RANKED, {"c"}) == pytest.approx(1 / 3)
    assert ndcg_at_k(RANKED, {"c"}, 10) == pytest.approx(1 / math.log2(4))  # 0.5
    # two relevant: rank 1 and rank 11 (outside the top 10)
    assert recall_at_k(RANKED, {"a", "k"}, 1) == 0.5
    assert recall_at_k(RANKED, {"a", "k"}, 10) == 0.5
    assert recall_at_k(RANKED, {"a", "k"}, 11) == 1.0
    assert reciprocal_rank(RANKED, {"a", "k"}) == 1.0
    assert ndcg_at_k(RANKED, {"a", "k"}, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))  # 0.6131
    # two relevant at ranks 2 and 4
    assert ndcg_at_k(RANKED, {"b", "d"}, 10) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    )  # 0.6509
    assert ndcg_at_k(RANKED, {"a", "b"}, 10) == pytest.approx(1.0)
    # nothing found / nothing relevant
    for relevant in ({"z"}, set()):
        assert (
            recall_at_k(RANKED, relevant, 10)
            == reciprocal_rank(RANKED, relevant)
            == ndcg_at_k(RANKED, relevant)
            == 0
        )
    # a product listed twice counts once (rank of "b" is 2, not 3)
    assert reciprocal_rank(["a", "a", "b"], {"b"}) == 0.5
    assert recall_at_k(["a", "a", "b"], {"b"}, 2) == 1.0


def test_percentile_and_aggregation() -> None:
    assert percentile(list(range(1, 101)), 50) == pytest.approx(50.5)
    assert percentile([10.0, 20.0], 95) == pytest.approx(19.5)
    assert math.isnan(percentile([], 50))

    def result(rank: int | None) -> QueryResult:
        ranked = RANKED[: rank - 1] + ["x"] if rank else RANKED
        rel = {"x"}
        return QueryResult(
            "q", ("x",), "c", tuple(ranked[:10]), rank, recall_at_k(ranked, rel, 1), recall_at_k(ranked, rel, 5),
            recall_at_k(ranked, rel, 10), reciprocal_rank(ranked, rel), ndcg_at_k(ranked, rel), 1.0, 1.0, 2.0,
        )  # fmt: skip

    m = Metrics.of([result(1), result(4), result(None), result(8)])
    assert (m.n, m.recall_at_1, m.recall_at_5, m.recall_at_10) == (4, 0.25, 0.5, 0.75)
    assert m.mrr == pytest.approx((1 + 1 / 4 + 0 + 1 / 8) / 4)
    assert m.ndcg_at_10 == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(9)) / 4)


# ------------------------------------------------------------------------------------------ query sets


@pytest.fixture(scope="module")
def small_catalog() -> Catalog:
    """21 sample products from every category (every 4th row)."""
    catalog = read_catalog(SAMPLE)
    return Catalog(catalog.path, catalog.products[::4], [], list(catalog.extra_columns))


def test_synthetic_queries_are_deterministic_valid_images(small_catalog: Catalog, tmp_path: Path) -> None:
    first = synthetic_queries(small_catalog, n=23, out_dir=tmp_path / "a", seed=3)
    second = synthetic_queries(small_catalog, n=23, out_dir=tmp_path / "b", seed=3)
    other = synthetic_queries(small_catalog, n=3, out_dir=tmp_path / "c", seed=4)
    assert first.synthetic and "SYNTHETIC" in first.description and len(first) == 23
    # every product once before any repeats (21 products, 23 queries)
    expected = [q.expected[0] for q in first]
    assert len(set(expected[:21])) == 21 and set(expected) == small_catalog.product_ids
    for q1, q2 in zip(first, second, strict=True):
        assert Path(q1.image).name == Path(q2.image).name
        assert Path(q1.image).read_bytes() == Path(q2.image).read_bytes()
    assert Path(other.queries[0].image).read_bytes() != Path(first.queries[0].image).read_bytes()
    categories = {p.product_id: p.category for p in small_catalog.products}
    for q in first:
        with Image.open(q.image) as img:
            img.verify()
        with Image.open(q.image) as img:
            assert img.format == "JPEG" and img.size == (512, 512)
        assert q.category == categories[q.expected[0]]
    rows = list(csv.DictReader((tmp_path / "a" / "queries.csv").open()))
    assert len(rows) == 23 and rows[0]["expected"] == expected[0]
    reloaded = load_queries(tmp_path / "a" / "queries.csv")
    assert [q.image for q in reloaded] == [q.image for q in first]


def test_holdout_queries_leave_their_image_out_of_the_index() -> None:
    catalog = read_catalog(SAMPLE)
    index_catalog, queries = holdout_queries(catalog, seed=0)
    multi = {p.product_id: p for p in catalog.products if len(p.images) >= 2}
    assert len(queries) == len(multi) >= 5 and not queries.synthetic
    indexed_sources = {img.source for img in index_catalog.images}
    for q in queries:
        assert q.image not in indexed_sources and q.expected[0] in multi
        assert q.image in {img.source for img in multi[q.expected[0]].images}
    assert len(index_catalog.images) == len(catalog.images) - len(queries)
    assert index_catalog.product_ids == catalog.product_ids
    assert holdout_queries(catalog, seed=0)[1].queries == queries.queries
    single = Catalog(catalog.path, [p for p in catalog.products if len(p.images) == 1][:3], [], [])
    with pytest.raises(VisualSearchError, match="--synthetic"):
        holdout_queries(single)


def test_load_queries_parses_filters_and_reports_bad_rows(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"")
    good = tmp_path / "q.csv"
    good.write_text(
        "query_image,query_text,expected,category,brand,min_price,max_price\n"
        "photo.jpg,,p1|p2,Shoes|Bags,,10,\n"
        ",red bag,p3,,Acme,,99.5\n"
    )
    first, second = load_queries(good).queries
    assert (
        first.image == str(tmp_path / "photo.jpg") and first.expected == ("p1", "p2") and first.text is None
    )
    assert first.filters.categories == ("Shoes", "Bags") and first.filters.min_price == 10.0
    assert (
        second.text == "red bag" and second.filters.brands == ("Acme",) and second.filters.max_price == 99.5
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("query_text,expected,min_price\nred,p1,cheap\n")
    with pytest.raises(VisualSearchError, match="row 2.*min_price"):
        load_queries(bad)
    bad.write_text("query_text,expected\nred,\n")
    with pytest.raises(VisualSearchError, match="row 2"):
        load_queries(bad)
    bad.write_text("text,product\nred,p1\n")
    with pytest.raises(VisualSearchError, match="needs the columns"):
        load_queries(bad)


# ------------------------------------------------------------------------------------------ real features


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory, efficientnet_weights, small_catalog) -> SearchEngine:
    encoder = create_encoder(f"timm:efficientnet_lite0@{efficientnet_weights}", device="cpu")
    engine = SearchEngine(encoder, open_store(tmp_path_factory.mktemp("eval-real"), None, None))
    assert engine.index_catalog(small_catalog).issues == []
    return engine


@pytest.fixture(scope="module")
def real_report(real_engine, small_catalog, tmp_path_factory) -> EvalReport:
    queries = synthetic_queries(small_catalog, n=21, out_dir=tmp_path_factory.mktemp("syn"), seed=0)
    return evaluate_engine(real_engine, queries)


def test_real_features_find_synthetic_shopper_photos(real_report: EvalReport) -> None:
    o = real_report.overall
    assert real_report.n_queries == 21 and real_report.synthetic
    # 21 products: chance is R@1 0.05, MRR ~0.17
    assert o.recall_at_10 >= 0.8 and o.recall_at_1 >= 0.5 and o.mrr >= 0.6, o
    assert o.recall_at_1 <= o.recall_at_5 <= o.recall_at_10 and o.recall_at_1 <= o.mrr <= 1
    assert sum(m.n for m in real_report.per_category.values()) == 21
    assert len(real_report.per_category) >= 6
    lat = real_report.latency
    timed = [r for r in real_report.queries if r.error is None]
    assert lat.embed_p50_ms == percentile([r.embed_ms for r in timed], 50)
    assert lat.search_p95_ms == percentile([r.search_ms for r in timed], 95)
    assert lat.embed_p50_ms <= lat.embed_p95_ms and lat.search_p50_ms <= lat.search_p95_ms
    assert lat.total_p50_ms >= lat.embed_p50_ms
    assert all(
        r.rank is None or r.rank > 10 or r.retrieved[r.rank - 1] == r.expected[0] for r in real_report.queries
    )


def test_text_queries_on_an_image_only_model_are_skipped_with_a_note(real_engine, small_catalog) -> None:
    pid = small_catalog.products[0].product_id
    photo = small_catalog.products[0].images[0].source
    report = evaluate_engine(real_engine, [Query((pid,), text="red bag"), Query((pid,), image=photo)])
    assert report.n_queries == 1 and report.overall.recall_at_1 == 1.0
    assert any("text queries skipped" in note for note in report.notes)
    report = evaluate_engine(real_engine, [Query(("not-a-product",), image=photo)])
    assert report.overall.recall_at_10 == 0 and any("not in the index" in note for note in report.notes)


def test_live_synthetic_eval_uses_the_products_in_the_index(real_engine, small_catalog, tmp_path) -> None:
    report = live_synthetic_eval(real_engine, n=5, seed=1, workdir=tmp_path / "live")
    assert report.n_queries == 5 and report.synthetic
    assert {r.expected[0] for r in report.queries} <= small_catalog.product_ids
    assert len(list((tmp_path / "live").glob("*.jpg"))) == 5
    assert live_synthetic_eval(real_engine, n=3).n_queries == 3  # temporary folder, cleaned up


def test_markdown_has_one_row_per_report(real_report: EvalReport) -> None:
    tiny_report = dataclasses.replace(real_report, label="tiny | model", remove_background=True)
    md = format_markdown([real_report, tiny_report])
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    rows = lines[header + 2 : header + 4]
    assert rows[0].startswith(
        f"| {real_report.model_id} | off | 21 (synthetic) | {real_report.overall.recall_at_1:.3f}"
    )
    assert rows[1].startswith("| tiny \\| model | on | 21")
    assert "**SYNTHETIC**" in md and "### Recall@10 per category" in md
    for category in real_report.per_category:
        assert any(line.startswith(f"| {category} |") for line in lines)
    assert json.loads(json.dumps(real_report.to_dict()))["overall"]["n"] == 21


# ------------------------------------------------------------------------------------------ CLI


def test_cli_evaluate_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    catalog = read_catalog(SAMPLE)
    products = [p for p in catalog.products if p.brand][:8]
    csv_path = tmp_path / "catalog.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_id", "image", "title", "category", "brand", "price"])
        for p in products:
            writer.writerow(
                [p.product_id, "|".join(i.source for i in p.images), p.title, p.category, p.brand, p.price]
            )
    env = {**os.environ, "VS_DEVICE": "cpu", "U2NET_HOME": str(tmp_path / "no-rembg-model")}
    env.pop("VS_DATA_DIR", None)
    data = tmp_path / "data"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "visual_search", "evaluate", "--catalog", str(csv_path), "--model", "test:tiny",
             "--data-dir", str(data), "--no-progress", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    out = run("--synthetic", "6", "--remove-background", "both", "--out-json", str(tmp_path / "r.json"),
              "--out-md", str(tmp_path / "r.md"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "8 embedded" in out.stderr and "No background-removal rows" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["query_set"]["synthetic"] and report["query_set"]["size"] == 6
    (row,) = report["reports"]
    assert row["model_id"] == "test:tiny@random-seed0" and row["n_queries"] == 6
    per_query = row["queries"]
    assert len(per_query) == 6
    assert row["overall"]["recall_at_10"] == pytest.approx(
        sum(q["recall_at_10"] for q in per_query) / 6, abs=1e-5
    )
    assert row["latency"]["embed_p50_ms"] == pytest.approx(
        percentile([q["embed_ms"] for q in per_query], 50), abs=1e-5
    )
    md = (tmp_path / "r.md").read_text()
    assert "| test:tiny@random-seed0 | off | 6 (synthetic) |" in md and md in out.stdout

    # own query file, in-process this time: a brand filter restricts results; the index is reused
    target = products[0]
    others = [p for p in products if p.brand == target.brand]
    queries = tmp_path / "queries.csv"
    queries.write_text(
        "query_image,query_text,expected,brand\n"
        f",anything at all,{target.product_id},{target.brand}\n"
        f"{target.images[0].source},,{target.product_id},\n"
    )
    monkeypatch.setenv("VS_DEVICE", "cpu")
    args = [
        "evaluate",
        "--catalog",
        str(csv_path),
        "--model",
        "test:tiny",
        "--data-dir",
        str(data),
        "--no-progress",
    ]
    assert main([*args, "--queries", str(queries), "--out-json", str(tmp_path / "q.json")]) == 0
    err = capsys.readouterr().err
    assert "0 embedded" in err and "8 unchanged" in err
    (row,) = json.loads((tmp_path / "q.json").read_text())["reports"]
    first = row["queries"][0]
    assert set(first["retrieved"]) <= {p.product_id for p in others}
    if len(others) == 1:
        assert first["rank"] == 1
    assert row["queries"][1]["rank"] == 1  # the catalog photo itself is its own nearest neighbour
    assert np.isfinite(row["overall"]["mrr"])

    assert main([*args, "--queries", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "Query file not found" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ shopper kinds x pipelines


def _few_products_csv(tmp_path: Path, n: int = 6) -> Path:
    catalog = read_catalog(SAMPLE)
    csv_path = tmp_path / "few.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_id", "image", "title", "category"])
        for p in catalog.products[::14][:n]:
            writer.writerow([p.product_id, p.images[0].source, p.title, p.category])
    return csv_path


def test_shopper_queries_are_per_kind_and_deterministic(tmp_path: Path) -> None:
    csv_path = _few_products_csv(tmp_path)
    first = shopper_queries(csv_path, n=4, out_dir=tmp_path / "a", seed=5)
    again = shopper_queries(csv_path, n=4, out_dir=tmp_path / "b", seed=5)
    assert first.synthetic and "SYNTHETIC" in first.description and len(first) == 12
    assert [q.category for q in first] == ["handheld"] * 4 + ["close_up"] * 4 + ["clutter"] * 4
    for q1, q2 in zip(first, again, strict=True):
        assert Path(q1.image).read_bytes() == Path(q2.image).read_bytes()
        assert Path(q1.image).parent.name == q1.category
    rows = list(csv.DictReader((tmp_path / "a" / "queries.csv").open()))
    assert [r["kind"] for r in rows] == [q.category for q in first]
    for row in rows:  # analysis metadata: where the item is, inside the 512-px photo
        x0, y0, x1, y1 = (int(v) for v in row["item_box"].split())
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert [q.image for q in load_queries(tmp_path / "a" / "queries.csv")] == [q.image for q in first]
    with pytest.raises(VisualSearchError, match="Unknown query kind"):
        shopper_queries(csv_path, n=1, out_dir=tmp_path / "c", kinds=["blurry"])


def test_evaluate_pipeline_gives_one_row_per_pipeline_and_kind(tmp_path: Path, monkeypatch, capsys) -> None:
    csv_path = _few_products_csv(tmp_path)
    monkeypatch.setenv("VS_DEVICE", "cpu")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-rembg-model"))  # auto/on fall back to the photo
    args = ["evaluate", "--catalog", str(csv_path), "--model", "test:tiny", "--data-dir", str(tmp_path / "d"),
            "--no-progress", "--shopper", "2", "--pipeline", "auto,off,on", "--out-json", str(tmp_path / "r.json")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("## Query pipelines per kind") :]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [tuple(c.strip() for c in r.split("|")[1:3]) for r in rows] == [
        (p, k) for p in ("auto", "off", "on") for k in ("close_up", "clutter", "handheld", "**all**")
    ]
    assert all("2 (synthetic)" in r for r in rows if "**all**" not in r)
    assert "Background removal is not available" in out
    reports = json.loads((tmp_path / "r.json").read_text())["reports"]
    assert [r["pipeline"] for r in reports] == ["auto", "off", "on"]
    assert main([*args[:-4], "--pipeline", "sometimes"]) == 2
    assert "Unknown pipeline" in capsys.readouterr().err


def test_cli_evaluate_passes_the_colour_weight_setting_to_its_engine(tmp_path: Path, monkeypatch) -> None:
    """VS_COLOUR_WEIGHT=0 is how auto is measured without the colour re-rank: evaluate's own engine must get it."""
    import visual_search.cli.evaluate as cli_evaluate

    seen: list[float] = []

    class Recording(SearchEngine):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self.colour_weight)

    monkeypatch.setattr(cli_evaluate, "SearchEngine", Recording)
    monkeypatch.setenv("VS_COLOUR_WEIGHT", "0")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-rembg-model"))
    code = main(["evaluate", "--catalog", str(SAMPLE), "--model", "test:tiny", "--device", "cpu",
                 "--data-dir", str(tmp_path / "data"), "--no-progress", "--synthetic", "2"])  # fmt: skip
    assert code == 0
    assert seen == [0.0]
