"""Retrieval metrics (binary relevance; a product counts once) and the dataclasses that hold them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
    top_score: float | None = None  # the first result's score (evaluation.calibration uses it)
    # the auto pipeline's top products before the colour re-rank: (product id, score, colour
    # similarity or None), best first; evaluation.calibration replays the re-rank at other weights
    colour_window: tuple[tuple[str, float, float | None], ...] = ()


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
    pipeline: str | None = None  # query_views mode (auto/off/on); None: engine.search(remove_background)

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
