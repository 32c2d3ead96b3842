"""Vector store: one interface, two Qdrant backends (embedded Qdrant Edge, remote qdrant-client).

This is the only module that imports Qdrant. ``_filter_conditions`` is the one place a SearchFilters
becomes conditions; ``_edge_filter`` / ``_client_filter`` only spell those conditions in each
library's types.

Backends
--------
``EdgeStore``   Qdrant Edge (the Rust engine inside this process), persistent under a directory::

                    <directory>/shard/      the Edge shard (owned by qdrant-edge, never touch)
                    <directory>/meta.json   {"model_id": ..., "dim": ..., "vector": "image", ...}
                    <directory>/lock        fcntl.flock'ed by the one process that has the store open

                meta.json is written atomically (temp file + fsync + rename) and only *after* the
                shard was created, so a failed create leaves the previous meta.json untouched. A crash
                between the two leaves a shard without meta, which the next ensure_collection adopts
                (dimension checked).

                The lock is taken when the store is opened and held until close(): one process
                (the app, or one CLI command) owns a data dir at a time; any other gets
                "in use by another process (pid N)". Read-only commands (``info``, ``search``) take
                it too: qdrant-edge locks the shard on load anyway, so reading beside a running app is
                impossible, and an unlocked read of a shard being created would see half a store.
                flock is released by the kernel when the holder dies (kill -9 included), so a stale
                lock file never blocks a restart.
``RemoteStore`` qdrant-client against a Qdrant server/cluster (or an injected client, e.g.
                ``QdrantClient(":memory:")`` in tests); the model id and dim live in the collection's
                own ``metadata``.

Both store one named dense vector ("image", cosine) per point, with keyword payload indexes on
KEYWORD_FIELDS and ``attrs.<name>`` and a float index on FLOAT_FIELDS.

Threads: Qdrant Edge is safe to call from several threads at once (checked with 3 query threads +
1 writer); queries release the GIL, updates hold it briefly (~20 ms per 512-point batch).
``EdgeShard.optimize()`` holds the GIL for the whole HNSW build (minutes at 100k points), which
would freeze the whole process, web UI included, so EdgeStore.optimize() runs it in a child
process while the shard is closed. A small readers/exclusive gate keeps reads off the shard while
it is created, optimised or closed. The remote client is thread-safe (httpx); qdrant-client's
in-process local mode is not, so it gets a lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import ModelMismatchError, StoreUnavailableError
from .core.types import (
    ATTRS_KEY,
    BRAND,
    CATEGORY,
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    PRICE,
    CollectionInfo,
    Hit,
    IndexPoint,
    SearchFilters,
)

try:  # POSIX; on Windows the data-dir lock is skipped (qdrant-edge still locks the shard itself)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

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
QUANTIZATION_OVERSAMPLING = 2.0
# Below this many KB of vectors per segment Qdrant searches exactly (no HNSW needed).
FULL_SCAN_THRESHOLD_KB = 10_000
# Qdrant's default indexing_threshold: segments with fewer KB of vectors get no HNSW graph.
INDEXING_THRESHOLD_KB = 10_000

_UPSERT_BATCH = 512
_SCROLL_PAGE = 512


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
    def scroll(self) -> Iterator[Hit]:
        """Every point with payload (score 0.0); used for sync, resume and audits."""

    @abstractmethod
    def count(self, filters: SearchFilters | None = None) -> int:
        """Exact number of points matching ``filters`` (all points without)."""

    @abstractmethod
    def facet(self, key: str, limit: int = 100) -> dict[str, int]:
        """Value -> number of points, for a keyword payload field (e.g. "category" or
        "attrs.color"); most frequent first, exact counts."""

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
# Shared helpers: filters, payloads, meta
# ---------------------------------------------------------------------------------------------

_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def attr_key(name: str) -> str:
    """Payload path of an extra catalog column: ``attrs.<name>`` (quoted when it needs it)."""
    if _SIMPLE_KEY.match(name):
        return f"{ATTRS_KEY}.{name}"
    if '"' in name or not name:
        raise ValueError(f"Attribute name {name!r} cannot be used as a filter key")
    return f'{ATTRS_KEY}."{name}"'


@dataclass(frozen=True)
class _AnyOf:
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class _Between:
    key: str
    gte: float | None
    lte: float | None


def _filter_conditions(filters: SearchFilters | None) -> list[_AnyOf | _Between]:
    """The one mapping from SearchFilters to (library-neutral) Qdrant conditions, all ANDed."""
    if filters is None:
        return []
    conds: list[_AnyOf | _Between] = []
    if filters.categories:
        conds.append(_AnyOf(CATEGORY, tuple(str(v) for v in filters.categories)))
    if filters.brands:
        conds.append(_AnyOf(BRAND, tuple(str(v) for v in filters.brands)))
    if filters.min_price is not None or filters.max_price is not None:
        conds.append(
            _Between(
                PRICE,
                None if filters.min_price is None else float(filters.min_price),
                None if filters.max_price is None else float(filters.max_price),
            )
        )
    for name, values in sorted(filters.attributes.items()):
        if values:
            conds.append(_AnyOf(attr_key(name), tuple(str(v) for v in values)))
    return conds


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
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


# ---------------------------------------------------------------------------------------------
# Qdrant Edge (embedded)
# ---------------------------------------------------------------------------------------------


IN_USE_MESSAGE = (
    "The index at this data dir is in use by another process{pid}. Stop it first, or pass another --data-dir."
)


class _DirLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<directory>/lock``, held until release().

    The holder's pid is written into the file so the refusal can name it. The kernel drops the lock
    when the holder exits or is killed, so no stale-lock cleanup is ever needed.
    """

    def __init__(self, directory: Path) -> None:
        self._fh: Any = None
        if fcntl is None:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fh = open(directory / "lock", "a+", encoding="ascii")  # noqa: SIM115 - held for the store's life
        except OSError as exc:  # e.g. a read-only copy of an index: nothing can write it, nothing to guard
            log.warning("Index lock not taken (%s); make sure no other process writes this index", exc)
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            if holder == str(os.getpid()):
                raise StoreUnavailableError(
                    "The index at this data dir is in use by this process already; close it first."
                ) from None
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreUnavailableError(IN_USE_MESSAGE.format(pid=pid)) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.seek(0)
                fh.truncate()
            fh.close()  # closing the descriptor drops the flock

    def __del__(self) -> None:  # an EdgeStore dropped without close() must not keep the dir locked
        self.release()


