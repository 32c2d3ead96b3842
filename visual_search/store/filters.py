"""The one place filters become Qdrant conditions (the neutral ones are in core/conditions.py).

``conditions`` maps a SearchFilters (what a shopper or merchandiser asked for) plus any internal
conditions (``where``: e.g. "first image of a product" for per-product counts, a price bin) onto
library-neutral conditions; ``edge_filter`` and ``client_filter`` only spell those in each
library's types (qdrant-edge, qdrant-client). Qdrant is imported lazily, so importing the store
package never imports Qdrant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.conditions import AnyOf, Condition, TextMatch, conditions
from ..core.types import SearchFilters


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
