"""Qdrant Edge (the Rust engine inside this process), persistent under a directory::

    <directory>/shard/      the Edge shard (owned by qdrant-edge, never touch)
    <directory>/meta.json   {"model_id": ..., "dim": ..., "vector": "image", ...}
    <directory>/lock        fcntl.flock'ed by the one process that has the store open

meta.json is written atomically (temp file + fsync + rename) and only *after* the shard was
created, so a failed create leaves the previous meta.json untouched. A crash between the two
leaves a shard without meta, which the next ensure_collection adopts (dimension checked).

The lock is taken when the store is opened and held until close(): one process (the app, or one
CLI command) owns a data dir at a time; any other gets "in use by another process (pid N)".
Read-only commands (``search``, ``info --open-index``) take it too: qdrant-edge locks the shard on
load anyway, so reading it beside a running app is impossible, and an unlocked read of a shard being
created would see half a store. Plain ``info`` reads meta.json only (``read_saved_meta``: no lock,
no shard), which is safe because meta.json is replaced whole and its summary is dropped before
every write. flock is released by the kernel when the holder dies (kill -9 included), so a
stale lock file never blocks a restart.

Threads: Qdrant Edge is safe to call from several threads at once (checked with 3 query threads +
1 writer); queries release the GIL, updates hold it briefly (~20 ms per 512-point batch).
``EdgeShard.optimize()`` holds the GIL for the whole HNSW build (minutes at 100k points), which
would freeze the whole process, web UI included, so EdgeStore.optimize() runs it in a child
process while the shard is closed. A small readers/exclusive gate keeps reads off the shard while
it is created, optimised or closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cluster import QUANTIZATION_OVERSAMPLING
from ..core.cluster import UPSERT_BATCH as _UPSERT_BATCH
from ..core.conditions import Condition, attr_key
from ..core.errors import StoreUnavailableError
from ..core.types import FLOAT_FIELDS, KEYWORD_FIELDS, CollectionInfo, Hit, IndexPoint, SearchFilters
from .base import (
    DATETIME_FIELDS,
    DEFAULT_EF_CONSTRUCT,
    DEFAULT_HNSW_EF,
    DEFAULT_HNSW_M,
    DEFAULT_INDEXING_THREADS,
    DEFAULT_QUANTIZATION,
    FULL_SCAN_THRESHOLD_KB,
    INDEXING_THRESHOLD_KB,
    INTEGER_FIELDS,
    TEXT_FIELDS,
    VECTOR_NAME,
    VectorStore,
    _as_vector,
    _average_vector_query,
    _batches,
    _check_meta,
    _clean_payload,
    _extra_vectors,
    _facet_from_payloads,
    _meta_record,
    _mismatch,
    _payload_value,
    _top,
    _write_json_atomic,
)
from .filters import edge_filter
from .locks import IN_USE_MESSAGE, _DirLock, _Gate

log = logging.getLogger(__name__)


_OPTIMIZE_SCRIPT = """
import json, sys, qdrant_edge as qe
path, override = sys.argv[1], json.loads(sys.argv[2])
config = None
if override:
    hnsw = qe.HnswIndexConfig(
        m=override["m"],
        ef_construct=override["ef_construct"],
        full_scan_threshold=override["full_scan_threshold"],
        max_indexing_threads=override["threads"],
    )
    vectors = {override["name"]: qe.EdgeVectorParams(size=override["dim"], distance=qe.Distance.Cosine)}
    config = qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw)
