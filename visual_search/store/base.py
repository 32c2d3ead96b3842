"""The store contract (VectorStore), index defaults and helpers both backends share.

Both backends store one named dense vector ("image", cosine) per point, with keyword payload
indexes on KEYWORD_FIELDS and ``attrs.<name>`` and a float index on FLOAT_FIELDS.
"""

from __future__ import annotations

import json
import logging
import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.conditions import Condition
from ..core.errors import ModelMismatchError
from ..core.io import atomic_write_text
from ..core.types import IMAGE_INDEX, INDEXED_AT, TITLE, CollectionInfo, Hit, IndexPoint, SearchFilters

log = logging.getLogger(__name__)

VECTOR_NAME = "image"
DEFAULT_COLLECTION = "products"

# Index defaults, chosen with bench/bench_vector_store.py (see bench/RESULTS_vector_store.md):
# on 100k clustered 512-d vectors on 2 shared cores, m=16/ef_construct=100 + int8 scalar
# quantization (rescored with the original vectors) at hnsw_ef=128 gave recall@10 0.998-1.000 at
# 0.9-1.3 ms p50, and built in ~2-2.5 min instead of ~5-5.5 min for float32. m=32/ef_construct=200
# bought no recall and cost time. ef=64 also passed 0.95 (0.986-0.993); 128 is the safety margin.
DEFAULT_HNSW_M = 16
DEFAULT_EF_CONSTRUCT = 100
DEFAULT_HNSW_EF = 128
DEFAULT_QUANTIZATION = True
# Threads for the HNSW build (Qdrant's max_indexing_threads): 0 = Qdrant's automatic choice, which
# used every core here (per-thread CPU sampled during an optimize on 2 cores: 2 busy threads). Set
# it lower to leave cores to a web UI serving during a rebuild. See bench/RESULTS.md.
DEFAULT_INDEXING_THREADS = 0
# Below this many KB of vectors per segment Qdrant searches exactly (no HNSW needed).
FULL_SCAN_THRESHOLD_KB = 10_000
# Qdrant's default indexing_threshold: segments with fewer KB of vectors get no HNSW graph.
INDEXING_THRESHOLD_KB = 10_000

_SCROLL_PAGE = 512

# Payload indexes beyond the filterable fields (types.KEYWORD_FIELDS / FLOAT_FIELDS), so the catalog
# view is counts, facets and ordered lookups instead of a scan: the image index (integer) marks a
# product's first image (per-product counts), indexed_at (datetime) gives "last indexed" by one
# ordered read, title (full text) lets a product picker look products up by words of their title.
INTEGER_FIELDS = (IMAGE_INDEX,)
DATETIME_FIELDS = (INDEXED_AT,)
TEXT_FIELDS = (TITLE,)