_OPTIMIZE_SCRIPT = (
    "import sys, qdrant_edge as qe; s = qe.EdgeShard.load(sys.argv[1]); s.optimize(); s.flush(); s.close()"
)


class _Gate:
    """Many shared holders (reads, upserts) or one exclusive holder (create, optimize, close).
    A waiting exclusive holder blocks new shared ones, so it is never starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self, timeout: float, busy_message: str) -> Iterator[None]:
        with self._cond:
            if not self._cond.wait_for(lambda: not self._exclusive, timeout):
                raise StoreUnavailableError(busy_message)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _edge_filter(filters: SearchFilters | None, exclude_ids: Sequence[str] = ()) -> Any:
    """SearchFilters (+ ids to leave out) as a ``qdrant_edge.Filter``; None when unrestricted."""
    import qdrant_edge as qe

    must: list[Any] = []
    for cond in _filter_conditions(filters):
        if isinstance(cond, _AnyOf):
            must.append(qe.FieldCondition(key=cond.key, match=qe.MatchAny(list(cond.values))))
        else:
            must.append(qe.FieldCondition(key=cond.key, range=qe.RangeFloat(gte=cond.gte, lte=cond.lte)))
    must_not = [qe.HasIdCondition(set(exclude_ids))] if exclude_ids else []
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


class EdgeStore(VectorStore):
    """Embedded Qdrant Edge shard under ``directory`` (see the module docstring for the layout).

    ``hnsw_ef`` is the search-time beam width (recall/latency knob); ``hnsw_m`` and
    ``ef_construct`` shape the graph and apply when the shard is created. ``quantization=True``
    stores an int8 scalar-quantized copy and searches it with rescoring (less RAM bandwidth).
    """

    backend = "qdrant-edge"

    def __init__(
        self,
        directory: Path | str,
        *,
        hnsw_ef: int = DEFAULT_HNSW_EF,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construct: int = DEFAULT_EF_CONSTRUCT,
        quantization: bool = DEFAULT_QUANTIZATION,
        max_search_threads: int | None = None,
        optimize_in_subprocess: bool | None = None,
        busy_timeout_s: float = 30.0,
    ) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.directory = Path(directory)
        self.shard_dir = self.directory / "shard"
        self.meta_path = self.directory / "meta.json"
        self.hnsw_ef = int(hnsw_ef)
        self.hnsw_m = int(hnsw_m)
        self.ef_construct = int(ef_construct)
        self.quantization = bool(quantization)
        self.max_search_threads = max_search_threads
        self.optimize_in_subprocess = optimize_in_subprocess
        self.busy_timeout_s = busy_timeout_s
        self._gate = _Gate()
        self._shard: Any = None
        self._closed = False
        self._meta: dict[str, Any] | None = None
        self._dir_lock: _DirLock | None = None
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreUnavailableError("Cannot open the index: its data dir is a file, not a directory.")
        self._dir_lock = _DirLock(self.directory)
        try:
            if self._shard_exists():
                self._meta = self._read_meta()
                self._shard = self._load_shard()
        except BaseException:
            self._dir_lock.release()
            raise

    # -- lifecycle ------------------------------------------------------------------------------

    def _shard_exists(self) -> bool:
        return self.shard_dir.is_dir() and any(self.shard_dir.iterdir())

    def _read_meta(self) -> dict[str, Any] | None:
        if not self.meta_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("Index metadata %s unreadable: %s", self.meta_path, exc)
            raise StoreUnavailableError(
                "The index metadata (meta.json) is unreadable. Move the index aside and re-index, or "
                "pass another --data-dir."
            ) from exc
        return meta if isinstance(meta, dict) else None

    def _load_shard(self) -> Any:
        try:
            return self._qe.EdgeShard.load(str(self.shard_dir))
        except Exception as exc:  # qdrant-edge raises plain Exception with a message
            msg = str(exc)
            log.warning("Cannot load the Edge shard %s: %s", self.shard_dir, msg)
            if "WouldBlock" in msg or "lock" in msg.lower():
                raise StoreUnavailableError(IN_USE_MESSAGE.format(pid="")) from exc
            raise StoreUnavailableError(
                "The index at this data dir cannot be opened; it looks corrupt or was written by an "
                "incompatible qdrant-edge version. Move it aside and re-index, or pass another --data-dir."
            ) from exc

    def _shard_config(self, dim: int) -> Any:
        qe = self._qe
        quant = (
            qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99) if self.quantization else None
        )
        return qe.EdgeConfig(
            vectors={VECTOR_NAME: qe.EdgeVectorParams(size=int(dim), distance=qe.Distance.Cosine)},
            hnsw_config=qe.HnswIndexConfig(
                m=self.hnsw_m, ef_construct=self.ef_construct, full_scan_threshold=FULL_SCAN_THRESHOLD_KB
            ),
            quantization_config=quant,
            max_search_threads=self.max_search_threads,
        )

    def _stored_dim(self) -> int | None:
        """Vector size from the shard's own config (for shards without meta.json)."""
        try:
            cfg = json.loads((self.shard_dir / "edge_config.json").read_text(encoding="utf-8"))
            return int(cfg["vectors"][VECTOR_NAME]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def ensure_collection(self, dim: int, model_id: str, keyword_fields: Sequence[str] = ()) -> None:
        qe = self._qe
        with self._gate.exclusive():
            self._check_open()
            if self._shard is None:
                meta = _meta_record(model_id, dim)
                self._create_shard(dim)
                # Only now: a failed create must leave the previous meta.json as it was.
                _write_json_atomic(self.meta_path, meta)
                self._meta = meta
            elif self._meta is None:  # a shard without our meta: adopt it if it fits
                stored_dim = self._stored_dim()
                if stored_dim != dim:
                    raise _mismatch(None, stored_dim, model_id, dim)
                self._meta = _meta_record(model_id, dim)
                _write_json_atomic(self.meta_path, self._meta)
            else:
                _check_meta(self._meta, model_id, dim)
            existing = set(self._shard.info().payload_schema)
            wanted = [(f, qe.PayloadSchemaType.Keyword) for f in KEYWORD_FIELDS]
            wanted += [(f, qe.PayloadSchemaType.Float) for f in FLOAT_FIELDS]
            wanted += [(attr_key(f), qe.PayloadSchemaType.Keyword) for f in keyword_fields]
            for field_name, schema in wanted:
                if field_name not in existing:
                    self._shard.update(qe.UpdateOperation.create_field_index(field_name, schema))

    def _create_shard(self, dim: int) -> None:
        """EdgeShard.create; on failure remove what it left half-made (we hold the lock and the
        shard folder was empty, so nothing else is lost) and raise a line for people."""
        existed = self.shard_dir.exists()
        try:
            self._shard = self._qe.EdgeShard.create(str(self.shard_dir), self._shard_config(dim))
        except Exception as exc:
            log.warning("Cannot create the Edge shard %s: %s", self.shard_dir, exc)
            if not existed:
                shutil.rmtree(self.shard_dir, ignore_errors=True)
            raise StoreUnavailableError(
                "Cannot create the index in this data dir (is the disk full or read-only?); "
                "the previous index metadata was kept."
            ) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError("The index has been closed.")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """Shared access for reads and upserts: yields the shard (None before ensure_collection).
        Waits while optimize()/close() hold the store, at most ``busy_timeout_s``."""
        busy = (
            "The index is being optimised (HNSW build after indexing); "
            "searches resume when it finishes. Try again in a minute."
        )
        with self._gate.shared(self.busy_timeout_s, busy):
            self._check_open()
            yield self._shard

    def _writable(self, shard: Any) -> Any:
        if shard is None:
            raise StoreUnavailableError("No index in this data dir yet; index a catalog first.")
        return shard

    @property
    def dim(self) -> int | None:
        return None if self._meta is None else self._meta.get("dim")

    # -- writes ---------------------------------------------------------------------------------

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        qe = self._qe
        for batch in _batches(points, _UPSERT_BATCH):
            edge_points = [
                qe.Point(str(p.id), {VECTOR_NAME: _as_vector(p.vector, self.dim)}, _clean_payload(p.payload))
                for p in batch
            ]
            with self._reading() as shard:  # Edge updates take the shard's own write lock
                self._writable(shard).update(qe.UpdateOperation.upsert_points(edge_points))

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._reading() as shard:
            if shard is not None:
                shard.update(self._qe.UpdateOperation.delete_points([str(i) for i in ids]))

    def optimize(self) -> None:
        """Build the HNSW graph / merge segments now; blocks until done.

        qdrant-edge 0.9 holds the GIL for the whole of ``EdgeShard.optimize()`` (minutes at 100k
        points), which would freeze every thread of this process, the web UI included. So by
        default the shard is closed, optimised by a child Python process, and re-opened; reads
        meanwhile wait (up to ``busy_timeout_s``, then StoreUnavailableError). If the child cannot
        run, it falls back to optimising in-process. ``optimize_in_subprocess=None`` (default) uses
        the child only when there is enough data for an HNSW build (small shards only merge
        segments, which is quick); True/False force it on/off.
        """
        with self._gate.exclusive():
            if self._shard is None or self._closed:
                return
            if not self._optimize_out_of_process():
                self._shard.optimize()
                self._shard.flush()
                return
            self._shard.flush()
            self._shard.close()
            self._shard = None
            try:
                done = subprocess.run(
                    [sys.executable, "-c", _OPTIMIZE_SCRIPT, str(self.shard_dir)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
            finally:
                self._shard = self._load_shard()
            if done.returncode != 0:  # e.g. a frozen app without a usable interpreter
                self._shard.optimize()
                self._shard.flush()

    def _optimize_out_of_process(self) -> bool:
        if not sys.executable or self.optimize_in_subprocess is False:
            return False
        if self.optimize_in_subprocess:
            return True
        vector_kb = self._shard.info().points_count * (self.dim or 0) * 4 / 1024
        return vector_kb >= INDEXING_THRESHOLD_KB

    # -- reads ----------------------------------------------------------------------------------

    def _search_params(self) -> Any:
        qe = self._qe
        quant = (
            qe.QuantizationSearchParams(rescore=True, oversampling=QUANTIZATION_OVERSAMPLING)
            if self.quantization
            else None
        )
        return qe.SearchParams(hnsw_ef=self.hnsw_ef, quantization=quant)

    def _query(
        self, shard: Any, vector: np.ndarray, top_k: int, filt: Any, score_threshold: float | None
    ) -> list[Hit]:
        qe = self._qe
        request = qe.QueryRequest(
            limit=int(top_k),
            query=qe.Query.Nearest(vector, using=VECTOR_NAME),
            filter=filt,
            score_threshold=score_threshold,
            params=self._search_params(),
            with_payload=True,
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in shard.query(request)]

    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        filters: SearchFilters | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        query = _as_vector(vector, self.dim)
        filt = _edge_filter(filters)
        with self._reading() as shard:
            if top_k <= 0 or shard is None:
                return []
            return self._query(shard, query, top_k, filt, score_threshold)

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
        # qdrant-edge 0.9 recommends from vectors, not ids, and only best_score/sum_scores:
        # fetch the examples and apply average_vector ourselves, excluding them like Qdrant does.
        extra = _extra_vectors(extra_positive, self.dim)
        with self._reading() as shard:
            if top_k <= 0 or shard is None:
                return []
            examples = [*positive_ids, *negative_ids]
            vectors = self._vectors(shard, examples) if examples else {}
            positives = [vectors[i] for i in map(str, positive_ids) if i in vectors] + extra
            negatives = [vectors[i] for i in map(str, negative_ids) if i in vectors]
            if not positives:
                return []
            query = _average_vector_query(positives, negatives).astype(np.float32)
            exclude = sorted({str(i) for i in (*positive_ids, *negative_ids)})
            return self._query(shard, query, top_k, _edge_filter(filters, exclude), score_threshold)

    @staticmethod
    def _vectors(shard: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
        records = shard.retrieve([str(i) for i in ids], False, [VECTOR_NAME])
        return {str(r.id): np.asarray(r.vector[VECTOR_NAME], dtype=np.float32) for r in records}

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self._reading() as shard:
            if not ids or shard is None:
                return {}
            return self._vectors(shard, ids)

    def scroll(self) -> Iterator[Hit]:
        offset: Any = None
        while True:
            with self._reading() as shard:  # per page, so optimize/close are never starved
                if shard is None:
                    return
                request = self._qe.ScrollRequest(
                    offset=offset, limit=_SCROLL_PAGE, with_payload=True, with_vector=False
                )
                records, offset = shard.scroll(request)
            for r in records:
                yield Hit(str(r.id), 0.0, dict(r.payload or {}))
            if offset is None or not records:
                return

    def count(self, filters: SearchFilters | None = None) -> int:
        with self._reading() as shard:
            if shard is None:
                return 0
            return int(shard.count(self._qe.CountRequest(exact=True, filter=_edge_filter(filters))))

    def facet(self, key: str, limit: int = 100) -> dict[str, int]:
        with self._reading() as shard:
            if shard is None:
                return {}
            schema = shard.info().payload_schema
            if key in schema and schema[key].data_type == self._qe.PayloadSchemaType.Keyword:
                response = shard.facet(self._qe.FacetRequest(key=key, limit=int(limit), exact=True))
                return _top(((h.value, h.count) for h in response.hits), limit)
        return _facet_from_payloads((h.payload for h in self.scroll()), key, limit)  # no index: read all

    def index_model(self) -> tuple[str | None, int | None]:
        meta = self._meta or {}
        return meta.get("model_id"), meta.get("dim")

    def info(self) -> CollectionInfo:
        meta = self._meta or {}
        return CollectionInfo(
            backend=self.backend,
            location=str(self.directory),
            model_id=meta.get("model_id"),
            dim=meta.get("dim"),
            points=self.count() if not self._closed else 0,
        )

    def close(self) -> None:
        with self._gate.exclusive():
            if self._closed:
                return
            self._closed = True
            shard, self._shard = self._shard, None
            try:
                if shard is not None:
                    with contextlib.suppress(Exception):
                        shard.flush()
                    shard.close()
            finally:
                if self._dir_lock is not None:
                    self._dir_lock.release()


# ---------------------------------------------------------------------------------------------
# Remote Qdrant (qdrant-client)
# ---------------------------------------------------------------------------------------------


def _client_filter(filters: SearchFilters | None, exclude_ids: Sequence[str] = ()) -> Any:
    """SearchFilters (+ ids to leave out) as a ``qdrant_client.models.Filter``; None when unrestricted."""
    from qdrant_client import models as qm

    must: list[Any] = []
    for cond in _filter_conditions(filters):
        if isinstance(cond, _AnyOf):
            must.append(qm.FieldCondition(key=cond.key, match=qm.MatchAny(any=list(cond.values))))
        else:
            must.append(qm.FieldCondition(key=cond.key, range=qm.Range(gte=cond.gte, lte=cond.lte)))
    must_not = [qm.HasIdCondition(has_id=list(exclude_ids))] if exclude_ids else []
    if not must and not must_not:
        return None
    return qm.Filter(must=must or None, must_not=must_not or None)


def _connection_reason(exc: BaseException) -> str:
    source = getattr(exc, "source", None) or exc.__cause__ or exc
    text = str(source) or type(source).__name__
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if (
        "name or service not known" in lowered
        or "nodename nor servname" in lowered
        or "getaddrinfo" in lowered
    ):
        return "host name not found"
    if "timed out" in lowered or "timeout" in type(source).__name__.lower():
        return "timed out"
    return text


class RemoteStore(VectorStore):
    """A collection on a Qdrant server (``url`` + ``api_key``) or on an injected client.

    Construction probes the server once (``get_collections``) and raises StoreUnavailableError with
    a message for people when it cannot be reached or refuses the API key.
    """

    backend = "qdrant-remote"

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        timeout: float = 5.0,
        hnsw_ef: int = DEFAULT_HNSW_EF,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construct: int = DEFAULT_EF_CONSTRUCT,
        client: Any = None,
    ) -> None:
        from qdrant_client import QdrantClient
        from qdrant_client import models as qm

        self._qm = qm
        self.collection = collection
        self.hnsw_ef = int(hnsw_ef)
        self.hnsw_m = int(hnsw_m)
        self.ef_construct = int(ef_construct)
        self._meta: dict[str, Any] | None = None
        if client is None:
            if not url:
                raise ValueError("RemoteStore needs a url or a client")
            if url == ":memory:":
                client = QdrantClient(location=":memory:")
            else:
                client = QdrantClient(
                    url=url, api_key=api_key, timeout=int(math.ceil(timeout)), check_compatibility=False
                )
        self.location = url or self._describe_client(client)
        self._client = client
        self._local = self._is_local(client)  # in-process: exact search, not thread-safe
        self._lock: Any = threading.RLock() if self._local else contextlib.nullcontext()
        try:
            with self._errors():
                names = {c.name for c in client.get_collections().collections}
                if collection in names:
                    self._meta = self._read_meta()
        except StoreUnavailableError:
            raise
        except Exception as exc:  # e.g. HTTP 404 or HTML from something that is not Qdrant
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreUnavailableError(
                f"{self.location} did not answer like a Qdrant server ({detail}). Check --qdrant-url / "
                "QDRANT_URL (the REST endpoint, usually port 6333)."
            ) from None

    @staticmethod
    def _is_local(client: Any) -> bool:
        try:
            from qdrant_client.local.qdrant_local import QdrantLocal
        except ImportError:  # pragma: no cover
            return False
        return isinstance(getattr(client, "_client", None), QdrantLocal)

    @staticmethod
    def _describe_client(client: Any) -> str:
        inner = getattr(client, "_client", None)
        location = getattr(inner, "location", None) or getattr(inner, "rest_uri", None)
        return f"qdrant-client {location}" if location else "qdrant-client"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn connection/auth failures into one StoreUnavailableError with a message for people."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            with self._lock:
                yield
        except UnexpectedResponse as exc:
            if exc.status_code in (401, 403):
                raise StoreUnavailableError(
                    f"Qdrant at {self.location} refused the API key (HTTP {exc.status_code}). "
                    "Check --qdrant-api-key / QDRANT_API_KEY."
                ) from None
            raise
        except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailableError(
                f"Cannot reach Qdrant at {self.location}: {_connection_reason(exc)}. Check --qdrant-url / "
                "QDRANT_URL, that the server is running and reachable from this machine (HTTP port, "
                "usually 6333), or leave the URL out to use the embedded index."
            ) from None
        except Exception as exc:
            # grpc / httpx errors that escape qdrant-client's wrappers
            name = type(exc).__module__ + "." + type(exc).__name__
            if name.startswith(("httpx.", "httpcore.", "grpc.")):
                raise StoreUnavailableError(
                    f"Cannot reach Qdrant at {self.location}: {_connection_reason(exc)}. Check --qdrant-url / "
                    "QDRANT_URL and that the server is running."
                ) from None
            raise

    def _read_meta(self) -> dict[str, Any] | None:
        info = self._client.get_collection(self.collection)
        meta = dict(info.config.metadata or {})
        if not meta.get("model_id"):
            vectors = info.config.params.vectors
            params = vectors.get(VECTOR_NAME) if isinstance(vectors, dict) else None
            if params is None:
                raise StoreUnavailableError(
                    f"Collection {self.collection!r} at {self.location} was not made by visual search "
                    f"(no {VECTOR_NAME!r} vector). Pass another --collection."
                )
            return {"model_id": None, "dim": int(params.size)}
        return meta

    def ensure_collection(self, dim: int, model_id: str, keyword_fields: Sequence[str] = ()) -> None:
        qm = self._qm
        with self._errors():
            if self._client.collection_exists(self.collection):
                meta = self._read_meta() or {}
                if meta.get("model_id") is None:  # foreign but compatible collection: adopt it
                    if meta.get("dim") != dim:
                        raise _mismatch(None, meta.get("dim"), model_id, dim)
                    meta = _meta_record(model_id, dim)
                    self._client.update_collection(self.collection, metadata=meta)
                _check_meta(meta, model_id, dim)
                self._meta = meta
                existing = set(self._client.get_collection(self.collection).payload_schema or {})
            else:
                meta = _meta_record(model_id, dim)
                self._client.create_collection(
                    self.collection,
                    vectors_config={VECTOR_NAME: qm.VectorParams(size=int(dim), distance=qm.Distance.COSINE)},
                    hnsw_config=qm.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.ef_construct),
                    metadata=meta,
                )
                self._meta = meta
                existing = set()
            wanted = [(f, qm.PayloadSchemaType.KEYWORD) for f in KEYWORD_FIELDS]
            wanted += [(f, qm.PayloadSchemaType.FLOAT) for f in FLOAT_FIELDS]
            wanted += [(attr_key(f), qm.PayloadSchemaType.KEYWORD) for f in keyword_fields]
            with warnings.catch_warnings():  # local mode warns that indexes have no effect there
                warnings.simplefilter("ignore", UserWarning)
                for field_name, schema in wanted:
                    if field_name not in existing:
                        self._client.create_payload_index(self.collection, field_name, schema, wait=True)

    @property
    def dim(self) -> int | None:
        return None if self._meta is None else self._meta.get("dim")

    def _exists(self) -> bool:
        return self._meta is not None or self._client.collection_exists(self.collection)

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        qm = self._qm
        with self._errors():
            for batch in _batches(points, _UPSERT_BATCH):
                structs = [
                    qm.PointStruct(
                        id=str(p.id),
                        vector={VECTOR_NAME: _as_vector(p.vector, self.dim).tolist()},
                        payload=_clean_payload(p.payload),
                    )
                    for p in batch
                ]
                self._client.upsert(self.collection, points=structs, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._errors():
            if self._exists():
                selector = self._qm.PointIdsList(points=[str(i) for i in ids])
                self._client.delete(self.collection, points_selector=selector, wait=True)

    def _query(self, query: Any, top_k: int, filt: Any, score_threshold: float | None) -> list[Hit]:
        response = self._client.query_points(
            self.collection,
            query=query,
            using=VECTOR_NAME,
            limit=int(top_k),
            query_filter=filt,
            score_threshold=score_threshold,
            search_params=None if self._local else self._qm.SearchParams(hnsw_ef=self.hnsw_ef),
            with_payload=True,
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        filters: SearchFilters | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        if top_k <= 0:
            return []
        with self._errors():
            if not self._exists():
                return []
            query = _as_vector(vector, self.dim).tolist()
            return self._query(query, top_k, _client_filter(filters), score_threshold)

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
        qm = self._qm
        if top_k <= 0:
            return []
        with self._errors():
            if not self._exists():
                return []
            extra = [v.tolist() for v in _extra_vectors(extra_positive, self.dim)]
            # Qdrant rejects unknown example ids; ignore them instead (same as EdgeStore).
            wanted = [str(i) for i in (*positive_ids, *negative_ids)]
            found = (
                {str(r.id) for r in self._client.retrieve(self.collection, wanted, with_payload=False)}
                if wanted
                else set()
            )
            positives: list[Any] = [i for i in map(str, positive_ids) if i in found]
            negatives = [i for i in map(str, negative_ids) if i in found]
            if not positives and not extra:
                return []
            query = qm.RecommendQuery(
                recommend=qm.RecommendInput(
                    # raw vectors mix with ids; Qdrant averages them all (average_vector)
                    positive=positives + extra,
                    negative=negatives or None,
                    strategy=qm.RecommendStrategy.AVERAGE_VECTOR,
                )
            )
            # Qdrant leaves out the examples itself; the explicit exclusion also covers unknown ids.
            return self._query(query, top_k, _client_filter(filters, sorted(set(wanted))), score_threshold)

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        with self._errors():
            if not self._exists():
                return {}
            records = self._client.retrieve(
                self.collection, [str(i) for i in ids], with_payload=False, with_vectors=[VECTOR_NAME]
            )
        return {str(r.id): np.asarray(r.vector[VECTOR_NAME], dtype=np.float32) for r in records}

    def scroll(self) -> Iterator[Hit]:
        with self._errors():
            if not self._exists():
                return
        offset: Any = None
        while True:
            with self._errors():
                records, offset = self._client.scroll(
                    self.collection, limit=_SCROLL_PAGE, offset=offset, with_payload=True, with_vectors=False
                )
            for r in records:
                yield Hit(str(r.id), 0.0, dict(r.payload or {}))
            if offset is None or not records:
                return

    def count(self, filters: SearchFilters | None = None) -> int:
        with self._errors():
            if not self._exists():
                return 0
            return int(
                self._client.count(self.collection, count_filter=_client_filter(filters), exact=True).count
            )

    def facet(self, key: str, limit: int = 100) -> dict[str, int]:
        from qdrant_client.http.exceptions import UnexpectedResponse

        with self._errors():
            if not self._exists():
                return {}
            try:
                response = self._client.facet(self.collection, key, limit=int(limit), exact=True)
                return _top(((h.value, h.count) for h in response.hits), limit)
            except UnexpectedResponse as exc:
                if exc.status_code != 400:  # 400: no keyword index on this field -> count ourselves
                    raise
        return _facet_from_payloads((h.payload for h in self.scroll()), key, limit)

    def index_model(self) -> tuple[str | None, int | None]:
        if self._meta is None:  # another process may have created the collection since we opened
            with self._errors():
                if self._client.collection_exists(self.collection):
                    self._meta = self._read_meta()
        meta = self._meta or {}
        return meta.get("model_id"), meta.get("dim")

    def info(self) -> CollectionInfo:
        meta = self._meta or {}
        return CollectionInfo(
            backend=self.backend,
            location=f"{self.location} (collection {self.collection})",
            model_id=meta.get("model_id"),
            dim=meta.get("dim"),
            points=self.count(),
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSpec:
    """Everything a backend factory may need; each backend reads its own fields."""

    data_dir: Path
    qdrant_url: str | None = None
    api_key: str | None = None
    collection: str = DEFAULT_COLLECTION
    hnsw_ef: int = DEFAULT_HNSW_EF


EDGE_SUBDIR = "edge_store"

BACKENDS: dict[str, Callable[[StoreSpec], VectorStore]] = {
    "qdrant-edge": lambda s: EdgeStore(Path(s.data_dir) / EDGE_SUBDIR, hnsw_ef=s.hnsw_ef),
    "qdrant-remote": lambda s: RemoteStore(
        s.qdrant_url, api_key=s.api_key, collection=s.collection, hnsw_ef=s.hnsw_ef
    ),
}


def backend_for(spec: StoreSpec) -> str:
    """A Qdrant URL selects the remote backend; otherwise the embedded one."""
    return "qdrant-remote" if spec.qdrant_url else "qdrant-edge"


def open_store(
    data_dir: Path,
    qdrant_url: str | None,
    api_key: str | None,
    collection: str = DEFAULT_COLLECTION,
    *,
    hnsw_ef: int | None = None,
) -> VectorStore:
    """Open the configured store: remote Qdrant when ``qdrant_url`` is set (``":memory:"`` gives
    an in-process qdrant-client), else Qdrant Edge under ``<data_dir>/edge_store``.

    Raises StoreUnavailableError (unreachable server, bad API key, locked or corrupt directory).
    """
    spec = StoreSpec(
        data_dir=Path(data_dir),
        qdrant_url=qdrant_url or None,
        api_key=api_key or None,
        collection=collection,
        hnsw_ef=DEFAULT_HNSW_EF if hnsw_ef is None else int(hnsw_ef),
    )
    return BACKENDS[backend_for(spec)](spec)
