"""Measure retrieval quality: Recall@1/5/10, MRR, nDCG@10, per category, with latency.

``python -m visual_search evaluate --catalog CSV [--queries Q.csv | --synthetic N | --shopper N |
--holdout] --model SPEC [--model SPEC2 ...] [--pipeline auto,off,on | --remove-background off|on|both]``
compares models and settings in one run (one row per model x setting), as a Markdown table and JSON.

Photo queries go through the object-aware pipeline (:func:`query_views.search_views`), ``auto`` by
default, as in the app; ``--pipeline auto,off,on`` compares pipelines (``off`` = whole photo, ``on`` =
today's background-removed cut-out). ``--remove-background`` keeps the old engine.search rows.

Query sets
    * ``--queries Q.csv``: your own. Columns ``query_image`` and/or ``query_text``, ``expected`` (product
      id(s), ``|``-separated), optional filters ``category``, ``brand`` (``|`` = any of), ``min_price``,
      ``max_price``. Relative image paths are relative to the CSV.
    * ``--holdout``: for products with >= 2 images one image is held out of the index and used as
      the query (real photos, never seen by the index; only multi-image products take part).
    * ``--shopper N``: N SYNTHETIC shopper photos per kind (augment.QUERY_KINDS: handheld, close_up,
      clutter with a distractor product), reported per kind with one row per pipeline x kind; with
      ``--holdout`` they are made from the held-out photos only (not in the index).
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

Modules: ``metrics`` (Recall/MRR/nDCG and the report dataclasses), ``queries`` (query sets),
``runner`` (:func:`evaluate_engine` runs a query set on any engine; :func:`live_synthetic_eval` builds
synthetic queries from the live index, for the app), ``report`` (Markdown). The command line lives in
``visual_search.cli.evaluate``.
"""

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
from visual_search.evaluation.queries import (
    Query,
    QuerySet,
    SourceImage,
    holdout_queries,
    load_queries,
    shopper_queries,
    slug,
    synthetic_queries,
)
from visual_search.evaluation.report import format_markdown, format_pipeline_table
from visual_search.evaluation.runner import (
    DEFAULT_DEPTH,
    DEFAULT_PIPELINE,
    evaluate_engine,
    live_synthetic_eval,
)

__all__ = [
    "DEFAULT_DEPTH",
    "DEFAULT_PIPELINE",
    "EvalReport",
    "Latency",
    "Metrics",
    "Query",
    "QueryResult",
    "QuerySet",
    "SourceImage",
    "evaluate_engine",
    "format_markdown",
    "format_pipeline_table",
    "holdout_queries",
    "live_synthetic_eval",
    "load_queries",
    "ndcg_at_k",
    "percentile",
    "recall_at_k",
    "reciprocal_rank",
    "shopper_queries",
    "slug",
    "synthetic_queries",
]
