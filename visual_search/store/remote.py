"""Remote Qdrant through qdrant-client: a server/cluster (URL + API key) or an injected client
(e.g. ``QdrantClient(":memory:")`` in tests). The model id and dim live in the collection's own
``metadata``. The HTTP client is thread-safe (httpx); qdrant-client's in-process local mode is
not, so it gets a lock.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import StoreUnavailableError
from ..types import FLOAT_FIELDS, KEYWORD_FIELDS, CollectionInfo, Hit, IndexPoint, SearchFilters
from .base import (
    DATETIME_FIELDS,
    DEFAULT_COLLECTION,
    DEFAULT_EF_CONSTRUCT,
    DEFAULT_HNSW_EF,
    DEFAULT_HNSW_M,
    INTEGER_FIELDS,
    TEXT_FIELDS,
    VECTOR_NAME,
    VectorStore,
    _as_vector,
    _check_meta,
    _clean_payload,
    _extra_vectors,
    _facet_from_payloads,
    _meta_record,
    _mismatch,
    _payload_value,
    _top,
)
from .filters import Condition, attr_key, client_filter
from .options import RemoteOptions

log = logging.getLogger(__name__)


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
        options: RemoteOptions | None = None,
        client: Any = None,
    ) -> None:
        from qdrant_client import QdrantClient
        from qdrant_client import models as qm

        self._qm = qm
        self.collection = collection
        self.hnsw_ef = int(hnsw_ef)
        self.hnsw_m = int(hnsw_m)
        self.ef_construct = int(ef_construct)
        self.options = options or RemoteOptions()
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
                    if self._meta.get("model_id"):
                        self._upgrade_indexes()
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
            else:
                meta = _meta_record(model_id, dim)
                self._client.create_collection(self.collection, **self._collection_config(dim), metadata=meta)
                self._meta = meta
            self._ensure_indexes(keyword_fields)
        self._changed()

    def _collection_config(self, dim: int) -> dict[str, Any]:
        """create_collection's arguments from RemoteOptions (None: the server's default)."""
        qm, opt = self._qm, self.options
        quantization: Any = None
        if opt.quantization == "int8":
            quantization = qm.ScalarQuantization(
                scalar=qm.ScalarQuantizationConfig(
                    type=qm.ScalarType.INT8, quantile=0.99, always_ram=opt.always_ram
                )
            )
        elif opt.quantization == "binary":
            quantization = qm.BinaryQuantization(
                binary=qm.BinaryQuantizationConfig(always_ram=opt.always_ram)
            )
        vector = qm.VectorParams(
            size=int(dim), distance=qm.Distance.COSINE, on_disk=True if opt.on_disk_vectors else None
        )
        return {
            "vectors_config": {VECTOR_NAME: vector},
            "hnsw_config": qm.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.ef_construct),
            "shard_number": opt.shard_number,
            "replication_factor": opt.replication_factor,
            "write_consistency_factor": opt.write_consistency_factor,
            "on_disk_payload": opt.on_disk_payload,
            "quantization_config": quantization,
        }

    def _upgrade_indexes(self) -> None:
        """A collection made before the catalog-view indexes existed gets them once; a read-only
        API key cannot add them, which only makes the catalog view slower (logged)."""
        try:
            self._ensure_indexes(())
        except Exception as exc:  # noqa: BLE001 - a missing index is not worth refusing to open
            log.warning("Cannot add payload indexes to %s: %s", self.collection, exc)

    def _ensure_indexes(self, keyword_fields: Sequence[str]) -> None:
        """Create the payload indexes that are missing (filters, facets, the catalog view)."""
        qm: Any = self._qm
        existing = set(self._client.get_collection(self.collection).payload_schema or {})
        wanted: list[tuple[str, Any]] = [(f, qm.PayloadSchemaType.KEYWORD) for f in KEYWORD_FIELDS]
        wanted += [(f, qm.PayloadSchemaType.FLOAT) for f in FLOAT_FIELDS]
        wanted += [(f, qm.PayloadSchemaType.INTEGER) for f in INTEGER_FIELDS]
        wanted += [(f, qm.PayloadSchemaType.DATETIME) for f in DATETIME_FIELDS]
        # prefix tokens: a picker matches "sho" to "Shoe" while the user is still typing
        title = qm.TextIndexParams(
            type=qm.TextIndexType.TEXT, tokenizer=qm.TokenizerType.PREFIX, lowercase=True, max_token_len=20
        )
        wanted += [(f, title) for f in TEXT_FIELDS]
        wanted += [(attr_key(f), qm.PayloadSchemaType.KEYWORD) for f in keyword_fields]
        with warnings.catch_warnings():  # local mode warns that indexes have no effect there
            warnings.simplefilter("ignore", UserWarning)
            for field_name, schema in wanted:
                if field_name not in existing:
                    self._client.create_payload_index(
                        self.collection, field_name=field_name, field_schema=schema, wait=True
                    )

    @property
    def dim(self) -> int | None:
        return None if self._meta is None else self._meta.get("dim")

    def _exists(self) -> bool:
        return self._meta is not None or self._client.collection_exists(self.collection)

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        """Upload in batches through qdrant-client's ``upload_points``: ``options.upload_parallel``
        processes, each batch retried ``options.upload_retries`` times (a node restarting, a blip)."""
        qm, opt = self._qm, self.options
        structs = [
            qm.PointStruct(
                id=str(p.id),
                vector={VECTOR_NAME: _as_vector(p.vector, self.dim).tolist()},
                payload=_clean_payload(p.payload),
            )
            for p in points
        ]
        if not structs:
            return
        # In-process local mode cannot be shared with worker processes.
        parallel = 1 if self._local else min(opt.upload_parallel, max(1, len(structs) // opt.upload_batch))
        with self._errors():
            self._client.upload_points(
                self.collection,
                points=structs,
                batch_size=opt.upload_batch,
                parallel=parallel,
                max_retries=opt.upload_retries,
                wait=True,
            )
        self._changed()

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._errors():
            if self._exists():
                selector = self._qm.PointIdsList(points=[str(i) for i in ids])
                self._client.delete(self.collection, points_selector=selector, wait=True)
        self._changed()

    def search_params(self) -> Any:
        """Query-time knobs: the HNSW beam, and with quantization a rescore of
        ``k * oversampling`` candidates by the original vectors (recall close to unquantized)."""
        qm = self._qm
        quant = None
        if self.options.quantization != "none":
            quant = qm.QuantizationSearchParams(rescore=True, oversampling=self.options.oversampling)
        return qm.SearchParams(hnsw_ef=self.hnsw_ef, quantization=quant)

    def _query(self, query: Any, top_k: int, filt: Any, score_threshold: float | None) -> list[Hit]:
        response = self._client.query_points(
            self.collection,
            query=query,
            using=VECTOR_NAME,
            limit=int(top_k),
            query_filter=filt,
            score_threshold=score_threshold,
            search_params=None if self._local else self.search_params(),
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
            return self._query(query, top_k, client_filter(filters), score_threshold)

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
            return self._query(query, top_k, client_filter(filters, sorted(set(wanted))), score_threshold)

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

    def page(
        self, limit: int, offset: Any = None, *, where: Sequence[Condition] = ()
    ) -> tuple[list[Hit], Any]:
        with self._errors():
            if limit <= 0 or not self._exists():
                return [], None
            records, next_offset = self._client.scroll(
                self.collection,
                scroll_filter=client_filter(where=where),
                limit=int(limit),
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
        return [Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records], next_offset

    def count(self, filters: SearchFilters | None = None, *, where: Sequence[Condition] = ()) -> int:
        with self._errors():
            if not self._exists():
                return 0
            filt = client_filter(filters, where=where)
            return int(self._client.count(self.collection, count_filter=filt, exact=True).count)

    def facet(self, key: str, limit: int = 100, *, where: Sequence[Condition] = ()) -> dict[str, int]:
        from qdrant_client.http.exceptions import UnexpectedResponse

        with self._errors():
            if not self._exists():
                return {}
            try:
                response = self._client.facet(
                    self.collection,
                    key,
                    facet_filter=client_filter(where=where),
                    limit=int(limit),
                    exact=True,
                )
                return _top(((h.value, h.count) for h in response.hits), limit)
            except UnexpectedResponse as exc:
                if exc.status_code != 400:  # 400: no keyword index on this field -> count ourselves
                    raise
        return _facet_from_payloads((h.payload for h in self.scroll(where=where)), key, limit)

    def extreme(self, key: str, *, largest: bool = False, where: Sequence[Condition] = ()) -> Any:
        from qdrant_client.http.exceptions import UnexpectedResponse

        qm = self._qm
        direction = qm.Direction.DESC if largest else qm.Direction.ASC
        with self._errors():
            if not self._exists():
                return None
            try:
                records, _ = self._client.scroll(
                    self.collection,
                    scroll_filter=client_filter(where=where),
                    limit=1,
                    order_by=qm.OrderBy(key=key, direction=direction),
                    with_payload=[key],
                    with_vectors=False,
                )
            except UnexpectedResponse as exc:
                if exc.status_code != 400:  # 400: no range index on this field (an older collection)
                    raise
                log.warning("No range index on %s in %s; cannot order by it", key, self.collection)
                return None
        return _payload_value(records[0].payload, key) if records else None

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
