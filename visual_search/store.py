"""Vector store: one interface, two Qdrant backends (embedded Qdrant Edge, remote qdrant-client).

This is the only module that imports Qdrant. ``filters_to_*`` is the one place a SearchFilters
becomes Qdrant conditions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np

from .types import CollectionInfo, Hit, IndexPoint, SearchFilters


class VectorStore(ABC):
    """Same semantics for every backend; tests/test_store.py runs one contract against each."""

    backend: str

    @abstractmethod
    def ensure_collection(self, dim: int, model_id: str, keyword_fields: Sequence[str] = ()) -> None:
        """Create the collection if missing (cosine, payload indexes on the filterable fields,
        plus ``attrs.<name>`` keyword indexes for ``keyword_fields``). If it exists and was
        built by another model or dim, raise ModelMismatchError."""

    @abstractmethod
    def upsert(self, points: Sequence[IndexPoint]) -> None: ...

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        filters: SearchFilters | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]: ...

    @abstractmethod
    def recommend(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str],
        top_k: int,
        filters: SearchFilters | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """Qdrant recommend (average_vector strategy); the example points themselves are excluded."""

    @abstractmethod
    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def scroll(self) -> Iterator[Hit]:
        """Every point with payload (score 0.0); used for sync, resume and audits."""

    @abstractmethod
    def count(self, filters: SearchFilters | None = None) -> int: ...

    @abstractmethod
    def facet(self, key: str, limit: int = 100) -> dict[str, int]:
        """Value -> number of points, for a keyword payload field."""

    @abstractmethod
    def info(self) -> CollectionInfo: ...

    def close(self) -> None:
        """Release files/connections."""
