"""Search options (result count, score threshold, text weight, photo background mode, object
index), checked in one place.

Every entry point (engine, CLI, API, UI) validates through :func:`check_query_options`, so a bad
value gets the same one-line InvalidQueryError everywhere. It lives in core because the UI and API
check options before they reach the engine, and core imports nothing above it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from .errors import InvalidQueryError

__all__ = [
    "BACKGROUND_MODES",
    "DEFAULT_BACKGROUND",
    "DEFAULT_TEXT_WEIGHT",
    "MAX_SCORE",
    "MAX_TOP_K",
    "MIN_SCORE",
    "QueryOptions",
    "check_query_options",
]

# Largest result list any caller may ask for (the UI and API cap lower); bounds the widening query.
MAX_TOP_K = 1000
# Scores are cosine similarities.
MIN_SCORE, MAX_SCORE = -1.0, 1.0
DEFAULT_TEXT_WEIGHT = 0.5
# How a photo is searched (query_views): "auto" = object-aware views fused, "off" = the whole photo,
# "on" = the background-removed cut-out. Must equal query_views.MODES (tests/test_security_validation.py
# checks it); core cannot import query_views.
BACKGROUND_MODES = ("auto", "off", "on")
DEFAULT_BACKGROUND = "auto"


@dataclass(frozen=True)
class QueryOptions:
    """Checked search options; built by check_query_options, the one place they are validated."""

    top_k: int
    score_threshold: float | None
    text_weight: float
    background: str = DEFAULT_BACKGROUND
    box_index: int | None = None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise InvalidQueryError(f"{what} must be a number, not {value!r}.")
    try:
        number = float(value)
    except ValueError:
        raise InvalidQueryError(f"{what} must be a number, not {value!r}.") from None
    if not math.isfinite(number):
        raise InvalidQueryError(f"{what} must be a finite number, not {number}.")
    return number


def check_query_options(
    top_k: Any = 12,
    score_threshold: Any = None,
    text_weight: Any = DEFAULT_TEXT_WEIGHT,
    *,
    max_top_k: int = MAX_TOP_K,
    background: Any = None,
    box_index: Any = None,
) -> QueryOptions:
    """Validate top_k (whole, 1..max_top_k), the score threshold (finite, within the cosine range
    -1..1, None for none), the text weight (finite, 0..1, None for the default), the photo's
    background mode (auto/off/on, None for auto) and the object index (whole, >= 0, None for the
    first object).

    Raises InvalidQueryError with a one-line message; the CLI, API and UI show it unchanged, so
    keep the wording stable.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (numbers.Real, str)):
        raise InvalidQueryError(f"top_k must be a whole number, not {top_k!r}.")
    try:
        k_float = float(top_k)
    except ValueError:
        raise InvalidQueryError(f"top_k must be a whole number, not {top_k!r}.") from None
    if not math.isfinite(k_float) or not k_float.is_integer():
        raise InvalidQueryError(f"top_k must be a whole number, not {top_k!r}.")
    k = int(k_float)
    if not 1 <= k <= max_top_k:
        raise InvalidQueryError(f"top_k must be between 1 and {max_top_k}, got {k}.")
    threshold = None
    if score_threshold is not None:
        threshold = _number(score_threshold, "The score threshold")
        if not MIN_SCORE <= threshold <= MAX_SCORE:
            raise InvalidQueryError(
                f"The score threshold must be between {MIN_SCORE:g} and {MAX_SCORE:g} "
                f"(cosine similarity), got {threshold:g}."
            )
    weight = DEFAULT_TEXT_WEIGHT
    if text_weight is not None:
        weight = _number(text_weight, "The text weight")
        if not 0.0 <= weight <= 1.0:
            raise InvalidQueryError(f"The text weight must be between 0 and 1, got {weight:g}.")
    mode = DEFAULT_BACKGROUND
    if background is not None and background != "":
        mode = str(background).strip().lower() if isinstance(background, str) else ""
        if mode not in BACKGROUND_MODES:
            raise InvalidQueryError(
                f"background must be one of {', '.join(BACKGROUND_MODES)}, not {background!r}."
            )
    index = None
    if box_index is not None and box_index != "":
        number = _number(box_index, "The object number")
        if not number.is_integer() or number < 0:
            raise InvalidQueryError(f"The object number must be a whole number from 0, not {box_index!r}.")
        index = int(number)
    return QueryOptions(
        top_k=k, score_threshold=threshold, text_weight=weight, background=mode, box_index=index
    )
