"""Measure retrieval quality: Recall@1/5/10, MRR, nDCG@10, per category, with latency.

``python -m visual_search evaluate --catalog CSV [--queries Q.csv | --synthetic N | --holdout]
--model SPEC [--model SPEC2 ...] [--remove-background off|on|both]`` compares models and settings in
one run (one row per model x background-removal setting), as a Markdown table and JSON.

Query sets
    * ``--queries Q.csv``: your own. Columns ``query_image`` and/or ``query_text``, ``expected`` (product
      id(s), ``|``-separated), optional filters ``category``, ``brand`` (``|`` = any of), ``min_price``,
      ``max_price``. Relative image paths are relative to the CSV.
    * ``--holdout``: for products with >= 2 images one image is held out of the index and used as
      the query (real photos, never seen by the index; only multi-image products take part).
    * ``--synthetic N``: SYNTHETIC shopper photos (augment.shopper_photo): a catalog image pasted at a
      random scale and angle on a cluttered background, relit, JPEG-compressed; deterministic for
      ``--seed``. They derive from indexed images, so they are easier than real shopper photos:
      use them to compare models and settings, not as an absolute promise.

Metrics (binary relevance; the expected products are the relevant ones; a product counts once)
    Recall@k   share of the expected products found in the top k (= hit rate with one expected product)
    MRR        1 / rank of the first expected product in the top ``depth`` (default 100), else 0
    nDCG@10    DCG@10 / ideal DCG@10 with gain 1 and discount 1/log2(rank + 1)
    Latency    p50/p95 of the engine's own timings per query: embed (model), search (vector store),
               total (load + background removal + embed + search)

Indexes: one embedded index per model (and catalog, and holdout split) under
``<data-dir>/eval/index/``; a second run with the same model reuses it and embeds only what changed.

For the app: :func:`evaluate_engine` runs a query set on any engine, :func:`live_synthetic_eval`
builds synthetic queries from the products in the live index and runs them, :func:`format_markdown`
renders reports.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .augment import shopper_photo
from .catalog import Catalog, is_url, read_catalog
from .errors import ImageError, UnsupportedQueryError, VisualSearchError
from .types import CATEGORY, IMAGE, IMAGE_INDEX, PRODUCT_ID, SearchFilters

__all__ = [
    "EvalReport",
    "Latency",
    "Metrics",
    "Query",
    "QueryResult",
    "QuerySet",
    "add_evaluate_parser",
    "evaluate_engine",
    "format_markdown",
    "holdout_queries",
    "live_synthetic_eval",
    "load_queries",
    "ndcg_at_k",
    "percentile",
    "recall_at_k",
    "reciprocal_rank",
    "synthetic_queries",
]

DEFAULT_DEPTH = 100
KS = (1, 5, 10)
NO_CATEGORY = "(none)"
SYNTHETIC_SIDE = 512


# --------------------------------------------------------------------------------------------------
# Metrics


def _dedupe(ranked: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for pid in ranked:
        if pid not in seen:
            seen.add(pid)
            out.append(pid)
    return out


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Share of the relevant products among the first ``k`` ranked (0.0 when nothing is relevant)."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    return len(relevant.intersection(_dedupe(ranked)[:k])) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], relevant: Iterable[str]) -> float:
    """1 / (1-based rank of the first relevant product), 0.0 when none is ranked."""
    relevant = set(relevant)
    for rank, pid in enumerate(_dedupe(ranked), 1):
        if pid in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k: sum 1/log2(rank+1) over relevant hits, over the ideal ordering's sum."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, pid in enumerate(_dedupe(ranked)[:k], 1) if pid in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


# --------------------------------------------------------------------------------------------------
# Queries


@dataclass(frozen=True)
class Query:
    """One evaluation query: a photo, a text or both, the product id(s) that should come back, filters."""

    expected: tuple[str, ...]
    image: str | None = None
    text: str | None = None
    filters: SearchFilters = field(default_factory=SearchFilters)
    category: str | None = None  # for the per-category breakdown; None: the expected product's category
    query_id: str = ""


@dataclass
class QuerySet:
    """Queries plus what they are, for the report ("synthetic" is always shown as such)."""

    queries: list[Query]
    name: str  # e.g. "synthetic", "holdout", "queries.csv"
    description: str
    synthetic: bool = False
    folder: Path | None = None  # where generated query images live

    def __iter__(self) -> Iterator[Query]:
        return iter(self.queries)

    def __len__(self) -> int:
        return len(self.queries)


def _split_ids(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split("|") if part.strip())


def _float_or_none(value: str | None, what: str, row: int) -> float | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise VisualSearchError(f"Query file row {row}: {what} {text!r} is not a number") from None


def load_queries(path: str | Path) -> QuerySet:
    """Read a query CSV (see the module docstring). Raises VisualSearchError naming the bad row."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise VisualSearchError(f"Query file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "expected" not in columns or not ({"query_image", "query_text"} & set(columns)):
            raise VisualSearchError(
                f"Query file {path.name} needs the columns expected and query_image and/or query_text "
                f"(found: {', '.join(columns) or 'none'})"
            )
        queries = []
        for row_number, raw in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
            expected = _split_ids(row.get("expected"))
            image = row.get("query_image") or None
            text = row.get("query_text") or None
            if not expected:
                raise VisualSearchError(f"Query file row {row_number}: 'expected' is empty")
            if image is None and text is None:
                raise VisualSearchError(f"Query file row {row_number}: give query_image, query_text or both")
            if image is not None and not is_url(image) and not Path(image).expanduser().is_absolute():
                image = str((path.parent / image).resolve())
            filters = SearchFilters(
                categories=_split_ids(row.get("category")),
                brands=_split_ids(row.get("brand")),
                min_price=_float_or_none(row.get("min_price"), "min_price", row_number),
                max_price=_float_or_none(row.get("max_price"), "max_price", row_number),
            )
            queries.append(Query(expected, image, text, filters, query_id=f"row {row_number}"))
    if not queries:
        raise VisualSearchError(f"Query file {path.name} has no queries")
    return QuerySet(queries, path.name, f"{len(queries)} queries from {path.name}")