class VectorStore(ABC):
    """Same semantics for every backend; tests/test_store.py runs one contract against each.

    Point ids are uuid strings (uuid5, made by the caller). Vectors come back L2-normalised
    (cosine collections normalise on insert). Scores are cosine similarities, best first.
    """

    backend: str

    @abstractmethod
    def ensure_collection(self, dim: int, model_id: str, keyword_fields: Sequence[str] = ()) -> None:
        """Create the collection if missing (cosine, payload indexes on the filterable fields,
        plus ``attrs.<name>`` keyword indexes for ``keyword_fields``). If it exists and was
        built by another model or dim, raise ModelMismatchError."""

    @abstractmethod
    def upsert(self, points: Sequence[IndexPoint]) -> None:
        """Insert or replace points by id (re-upserting an id never duplicates it)."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None:
        """Remove points by id; unknown ids are ignored."""

    @abstractmethod
    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        filters: SearchFilters | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """At most ``top_k`` nearest points (cosine), restricted by ``filters``, with
        score >= ``score_threshold`` when given; best first."""

    @abstractmethod
    def recommend(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str],
        top_k: int,
        filters: SearchFilters | None = None,
        score_threshold: float | None = None,
        *,
        extra_positive: Sequence[np.ndarray] = (),
    ) -> list[Hit]:
        """Qdrant recommend (average_vector strategy); the example points themselves are excluded.

        The query is ``mean(pos) + (mean(pos) - mean(neg))`` (just ``mean(pos)`` without
        negatives), searched by cosine. ``pos`` is the stored positive examples plus the raw
        vectors in ``extra_positive`` (e.g. the shopper's own query vector), each L2-normalised
        first like stored vectors are. Example ids that are not stored are ignored; with no
        stored positive example and no extra positive the result is empty.
        """

    @abstractmethod
    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """id -> float32 vector (normalised) for the ids that exist."""

    @abstractmethod
    def page(
        self, limit: int, offset: Any = None, *, where: Sequence[Condition] = ()
    ) -> tuple[list[Hit], Any]:
        """One page of points with payload (score 0.0) matching ``where``, in id order, and the
        offset of the next page (None at the end). The bounded lookup: callers that need a few
        points read one page, never the whole collection."""

    def scroll(self, *, where: Sequence[Condition] = ()) -> Iterator[Hit]:
        """Every point (matching ``where``) with payload; for sync, resume and audits only: at 1M
        points this reads 1M payloads, so nothing on a page load may call it."""
        offset: Any = None
        while True:
            hits, offset = self.page(_SCROLL_PAGE, offset, where=where)
            yield from hits
            if offset is None or not hits:
                return

    @abstractmethod
    def count(self, filters: SearchFilters | None = None, *, where: Sequence[Condition] = ()) -> int:
        """Exact number of points matching ``filters`` and ``where`` (all points without)."""

    @abstractmethod
    def facet(self, key: str, limit: int = 100, *, where: Sequence[Condition] = ()) -> dict[str, int]:
        """Value -> number of points (matching ``where``), for a keyword payload field (e.g.
        "category" or "attrs.color"); most frequent first, exact counts."""

    @abstractmethod
    def extreme(self, key: str, *, largest: bool = False, where: Sequence[Condition] = ()) -> Any:
        """The smallest (or largest) value of a range-indexed payload field (float, integer,
        datetime) among the points matching ``where``, by one ordered read of the payload index;
        None when no point has a value."""

    @property
    def generation(self) -> int:
        """Bumped by every write through this object: caches of derived facts (stats.py) compare it
        to know the index changed. Writes by other processes are not seen (see ``exclusive``)."""
        return self._generation

    _generation = 0
    # True where this object is the only writer (Edge holds the data-dir lock); False for a
    # server other processes may write too, so caches must also expire by time.
    exclusive = False

    def _changed(self) -> None:
        """Called before a write reaches the index and again after it: a reader that computed
        something from the old content can never file it under the new generation."""
        self._generation += 1

    def summary(self) -> dict[str, Any] | None:
        """The derived facts saved by ``save_summary`` while the index has not changed since;
        None where there are none (or the backend keeps none: a server other processes write)."""
        return None

    def save_summary(self, data: Mapping[str, Any], generation: int) -> bool:  # noqa: ARG002
        """Keep ``data`` (computed at ``generation``) with the index until its next write; False
        (nothing kept) when the index changed since or the backend keeps no summary."""
        return False

    @abstractmethod
    def info(self) -> CollectionInfo: ...

    def index_model(self) -> tuple[str | None, int | None]:
        """(model id, dim) the index was built with; (None, None) before anything was indexed.
        Cheap (no count): the engine calls it on every query to refuse a mismatched model."""
        info = self.info()
        return info.model_id, info.dim

    def optimize(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Build/merge indexes after a bulk upsert (the engine calls it after indexing).
        Searches work before it, only slower. No-op where the server does this itself."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release files/connections."""

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Shared helpers: payloads, meta
# ---------------------------------------------------------------------------------------------


def _clean_value(value: Any) -> Any:
    """Payload values as plain JSON: numpy scalars -> Python, NaN/inf -> None, tuples -> lists."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_value(v) for v in value]
    return value


def _clean_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _clean_value(v) for k, v in payload.items()}


def _as_vector(vector: Any, dim: int | None) -> np.ndarray:
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"Vector has {arr.shape[0]} dimensions; this index holds {dim}-d vectors")
    return arr


def _mismatch(
    stored_model: str | None, stored_dim: int | None, model_id: str, dim: int
) -> ModelMismatchError:
    built = f"model {stored_model}" if stored_model else "an unknown model"
    model_hint = f" or pass --model {stored_model}" if stored_model else ""
    return ModelMismatchError(
        f"This index was built with {built} (dim {stored_dim}); you asked for {model_id} (dim {dim}). "
        f"Re-index into another --data-dir{model_hint}."
    )


def _check_meta(meta: Mapping[str, Any] | None, model_id: str, dim: int) -> None:
    if not meta:
        return
    stored_model, stored_dim = meta.get("model_id"), meta.get("dim")
    if stored_model != model_id or stored_dim != dim:
        raise _mismatch(stored_model, stored_dim, model_id, dim)


def _meta_record(model_id: str, dim: int) -> dict[str, Any]:
    return {"model_id": model_id, "dim": int(dim), "vector": VECTOR_NAME, "distance": "cosine", "format": 1}


def _facet_from_payloads(payloads: Iterable[Mapping[str, Any]], key: str, limit: int) -> dict[str, int]:
    """Exact facet by reading payloads: the fallback where the engine cannot facet a field."""
    path = _split_key(key)
    counts: Counter[str] = Counter()
    for payload in payloads:
        value: Any = payload
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        values = value if isinstance(value, list) else [value]
        for v in {v for v in values if isinstance(v, (str, int, bool)) and not isinstance(v, float)}:
            counts[str(v) if not isinstance(v, str) else v] += 1
    return _top(counts.items(), limit)


def _payload_value(payload: Mapping[str, Any] | None, key: str) -> Any:
    """The value at a (possibly dotted) payload key; None where it is missing."""
    value: Any = payload or {}
    for part in _split_key(key):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _split_key(key: str) -> list[str]:
    """``attrs."a b"`` -> ["attrs", "a b"]; ``attrs.color`` -> ["attrs", "color"]."""
    return [
        m.group(1) if m.group(1) is not None else m.group(2) for m in re.finditer(r'"([^"]*)"|([^.]+)', key)
    ]


def _top(items: Iterable[tuple[Any, int]], limit: int) -> dict[str, int]:
    ordered = sorted(((str(v), int(c)) for v, c in items), key=lambda vc: (-vc[1], vc[0]))
    return dict(ordered[:limit])


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def _batches(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _extra_vectors(vectors: Sequence[np.ndarray], dim: int | None) -> list[np.ndarray]:
    """Raw example vectors, checked and L2-normalised like the stored (cosine) ones."""
    out = []
    for v in vectors:
        arr = _as_vector(v, dim)
        norm = float(np.linalg.norm(arr))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError("An example vector must be finite and non-zero")
        out.append((arr / norm).astype(np.float32))
    return out


def _average_vector_query(positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray]) -> np.ndarray:
    """Qdrant's recommend ``average_vector`` strategy: avg_pos + (avg_pos - avg_neg)."""
    avg_pos = np.mean(np.stack(positives), axis=0)
    if not negatives:
        return avg_pos
    avg_neg = np.mean(np.stack(negatives), axis=0)
    return avg_pos + (avg_pos - avg_neg)
