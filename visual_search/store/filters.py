"""The one place filters become Qdrant conditions.

``conditions`` maps a SearchFilters (what a shopper or merchandiser asked for) plus any internal
conditions (``where``: e.g. "first image of a product" for per-product counts, a price bin) onto
library-neutral conditions; ``edge_filter`` and ``client_filter`` only spell those in each
library's types (qdrant-edge, qdrant-client). Qdrant is imported lazily, so importing the store
package never imports Qdrant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

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
class AnyOf:
    """The field equals one of ``values`` (keyword strings or integers)."""

    key: str
    values: tuple[str | int, ...]


@dataclass(frozen=True)
class Between:
    """A numeric range; ``lt`` (exclusive) lets adjacent histogram bins share an edge."""

    key: str
    gte: float | None = None
    lte: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class TextMatch:
    """Every word of ``text`` occurs in the field (needs a full-text payload index)."""

    key: str
    text: str


Condition = Union[AnyOf, Between, TextMatch]  # noqa: UP007 - a runtime alias, read by isinstance users


def conditions(filters: SearchFilters | None, where: Sequence[Condition] = ()) -> list[Condition]:
    """The one mapping from SearchFilters (+ internal ``where`` conditions) to neutral Qdrant
    conditions, all ANDed."""
    conds: list[Condition] = []
    if filters is not None:
        if filters.categories:
            conds.append(AnyOf(CATEGORY, tuple(str(v) for v in filters.categories)))
        if filters.brands:
            conds.append(AnyOf(BRAND, tuple(str(v) for v in filters.brands)))
        if filters.min_price is not None or filters.max_price is not None:
            conds.append(
                Between(
                    PRICE,
                    gte=None if filters.min_price is None else float(filters.min_price),
                    lte=None if filters.max_price is None else float(filters.max_price),
                )
            )
        for name, values in sorted(filters.attributes.items()):
            if values:
                conds.append(AnyOf(attr_key(name), tuple(str(v) for v in values)))
    conds.extend(where)
    return conds


def edge_filter(
    filters: SearchFilters | None = None, exclude_ids: Sequence[str] = (), where: Sequence[Condition] = ()
) -> Any:
    """Filters (+ ids to leave out) as a ``qdrant_edge.Filter``; None when unrestricted."""
    import qdrant_edge as qe

    must: list[Any] = []
    for cond in conditions(filters, where):
        if isinstance(cond, AnyOf):
            must.append(qe.FieldCondition(key=cond.key, match=qe.MatchAny(list(cond.values))))
        elif isinstance(cond, TextMatch):
            must.append(qe.FieldCondition(key=cond.key, match=qe.MatchText(cond.text)))
        else:
            rng = qe.RangeFloat(gte=cond.gte, lte=cond.lte, lt=cond.lt)
            must.append(qe.FieldCondition(key=cond.key, range=rng))
    must_not = [qe.HasIdCondition(set(exclude_ids))] if exclude_ids else []
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def client_filter(
    filters: SearchFilters | None = None, exclude_ids: Sequence[str] = (), where: Sequence[Condition] = ()
) -> Any:
    """Filters (+ ids to leave out) as a ``qdrant_client.models.Filter``; None when unrestricted."""
    from qdrant_client import models as qm

    must: list[Any] = []
    for cond in conditions(filters, where):
        if isinstance(cond, AnyOf):
            must.append(qm.FieldCondition(key=cond.key, match=qm.MatchAny(any=list(cond.values))))
        elif isinstance(cond, TextMatch):
            must.append(qm.FieldCondition(key=cond.key, match=qm.MatchText(text=cond.text)))
        else:
            rng = qm.Range(gte=cond.gte, lte=cond.lte, lt=cond.lt)
            must.append(qm.FieldCondition(key=cond.key, range=rng))
    must_not = [qm.HasIdCondition(has_id=list(exclude_ids))] if exclude_ids else []
    if not must and not must_not:
        return None
    return qm.Filter(must=must or None, must_not=must_not or None)
