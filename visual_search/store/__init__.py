"""Vector store: one interface, two Qdrant backends (embedded Qdrant Edge, remote qdrant-client).

This package is the only code that imports Qdrant (lazily, inside the backends).

    base.py     the VectorStore contract, index defaults, shared helpers
    filters.py  the one place a SearchFilters becomes Qdrant conditions
    edge.py     EdgeStore: Qdrant Edge inside this process, persistent under a directory
    locks.py    the data-dir lock and the readers/exclusive gate EdgeStore uses
    remote.py   RemoteStore: a Qdrant server/cluster through qdrant-client
    options.py  RemoteOptions: cluster layout, quantization, uploads (flags and env)
    open_store  picks the backend from the settings (a Qdrant URL selects the remote one)
    saved_index what the embedded index's meta.json says, without opening it (``info``)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.cluster import QUANTIZATION_OVERSAMPLING, RemoteOptions, StoreSettingsError, add_remote_arguments
from ..core.conditions import attr_key
from .base import (
    DEFAULT_COLLECTION,
    DEFAULT_EF_CONSTRUCT,
    DEFAULT_HNSW_EF,
    DEFAULT_HNSW_M,
    DEFAULT_INDEXING_THREADS,
    DEFAULT_QUANTIZATION,
    FULL_SCAN_THRESHOLD_KB,
    INDEXING_THRESHOLD_KB,
    VECTOR_NAME,
    VectorStore,
)
from .edge import IN_USE_MESSAGE, EdgeStore, read_saved_meta
from .remote import RemoteStore

__all__ = [
    "BACKENDS",
    "DEFAULT_COLLECTION",
    "DEFAULT_EF_CONSTRUCT",
    "DEFAULT_HNSW_EF",
    "DEFAULT_HNSW_M",
    "DEFAULT_INDEXING_THREADS",
    "DEFAULT_QUANTIZATION",
    "EDGE_SUBDIR",
    "FULL_SCAN_THRESHOLD_KB",
    "IN_USE_MESSAGE",
    "INDEXING_THRESHOLD_KB",
    "QUANTIZATION_OVERSAMPLING",
    "VECTOR_NAME",
    "EdgeStore",
    "SavedIndex",
    "RemoteOptions",
    "RemoteStore",
    "StoreSettingsError",
    "add_remote_arguments",
    "StoreSpec",
    "VectorStore",
    "attr_key",
    "backend_for",
    "open_store",
    "saved_index",
]


@dataclass(frozen=True)
class StoreSpec:
    """Everything a backend factory may need; each backend reads its own fields."""

    data_dir: Path
    qdrant_url: str | None = None
    api_key: str | None = None
    collection: str = DEFAULT_COLLECTION
    hnsw_ef: int = DEFAULT_HNSW_EF
    remote: RemoteOptions = RemoteOptions()
    indexing_threads: int = DEFAULT_INDEXING_THREADS


EDGE_SUBDIR = "edge_store"

BACKENDS: dict[str, Callable[[StoreSpec], VectorStore]] = {
    "qdrant-edge": lambda s: EdgeStore(
        Path(s.data_dir) / EDGE_SUBDIR, hnsw_ef=s.hnsw_ef, indexing_threads=s.indexing_threads
    ),
    "qdrant-remote": lambda s: RemoteStore(
        s.qdrant_url, api_key=s.api_key, collection=s.collection, hnsw_ef=s.hnsw_ef, options=s.remote
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
    remote: RemoteOptions | None = None,
    indexing_threads: int = DEFAULT_INDEXING_THREADS,
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
        remote=remote or RemoteOptions(),
        indexing_threads=int(indexing_threads),
    )
    return BACKENDS[backend_for(spec)](spec)


@dataclass(frozen=True)
class SavedIndex:
    """What an embedded index says about itself in meta.json, read without opening it."""

    backend: str
    location: str
    model_id: str | None
    dim: int | None
    summary: dict[str, Any] | None  # the catalog view saved at the end of indexing; None once written since


def saved_index(data_dir: Path, qdrant_url: str | None = None) -> SavedIndex | None:
    """The embedded index's meta.json under ``data_dir`` without the data-dir lock or a shard load
    (``info`` beside a running app, in a millisecond at 1M points); None for a remote store (it
    keeps no saved summary) or when there is no index yet."""
    if qdrant_url:
        return None
    directory = Path(data_dir) / EDGE_SUBDIR
    meta = read_saved_meta(directory)
    if meta is None:
        return None
    summary = meta.get(EdgeStore.SUMMARY_KEY)
    dim = meta.get("dim")
    return SavedIndex(
        backend="qdrant-edge",
        location=str(directory),
        model_id=meta.get("model_id"),
        dim=dim if isinstance(dim, int) else None,
        summary=dict(summary) if isinstance(summary, dict) else None,
    )
