"""The one place a SearchFilters becomes Qdrant conditions.

``_filter_conditions`` maps filters onto library-neutral conditions; ``_edge_filter`` and
``_client_filter`` only spell those conditions in each library's types (qdrant-edge,
qdrant-client), imported lazily so importing the store never imports Qdrant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..types import ATTRS_KEY, BRAND, CATEGORY, PRICE, SearchFilters

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