@dataclass(frozen=True)
class _Item:
    product_id: str
    image_index: int
    source: str
    category: str | None


def _items_from(source: Any) -> list[_Item]:
    """(product, image) items from a Catalog, a catalog path, a SearchEngine (its live index) or items."""
    if isinstance(source, (str, Path)):
        source = read_catalog(source)
    if isinstance(source, Catalog):
        return [
            _Item(p.product_id, img.image_index, img.source, p.category)
            for p in source.products
            for img in p.images
        ]
    store = getattr(source, "store", None)
    if store is not None:  # a SearchEngine: what is in its index right now
        items = []
        for hit in store.scroll():
            p = hit.payload
            if p.get(PRODUCT_ID) is None or not p.get(IMAGE):
                continue
            items.append(
                _Item(str(p[PRODUCT_ID]), int(p.get(IMAGE_INDEX) or 0), str(p[IMAGE]), p.get(CATEGORY))
            )
        return items
    return [item if isinstance(item, _Item) else _Item(*item) for item in source]


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:limit] or "x"


def synthetic_queries(source: Any, n: int = 50, out_dir: str | Path | None = None, seed: int = 0) -> QuerySet:
    """N SYNTHETIC shopper photos of catalog products, saved as JPEG under ``out_dir``.

    ``source``: a Catalog, a catalog path, or a SearchEngine (uses the products in its index).
    Products are visited in a seeded order, one image each, before any product gets a second query.
    Deterministic: the same source, ``n`` and ``seed`` give byte-identical files. ``out_dir`` None
    makes a temporary folder (the caller deletes it). Also writes ``queries.csv`` there, reusable
    with ``--queries``.
    """
    from .images import load_image

    if n < 1:
        raise VisualSearchError("--synthetic needs at least 1 query")
    items = sorted(_items_from(source), key=lambda i: (i.product_id, i.image_index))
    if not items:
        raise VisualSearchError("No products to build synthetic queries from (empty catalog or index)")
    by_product: dict[str, list[_Item]] = {}
    for item in items:
        by_product.setdefault(item.product_id, []).append(item)
    order = sorted(by_product)
    random.Random(f"synthetic-order:{seed}").shuffle(order)
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="vs-synthetic-"))
    folder.mkdir(parents=True, exist_ok=True)

    queries: list[Query] = []
    rows = []
    attempts = 0
    i = 0
    while len(queries) < n and attempts < n + len(items):
        pid = order[i % len(order)]
        images = by_product[pid]
        item = images[(i // len(order)) % len(images)]
        i += 1
        attempts += 1
        try:
            photo = load_image(item.source)
        except ImageError:
            continue  # unreadable catalog image: the index skipped it as well
        k = len(queries)
        image = shopper_photo(photo, random.Random(f"synthetic:{seed}:{k}:{pid}"), size=SYNTHETIC_SIDE)
        name = f"{k:04d}_{_slug(pid)}.jpg"
        image.save(folder / name, "JPEG", quality=95)
        queries.append(Query((pid,), str(folder / name), category=item.category, query_id=name))
        rows.append({"query_image": name, "expected": pid, "source_image": item.source})
    with (folder / "queries.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["query_image", "expected", "source_image"])
        writer.writeheader()
        writer.writerows(rows)
    if not queries:
        raise VisualSearchError("None of the catalog images could be read to build synthetic queries")
    return QuerySet(
        queries,
        "synthetic",
        f"{len(queries)} SYNTHETIC shopper photos (catalog images pasted at random scale/angle on cluttered "
        f"backgrounds, relit, JPEG-compressed; seed {seed}). Derived from indexed images, so easier than "
        "real shopper photos: compare models with them, do not read them as real-world accuracy.",
        synthetic=True,
        folder=folder,
    )


def holdout_queries(catalog: Catalog | str | Path, seed: int = 0) -> tuple[Catalog, QuerySet]:
    """(catalog to index, queries): one image of every product with >= 2 images is held out of the
    index and becomes that product's query. Which image: seeded, per product."""
    if not isinstance(catalog, Catalog):
        catalog = read_catalog(catalog)
    products = []
    queries = []
    for product in catalog.products:
        if len(product.images) < 2:
            products.append(product)
            continue
        k = random.Random(f"holdout:{seed}:{product.product_id}").randrange(len(product.images))
        held = product.images[k]
        products.append(dataclasses.replace(product, images=product.images[:k] + product.images[k + 1 :]))
        queries.append(
            Query(
                (product.product_id,), held.source, category=product.category, query_id=Path(held.source).name
            )
        )
    if not queries:
        raise VisualSearchError(
            "--holdout needs products with at least 2 images (one is held out as the query); this catalog "
            "has none. Use --synthetic N instead."
        )
    index_catalog = Catalog(catalog.path, products, [], list(catalog.extra_columns))
    return index_catalog, QuerySet(
        queries,
        "holdout",
        f"{len(queries)} held-out catalog photos (one image of each product with 2+ images, left out of "
        f"the index; seed {seed}). Real photos, but studio shots, and only multi-image products.",
    )


# --------------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class Metrics:
    n: int
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    mrr: float
    ndcg_at_10: float

    @classmethod
    def of(cls, results: Sequence[QueryResult]) -> Metrics:
        if not results:
            return cls(0, *(float("nan"),) * 5)
        return cls(
            n=len(results),
            recall_at_1=float(np.mean([r.recall_at_1 for r in results])),
            recall_at_5=float(np.mean([r.recall_at_5 for r in results])),
            recall_at_10=float(np.mean([r.recall_at_10 for r in results])),
            mrr=float(np.mean([r.reciprocal_rank for r in results])),
            ndcg_at_10=float(np.mean([r.ndcg_at_10 for r in results])),
        )


@dataclass(frozen=True)
class Latency:
    """Milliseconds, from SearchResponse timings."""

    embed_p50_ms: float
    embed_p95_ms: float
    search_p50_ms: float
    search_p95_ms: float
    total_p50_ms: float
    total_p95_ms: float


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    expected: tuple[str, ...]
    category: str
    retrieved: tuple[str, ...]  # top 10 product ids
    rank: int | None  # 1-based rank of the first expected product within the depth, None if absent
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    reciprocal_rank: float
    ndcg_at_10: float
    embed_ms: float
    search_ms: float
    total_ms: float
    error: str | None = None


@dataclass
class EvalReport:
    """One row of the comparison: a model x background-removal setting on a query set."""

    label: str
    model_id: str
    remove_background: bool
    query_set: str
    synthetic: bool
    n_queries: int
    overall: Metrics
    per_category: dict[str, Metrics]
    latency: Latency
    notes: list[str] = field(default_factory=list)
    queries: list[QueryResult] = field(default_factory=list)
    query_set_description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _categories(engine: Any, product_ids: Iterable[str]) -> dict[str, str | None]:
    """Category of each expected product that is indexed: a bounded lookup of just those
    products (stats.product_payloads), not a scan of the whole index."""
    from .stats import product_payloads

    found = product_payloads(engine.store, list(product_ids))
    return {pid: payload.get(CATEGORY) for pid, payload in found.items()}


def evaluate_engine(
    engine: Any,
    queries: QuerySet | Sequence[Query],
    remove_background: bool = False,
    *,
    label: str | None = None,
    depth: int = DEFAULT_DEPTH,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run every query through ``engine.search`` and score the ranked products.

    Queries the model cannot answer (text on an image-only model) are skipped and noted; a query
    whose photo cannot be read counts as a miss and is noted. ``progress(done, total)`` is called
    after each query.
    """
    query_set = queries if isinstance(queries, QuerySet) else QuerySet(list(queries), "queries", "")
    categories = _categories(engine, (pid for query in query_set for pid in query.expected))
    results: list[QueryResult] = []
    notes: dict[str, None] = {}  # ordered set
    skipped_text = 0
    missing: set[str] = set()
    total = len(query_set)
    _warm_up(engine, query_set, remove_background)
    for done, query in enumerate(query_set, 1):
        category = query.category or categories.get(query.expected[0]) or NO_CATEGORY
        missing.update(pid for pid in query.expected if pid not in categories)
        try:
            response = engine.search(
                image=query.image,
                text=query.text,
                filters=query.filters,
                top_k=depth,
                remove_background=remove_background,
            )
        except UnsupportedQueryError:
            skipped_text += 1
            continue
        except VisualSearchError as exc:
            results.append(_miss(query, category, str(exc)))
            notes[f"query {query.query_id or done}: {exc} (counted as a miss)"] = None
            continue
        finally:
            if progress:
                progress(done, total)
        for note in response.notes:
            notes[note] = None
        ranked = [r.product_id for r in response.results]
        rr = reciprocal_rank(ranked, query.expected)
        results.append(
            QueryResult(
                query_id=query.query_id or str(done),
                expected=query.expected,
                category=category,
                retrieved=tuple(ranked[:10]),
                rank=round(1 / rr) if rr else None,
                recall_at_1=recall_at_k(ranked, query.expected, 1),
                recall_at_5=recall_at_k(ranked, query.expected, 5),
                recall_at_10=recall_at_k(ranked, query.expected, 10),
                reciprocal_rank=rr,
                ndcg_at_10=ndcg_at_k(ranked, query.expected, 10),
                embed_ms=response.embed_ms,
                search_ms=response.search_ms,
                total_ms=response.total_ms,
            )
        )
    if skipped_text:
        notes[
            f"{skipped_text} text queries skipped: {engine.encoder.model_id} has no text tower (image-only model)"
        ] = None
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
        notes[
            f"{len(missing)} expected product(s) are not in the index ({shown}); their queries cannot hit"
        ] = None
    by_category: dict[str, list[QueryResult]] = {}
    for r in results:
        by_category.setdefault(r.category, []).append(r)
    timed = [r for r in results if r.error is None]
    latency = Latency(
        embed_p50_ms=percentile([r.embed_ms for r in timed], 50),
        embed_p95_ms=percentile([r.embed_ms for r in timed], 95),
        search_p50_ms=percentile([r.search_ms for r in timed], 50),
        search_p95_ms=percentile([r.search_ms for r in timed], 95),
        total_p50_ms=percentile([r.total_ms for r in timed], 50),
        total_p95_ms=percentile([r.total_ms for r in timed], 95),
    )
    model_id = engine.encoder.model_id
    return EvalReport(
        label=label or (model_id + (" + background removal" if remove_background else "")),
        model_id=model_id,
        remove_background=remove_background,
        query_set=query_set.name,
        synthetic=query_set.synthetic,
        n_queries=len(results),
        overall=Metrics.of(results),
        per_category={c: Metrics.of(rs) for c, rs in sorted(by_category.items())},
        latency=latency,
        notes=list(notes),
        queries=results,
        query_set_description=query_set.description,
    )


def _warm_up(engine: Any, queries: QuerySet, remove_background: bool) -> None:
    """One untimed search first: lazy initialisation (threads, caches, rembg session) is not latency."""
    for query in queries:
        try:
            engine.search(image=query.image, text=query.text, top_k=1, remove_background=remove_background)
            return
        except VisualSearchError:
            continue


def _miss(query: Query, category: str, error: str) -> QueryResult:
    nan = float("nan")
    return QueryResult(
        query.query_id, query.expected, category, (), None, 0.0, 0.0, 0.0, 0.0, 0.0, nan, nan, nan, error
    )


def live_synthetic_eval(
    engine: Any,
    n: int = 30,
    seed: int = 0,
    workdir: str | Path | None = None,
    remove_background: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """For the app's Catalog tab: SYNTHETIC shopper photos of products in the live index, searched in it.

    Query images go to ``workdir`` (kept) or a temporary folder (deleted afterwards).
    """
    if workdir is not None:
        queries = synthetic_queries(engine, n=n, out_dir=workdir, seed=seed)
        return evaluate_engine(engine, queries, remove_background, progress=progress)
    with tempfile.TemporaryDirectory(prefix="vs-live-eval-") as tmp:
        queries = synthetic_queries(engine, n=n, out_dir=tmp, seed=seed)
        return evaluate_engine(engine, queries, remove_background, progress=progress)


# --------------------------------------------------------------------------------------------------
# Markdown


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ms(p50: float, p95: float) -> str:
    if math.isnan(p50):
        return "-"
    return f"{p50:.0f} / {p95:.0f}"


def format_markdown(reports: Sequence[EvalReport], title: str = "Retrieval evaluation") -> str:
    """Markdown: a comparison table (one row per report), per-category Recall@10, query sets, notes."""
    if not reports:
        return f"## {title}\n\nNo results.\n"
    lines = [f"## {title}", ""]
    seen_sets: dict[str, str] = {}
    for r in reports:
        seen_sets.setdefault(r.query_set, r.query_set_description)
    for name, description in seen_sets.items():
        flag = "**SYNTHETIC** " if any(r.synthetic and r.query_set == name for r in reports) else ""
        lines.append(f"- Query set {flag}`{name}`: {description or name}")
    lines += [
        "",
        "| model | background removal | queries | R@1 | R@5 | R@10 | MRR | nDCG@10 "
        "| embed ms p50 / p95 | search ms p50 / p95 | total ms p50 / p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        o, lat = r.overall, r.latency
        lines.append(
            f"| {_cell(_model_name(r.label, r))} | {'on' if r.remove_background else 'off'} | {r.n_queries}"
            f"{' (synthetic)' if r.synthetic else ''} | {_num(o.recall_at_1)} | {_num(o.recall_at_5)} "
            f"| {_num(o.recall_at_10)} | {_num(o.mrr)} | {_num(o.ndcg_at_10)} "
            f"| {_ms(lat.embed_p50_ms, lat.embed_p95_ms)} | {_ms(lat.search_p50_ms, lat.search_p95_ms)} "
            f"| {_ms(lat.total_p50_ms, lat.total_p95_ms)} |"
        )
    categories = sorted({c for r in reports for c in r.per_category})
    if categories:
        lines += ["", "### Recall@10 per category (queries in brackets)", ""]
        headers = [
            f"{_model_name(r.label, r)} (bg {'on' if r.remove_background else 'off'})" for r in reports
        ]
        lines.append("| category | " + " | ".join(_cell(h) for h in headers) + " |")
        lines.append("|---|" + "---:|" * len(reports))
        for c in categories:
            cells = []
            for r in reports:
                m = r.per_category.get(c)
                cells.append(f"{_num(m.recall_at_10)} ({m.n})" if m else "-")
            lines.append(f"| {_cell(c)} | " + " | ".join(cells) + " |")
    notes = [(r, note) for r in reports for note in r.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {_cell(_model_name(r.label, r))}: {note}" for r, note in notes]
    return "\n".join(lines) + "\n"


def _model_name(label: str, report: EvalReport) -> str:
    suffix = " + background removal"
    return label[: -len(suffix)] if label.endswith(suffix) else label


# --------------------------------------------------------------------------------------------------
# CLI


def add_evaluate_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the CLI's subparsers (handler: cli.COMMANDS['evaluate'])."""
    p = sub.add_parser(
        "evaluate",
        help="measure Recall@k / MRR / nDCG and latency for one or more models",
        description="Index the catalog with each --model (separate index per model under "
        "<data-dir>/eval/, reused across runs), run the query set, print a Markdown table.",
    )
    p.add_argument("--catalog", required=True, help="catalog CSV/Parquet to index and search")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--queries", help="query CSV: query_image and/or query_text, expected, [filters]")
    group.add_argument("--synthetic", type=int, metavar="N", help="N synthetic shopper photos (default: 50)")
    group.add_argument("--holdout", action="store_true", help="hold one image of multi-image products out")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="SPEC",
        help="model spec; repeat to compare (VS_MODEL)",
    )
    p.add_argument(
        "--remove-background",
        choices=("off", "on", "both"),
        default="off",
        help="run queries without / with / both ways (default off)",
    )
    p.add_argument("--out-json", help="write the full report (per query too) as JSON")
    p.add_argument("--out-md", help="write the Markdown table to this file")
    p.add_argument(
        "--data-dir", help="work folder; indexes go to <data-dir>/eval/ (VS_DATA_DIR; default ./data)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic/holdout queries (default 0)")
    p.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help="results per query for MRR (default 100)")
    p.add_argument("--batch-size", type=int, default=32, help="indexing batch size")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (VS_DEVICE; default: CUDA when present)")
    p.add_argument("--bg-model", help="rembg model for background removal (VS_BG_MODEL; default u2netp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(model=None, qdrant_url=None, qdrant_api_key=None, collection=None)
    from .cli import command

    command("evaluate")(run_evaluate_command)
    return p


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _index_dir(root: Path, model_id: str, catalog: Path, holdout_seed: int | None) -> Path:
    key = f"{model_id}|{catalog}|{holdout_seed}"
    suffix = f"-holdout{holdout_seed}" if holdout_seed is not None else ""
    return root / "index" / f"{_slug(model_id)}{suffix}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with_model = Path("/proc/cpuinfo")
    if with_model.is_file():
        for line in with_model.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def run_evaluate_command(args: argparse.Namespace, settings: Any) -> int:
    """The ``evaluate`` subcommand."""
    from tqdm import tqdm

    from .encoders import create_encoder
    from .engine import SearchEngine
    from .store import open_store

    started = time.perf_counter()
    models = args.models or [settings.model]
    root = Path(settings.data_dir) / "eval"
    catalog = read_catalog(args.catalog)
    for issue in catalog.issues:
        _say(f"catalog: skipped {issue}")
    index_catalog = catalog
    holdout_seed = None
    if args.queries:
        query_set = load_queries(args.queries)
    elif args.holdout:
        index_catalog, query_set = holdout_queries(catalog, seed=args.seed)
        holdout_seed = args.seed
    else:
        n = args.synthetic if args.synthetic is not None else 50
        folder = root / "queries" / f"synthetic-{_slug(catalog.path.stem)}-n{n}-seed{args.seed}"
        query_set = synthetic_queries(catalog, n=n, out_dir=folder, seed=args.seed)
        _say(f"{len(query_set)} synthetic shopper photos in {folder}")
    settings_bg = {"off": [False], "on": [True], "both": [False, True]}[args.remove_background]

    reports: list[EvalReport] = []
    run_notes: list[str] = []
    for spec in models:
        encoder = create_encoder(spec, device=settings.device)
        index_dir = _index_dir(root, encoder.model_id, catalog.path, holdout_seed)
        engine = SearchEngine(encoder, open_store(index_dir, None, None), bg_model=settings.bg_model)
        try:
            index_report = engine.index_catalog(index_catalog, sync=True, batch_size=args.batch_size)
            _say(f"{encoder.model_id}: index {index_dir}: {index_report.summary()}")
            for bg in settings_bg:
                if bg and not _background_ready(engine, args.remove_background, run_notes):
                    continue
                bar = tqdm(
                    total=len(query_set),
                    desc=f"{spec}{' +bg' if bg else ''}",
                    unit="query",
                    disable=args.no_progress or None,
                    file=sys.stderr,
                )

                def tick(done: int, total: int, bar: Any = bar) -> None:
                    bar.n = done
                    bar.refresh()

                report = evaluate_engine(engine, query_set, bg, depth=args.depth, progress=tick)
                bar.close()
                reports.append(report)
        finally:
            engine.close()
            del engine, encoder
            gc.collect()

    markdown = format_markdown(reports)
    if run_notes:
        markdown += "\n" + "\n".join(f"- {note}" for note in run_notes) + "\n"
    print(markdown)
    if args.out_md:
        Path(args.out_md).write_text(markdown, encoding="utf-8")
    if args.out_json:
        data = {
            "query_set": {
                "name": query_set.name,
                "description": query_set.description,
                "synthetic": query_set.synthetic,
                "size": len(query_set),
                "folder": str(query_set.folder) if query_set.folder else None,
            },
            "catalog": str(catalog.path),
            "command": "python -m visual_search " + " ".join(sys.argv[1:]),
            "machine": machine_info(),
            "seconds": round(time.perf_counter() - started, 1),
            "reports": [r.to_dict() for r in reports],
        }
        Path(args.out_json).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return 0


def _background_ready(engine: Any, mode: str, run_notes: list[str]) -> bool:
    from .images import BackgroundRemovalUnavailable

    try:
        engine.background_remover.session()
        return True
    except BackgroundRemovalUnavailable as exc:
        if mode == "on":
            raise VisualSearchError(
                f"--remove-background on cannot run. {str(exc).replace(' Search continues without background removal.', '')}"
                " Use --remove-background off, or install the model."
            ) from None
        note = f"No background-removal rows: {exc}"
        if note not in run_notes:
            run_notes.append(note)
            _say(note)
        return False