s = qe.EdgeShard.load(path, config) if config else qe.EdgeShard.load(path)
s.optimize(); s.flush(); s.close()
"""


def _load_meta(path: Path) -> dict[str, Any] | None:
    meta = json.loads(path.read_text(encoding="utf-8"))
    return meta if isinstance(meta, dict) else None


def read_saved_meta(directory: Path | str) -> dict[str, Any] | None:
    """meta.json of the index under ``directory`` as it is now, or None (no index, no shard, no
    or unreadable meta). Takes no lock and loads no shard, so it answers in a millisecond at any
    size and beside a running app: meta.json is only ever replaced whole (temp file + rename), so
    a reader sees either the old or the new version, never half of one. Whatever ``summary`` it
    holds is current: EdgeStore drops the summary from meta.json before every write lands."""
    directory = Path(directory)
    shard_dir = directory / "shard"
    try:
        if not (shard_dir.is_dir() and any(shard_dir.iterdir())):
            return None  # EdgeStore would treat this data dir as empty, whatever meta.json says
        return _load_meta(directory / "meta.json")
    except (OSError, ValueError):
        return None


class EdgeStore(VectorStore):
    """Embedded Qdrant Edge shard under ``directory`` (see the module docstring for the layout).

    ``hnsw_ef`` is the search-time beam width (recall/latency knob); ``hnsw_m`` and
    ``ef_construct`` shape the graph and apply when the shard is created. ``quantization=True``
    stores an int8 scalar-quantized copy and searches it with rescoring (less RAM bandwidth).
    ``indexing_threads`` caps the HNSW build's threads (0: Qdrant picks, all cores); it applies at
    every optimize(), also to shards created with another value.
    """

    backend = "qdrant-edge"
    exclusive = True  # the data-dir lock makes this object the only writer
    SUMMARY_KEY = "summary"

    def __init__(
        self,
        directory: Path | str,
        *,
        hnsw_ef: int = DEFAULT_HNSW_EF,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construct: int = DEFAULT_EF_CONSTRUCT,
        quantization: bool = DEFAULT_QUANTIZATION,
        max_search_threads: int | None = None,
        indexing_threads: int = DEFAULT_INDEXING_THREADS,
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
        if int(indexing_threads) < 0:
            raise ValueError(f"indexing_threads must be 0 (all cores) or more, not {indexing_threads}")
        self.indexing_threads = int(indexing_threads)
        self.optimize_in_subprocess = optimize_in_subprocess
        self.busy_timeout_s = busy_timeout_s
        self._gate = _Gate()
        self._shard: Any = None
        self._closed = False
        self._meta: dict[str, Any] | None = None
        self._summary_lock = threading.Lock()
        self._dir_lock: _DirLock | None = None
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreUnavailableError("Cannot open the index: its data dir is a file, not a directory.")
        self._dir_lock = _DirLock(self.directory)
        try:
            if self._shard_exists():
                self._meta = self._read_meta()
                self._shard = self._load_shard()
                if self._meta is not None:  # an index from before the catalog-view indexes existed
                    self._ensure_indexes(())
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
            meta = _load_meta(self.meta_path)
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
                m=self.hnsw_m,
                ef_construct=self.ef_construct,
                full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
                max_indexing_threads=self.indexing_threads,
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
            self._ensure_indexes(keyword_fields)
            self._changed()

    def _ensure_indexes(self, keyword_fields: Sequence[str]) -> None:
        """Create the payload indexes that are missing (filters, facets, the catalog view).
        Indexing an existing 1M-point shard takes a while once; afterwards this is a dict lookup."""
        qe = self._qe
        existing = set(self._shard.info().payload_schema)
        wanted: list[tuple[str, Any]] = [(f, qe.PayloadSchemaType.Keyword) for f in KEYWORD_FIELDS]
        wanted += [(f, qe.PayloadSchemaType.Float) for f in FLOAT_FIELDS]
        wanted += [(f, qe.PayloadSchemaType.Integer) for f in INTEGER_FIELDS]
        wanted += [(f, qe.PayloadSchemaType.Datetime) for f in DATETIME_FIELDS]
        # prefix tokens: a picker matches "sho" to "Shoe" while the user is still typing
        title = qe.TextIndexParams(tokenizer=qe.TokenizerType.Prefix, lowercase=True, max_token_len=20)
        wanted += [(f, title) for f in TEXT_FIELDS]
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
            self._changed()
            with self._reading() as shard:  # Edge updates take the shard's own write lock
                self._writable(shard).update(qe.UpdateOperation.upsert_points(edge_points))
            self._changed()

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._changed()
        with self._reading() as shard:
            if shard is not None:
                shard.update(self._qe.UpdateOperation.delete_points([str(i) for i in ids]))
        self._changed()

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
                    [
                        sys.executable,
                        "-c",
                        _OPTIMIZE_SCRIPT,
                        str(self.shard_dir),
                        json.dumps(self._hnsw_override()),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
            finally:
                self._shard = self._load_shard()
            if done.returncode != 0:  # e.g. a frozen app without a usable interpreter
                self._shard.optimize()
                self._shard.flush()

    def _hnsw_override(self) -> dict[str, Any] | None:
        """The shard's own HNSW config (from qdrant-edge's edge_config.json) with this store's
        indexing-thread count; None (keep the stored config) when it cannot be read."""
        try:
            cfg = json.loads((self.shard_dir / "edge_config.json").read_text(encoding="utf-8"))
            hnsw = cfg["hnsw_config"]
            if int(hnsw.get("max_indexing_threads", 0)) == self.indexing_threads:
                return None  # nothing to change
            return {
                "name": VECTOR_NAME,
                "dim": int(cfg["vectors"][VECTOR_NAME]["size"]),
                "m": int(hnsw["m"]),
                "ef_construct": int(hnsw["ef_construct"]),
                "full_scan_threshold": int(hnsw["full_scan_threshold"]),
                "threads": self.indexing_threads,
            }
        except (OSError, ValueError, KeyError, TypeError):
            return None

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
        filt = edge_filter(filters)
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
            return self._query(shard, query, top_k, edge_filter(filters, exclude), score_threshold)

    @staticmethod
    def _vectors(shard: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
        records = shard.retrieve([str(i) for i in ids], False, [VECTOR_NAME])
        return {str(r.id): np.asarray(r.vector[VECTOR_NAME], dtype=np.float32) for r in records}

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self._reading() as shard:
            if not ids or shard is None:
                return {}
            return self._vectors(shard, ids)

    def _changed(self) -> None:
        """Bump the generation and drop the saved summary *before* a write lands (and again
        after), so meta.json never holds a summary of content the shard no longer has, even if
        the process dies mid-write."""
        with self._summary_lock:
            super()._changed()
            if self._meta and self.SUMMARY_KEY in self._meta:
                meta = {k: v for k, v in self._meta.items() if k != self.SUMMARY_KEY}
                _write_json_atomic(self.meta_path, meta)
                self._meta = meta

    def summary(self) -> dict[str, Any] | None:
        saved = (self._meta or {}).get(self.SUMMARY_KEY)
        return dict(saved) if isinstance(saved, dict) else None

    def save_summary(self, data: Mapping[str, Any], generation: int) -> bool:
        """Stored in meta.json (atomically, beside the model id) so ``info`` in a later process
        reads it instead of querying a 1M-point shard."""
        with self._summary_lock:
            if generation != self.generation or self._meta is None or self._closed:
                return False
            meta = {**self._meta, self.SUMMARY_KEY: dict(data)}
            _write_json_atomic(self.meta_path, meta)
            self._meta = meta
            return True

    def page(
        self, limit: int, offset: Any = None, *, where: Sequence[Condition] = ()
    ) -> tuple[list[Hit], Any]:
        filt = edge_filter(where=where)
        with self._reading() as shard:  # per page, so optimize/close are never starved
            if shard is None or limit <= 0:
                return [], None
            request = self._qe.ScrollRequest(
                offset=offset, limit=int(limit), filter=filt, with_payload=True, with_vector=False
            )
            records, next_offset = shard.scroll(request)
        return [Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records], next_offset

    def count(self, filters: SearchFilters | None = None, *, where: Sequence[Condition] = ()) -> int:
        filt = edge_filter(filters, where=where)
        with self._reading() as shard:
            if shard is None:
                return 0
            if filt is None:  # the live point count the shard keeps (deletions included): O(1)
                return int(shard.info().points_count)
            return int(shard.count(self._qe.CountRequest(exact=True, filter=filt)))

    def facet(self, key: str, limit: int = 100, *, where: Sequence[Condition] = ()) -> dict[str, int]:
        filt = edge_filter(where=where)
        with self._reading() as shard:
            if shard is None:
                return {}
            schema = shard.info().payload_schema
            if key in schema and schema[key].data_type == self._qe.PayloadSchemaType.Keyword:
                request = self._qe.FacetRequest(key=key, limit=int(limit), exact=True, filter=filt)
                response = shard.facet(request)
                return _top(((h.value, h.count) for h in response.hits), limit)
        # no keyword index on this field: count by reading the payloads (slow on a big index)
        return _facet_from_payloads((h.payload for h in self.scroll(where=where)), key, limit)

    def extreme(self, key: str, *, largest: bool = False, where: Sequence[Condition] = ()) -> Any:
        qe = self._qe
        filt = edge_filter(where=where)
        direction = qe.Direction.Desc if largest else qe.Direction.Asc
        with self._reading() as shard:
            if shard is None:
                return None
            request = qe.ScrollRequest(
                limit=1, filter=filt, with_payload=[key], order_by=qe.OrderBy(key, direction)
            )
            records, _ = shard.scroll(request)
        return _payload_value(records[0].payload, key) if records else None

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
