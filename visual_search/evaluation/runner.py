"""Run a query set on an engine and measure it (one EvalReport per model x pipeline setting)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from visual_search.core.errors import UnsupportedQueryError, VisualSearchError
from visual_search.core.types import CATEGORY
from visual_search.evaluation.metrics import (
    EvalReport,
    Latency,
    Metrics,
    QueryResult,
    ndcg_at_k,
    percentile,
    recall_at_k,
    reciprocal_rank,
)
from visual_search.evaluation.queries import Query, QuerySet, synthetic_queries

DEFAULT_DEPTH = 100
DEFAULT_PIPELINE = "auto"  # what the app searches photos with (query_views.search_views)
NO_CATEGORY = "(none)"


def _categories(engine: Any, product_ids: Iterable[str]) -> dict[str, str | None]:
    """Category of each expected product that is indexed: a bounded lookup of just those
    products (stats.product_payloads), not a scan of the whole index."""
    from ..stats import product_payloads

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
    pipeline: str | None = None,
) -> EvalReport:
    """Run every query through ``engine.search`` and score the ranked products.

    ``pipeline`` (``auto``/``off``/``on``) sends photo-only queries through
    :func:`query_views.search_views` in that mode instead (photo+text queries then use
    ``engine.search`` with background removal when the pipeline is ``on``).

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
    if pipeline is not None:
        remove_background = pipeline == "on"
    _warm_up(engine, query_set, remove_background, pipeline)
    for done, query in enumerate(query_set, 1):
        category = query.category or categories.get(query.expected[0]) or NO_CATEGORY
        missing.update(pid for pid in query.expected if pid not in categories)
        try:
            response = _run_query(engine, query, depth, remove_background, pipeline)
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
        notes.update(dict.fromkeys(response.notes))
        results.append(_scored(query, query.query_id or str(done), category, response))
    if skipped_text:
        notes[
            f"{skipped_text} text queries skipped: {engine.encoder.model_id} has no text tower (image-only model)"
        ] = None
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
        notes[
            f"{len(missing)} expected product(s) are not in the index ({shown}); their queries cannot hit"
        ] = None
    model_id = engine.encoder.model_id
    if label is None and pipeline is not None:
        label = f"{model_id} [{pipeline}]"
    return _report(
        label or (model_id + (" + background removal" if remove_background else "")),
        model_id,
        query_set,
        results,
        list(notes),
        remove_background,
        pipeline,
    )


def _report(
    label: str,
    model_id: str,
    query_set: QuerySet,
    results: list[QueryResult],
    notes: list[str],
    remove_background: bool,
    pipeline: str | None,
) -> EvalReport:
    """The row: metrics over all queries and per category, latency over the queries that ran."""
    by_category: dict[str, list[QueryResult]] = {}
    for r in results:
        by_category.setdefault(r.category, []).append(r)
    return EvalReport(
        label=label,
        model_id=model_id,
        remove_background=remove_background,
        query_set=query_set.name,
        synthetic=query_set.synthetic,
        n_queries=len(results),
        overall=Metrics.of(results),
        per_category={c: Metrics.of(rs) for c, rs in sorted(by_category.items())},
        latency=_latency([r for r in results if r.error is None]),
        notes=notes,
        queries=results,
        query_set_description=query_set.description,
        pipeline=pipeline,
    )


def _scored(query: Query, query_id: str, category: str, response: Any) -> QueryResult:
    """One answered query, scored against its expected products."""
    ranked = [r.product_id for r in response.results]
    rr = reciprocal_rank(ranked, query.expected)
    return QueryResult(
        query_id=query_id,
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
        top_score=float(response.results[0].score) if response.results else None,
        colour_window=_colour_window(response),
    )


def _colour_window(response: Any) -> tuple[tuple[str, float, float | None], ...]:
    """The pipeline's pre-re-rank window with each product's colour similarity (() for responses
    without one: engine.search, modes off/on, photo + text)."""
    sims = getattr(response, "colour_similarity", {}) or {}
    return tuple((pid, float(score), sims.get(pid)) for pid, score in getattr(response, "colour_window", ()))


def _latency(timed: Sequence[QueryResult]) -> Latency:
    """p50/p95 of the engine's own timings over the queries that ran (misses have none)."""
    return Latency(
        embed_p50_ms=percentile([r.embed_ms for r in timed], 50),
        embed_p95_ms=percentile([r.embed_ms for r in timed], 95),
        search_p50_ms=percentile([r.search_ms for r in timed], 50),
        search_p95_ms=percentile([r.search_ms for r in timed], 95),
        total_p50_ms=percentile([r.total_ms for r in timed], 50),
        total_p95_ms=percentile([r.total_ms for r in timed], 95),
    )


def _run_query(engine: Any, query: Query, depth: int, remove_background: bool, pipeline: str | None) -> Any:
    """engine.search, or the object-aware pipeline for photo-only queries when one is named."""
    if pipeline is not None and query.image is not None and not (query.text or "").strip():
        from visual_search.query_views import search_views

        return search_views(engine, query.image, pipeline, top_k=depth, filters=query.filters)
    return engine.search(
        image=query.image,
        text=query.text,
        filters=query.filters,
        top_k=depth,
        remove_background=remove_background,
    )


def _warm_up(engine: Any, queries: QuerySet, remove_background: bool, pipeline: str | None = None) -> None:
    """One untimed search first: lazy initialisation (threads, caches, rembg session) is not latency."""
    for query in queries:
        try:
            _run_query(engine, query, 1, remove_background, pipeline)
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
