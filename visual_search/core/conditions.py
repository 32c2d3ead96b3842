"""Library-neutral search conditions: what a query asks of the payload, before any Qdrant type.

SearchFilters (shopper/merchandiser choices) plus internal conditions (first image of a product, a
price bin) become these; visual_search.store.filters spells them in each Qdrant library's types.
They live in core so the catalog view (stats) can build them without importing a store backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from .types import ATTRS_KEY, BRAND, CATEGORY, PRICE, SearchFilters

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
