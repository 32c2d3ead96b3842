"""What every part of the UI shares: options, the session-wide context, widget-value checks,
result cards, user-facing error messages, the per-client search limit and upload clean-up.

No Gradio layout here; handlers in ``tabs/`` and ``api.py`` build on these.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..analytics import SearchLog
from ..core.errors import InvalidQueryError, VisualSearchError
from ..core.types import IMAGE_INDEX, SearchFilters
from ..engine import SearchEngine, SearchResponse
from ..images.fetch import default_policy
from ..images.load import load_image
from ..stats import CatalogStats, StatsCache
from .render import image_url

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
STATIC_DIR = Path(__file__).resolve().parent / "static"
TITLE = "Visual Product Search"
TAGLINE = "Snap it, find it: search the catalog with a photo, a few words, or both."
DEFAULT_TEXT_EXAMPLES = ("blue hoodie", "bottle of orange juice", "vintage camera", "potted cactus")
MAX_TOP_K = 48
API_MAX_TOP_K = 100
CHOICES_LIMIT = 2000
MAX_SEARCHES_PER_CLIENT = 4

# What a handler shows the user as it is (one line, paths taken out): the engine's and the
# filters' validation errors (InvalidQueryError, also a ValueError) and every other VisualSearchError.
USER_ERRORS: tuple[type[Exception], ...] = (VisualSearchError, InvalidQueryError)


def static_text(name: str) -> str:
    """A file of ``ui/static`` (CSS, the JavaScript of the HTML widgets), read at build time."""
    return (STATIC_DIR / name).read_text(encoding="utf-8")


@dataclass
class UIOptions:
    """Everything the two surfaces need besides the engine and the log."""

    import_root: Path = Path("data/imports")
    export_dir: Path | None = None
    currency: str = "$"
    examples: Sequence[Path] | None = None  # default: assets/examples/*.jpg
    text_examples: Sequence[str] = DEFAULT_TEXT_EXAMPLES
    threshold: float | None = None  # default: engine.default_threshold() (calibrated, else per model)
    allow_private_links: bool = False  # the image-link box must not become a probe of our own network
    max_searches_per_client: int = MAX_SEARCHES_PER_CLIENT
    title: str = TITLE
    tagline: str = TAGLINE


# ---------------------------------------------------------------------------- user-facing messages

_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])(?:/[\w.@+~-]+){2,}/?")


def public_message(exc: BaseException | str) -> str:
    """The exception's message with server paths taken out (a shopper must not learn our layout)."""
    text = str(exc)
    for root in {os.getcwd(), tempfile.gettempdir(), str(Path.home())}:
        if root and root != "/":
            text = text.replace(root, "…")
    return _ABSOLUTE_PATH.sub("(a server file)", text)


def internal_error(exc: BaseException) -> str:
    return f"Something went wrong on our side ({type(exc).__name__}). Please try again."


def load_link(url: str, allow_private: bool) -> Image.Image:
    """The one way the UI opens an image link (the Search button, the Load button).

    Every link goes through visual_search.images.fetch (pinned address, redirects re-checked, deadline, byte cap).
    """
    url = (url or "").strip()
    if not url.lower().startswith(("http://", "https://")):
        raise VisualSearchError("The image link must start with http:// or https://.")
    return load_image(url, policy=replace(default_policy(), allow_private=allow_private))


# ---------------------------------------------------------------------------- widget values


def build_filters(
    categories: Sequence[str] | str | None,
    brands: Sequence[str] | str | None,
    min_price: float | None,
    max_price: float | None,
) -> SearchFilters:
    """Filters from widget values. Only the widgets' own conventions live here (an emptied number
    box sends None, NaN or 0: no limit); SearchFilters validates the rest (InvalidQueryError)."""

    def as_tuple(value: Sequence[str] | str | None) -> tuple[str, ...]:
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            value = [value]
        return tuple(str(v).strip() for v in value if str(v).strip())

    def as_price(value: Any) -> Any:
        if value is None or value == "":
            return None
        try:
            price = float(value)
        except (TypeError, ValueError):
            return value  # SearchFilters says what is wrong with it
        return None if math.isnan(price) or price == 0 else price

    return SearchFilters(
        categories=as_tuple(categories),
        brands=as_tuple(brands),
        min_price=as_price(min_price),
        max_price=as_price(max_price),
    )


def threshold_or_none(value: Any) -> float | None:
    """Slider value -> score threshold; 0 (or empty) means no threshold."""
    if value is None or value == "":
        return None
    value = float(value)
    return None if value <= 0 else value


def check_top_k(value: Any, maximum: int) -> int:
    try:
        top_k = int(value)
    except (TypeError, ValueError):
        raise VisualSearchError(f"top_k must be a whole number, not {value!r}.") from None
    if not 1 <= top_k <= maximum:
        raise VisualSearchError(f"top_k must be between 1 and {maximum}, got {top_k}.")
    return top_k


# ---------------------------------------------------------------------------- cards and views


def card_from_result(result: Any) -> dict[str, Any]:
    """ProductResult -> plain dict (what the session state keeps and the renderer/API read)."""
    index = int((getattr(result, "payload", None) or {}).get(IMAGE_INDEX) or 0)
    return {
        "product_id": result.product_id,
        "title": result.title,
        "price": result.price,
        "category": result.category,
        "brand": result.brand,
        "image_url": image_url(result.product_id, result.image, index),
        "score": round(float(result.score), 4),
        "url": result.url,
        "description": result.description,
    }


def view_from_response(resp: SearchResponse, **extra: Any) -> dict[str, Any]:
    view = {
        "mode": resp.mode,
        "text": None,
        "text_weight": resp.text_weight,
        "filters_text": resp.filters.describe(),
        "threshold": resp.score_threshold,
        "top_k": resp.top_k,
        "results": [card_from_result(r) for r in resp.results],
        "notes": list(resp.notes),
        "embed_ms": resp.embed_ms,
        "search_ms": resp.search_ms,
        "total_ms": resp.total_ms,
    }
    view.update(extra)
    return view


# ---------------------------------------------------------------------------- uploads


def upload_path(value: Any) -> str | None:
    """Gradio's path of an uploaded file from a raw (preprocess=False) payload or a filepath."""
    if value is None or isinstance(value, Image.Image):
        return None
    path = value.get("path") if isinstance(value, dict) else value
    return str(path) if path else None


def gradio_cache_dir() -> Path:
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def discard_upload(path: str | None) -> bool:
    """Delete Gradio's cached copy of an upload once it has been answered (photos are not kept).

    Only files inside Gradio's cache folder are touched, never a catalog image or an example.
    """
    if not path:
        return False
    try:
        file = Path(path).resolve()
        cache = gradio_cache_dir()
        if not file.is_relative_to(cache) or not file.is_file():
            return False
        file.unlink()
        folder = file.parent
        if folder != cache and not any(folder.iterdir()):
            folder.rmdir()  # Gradio keeps one hash folder per upload
        return True
    except OSError as exc:
        log.warning("could not delete an upload: %s", exc)
        return False


# ---------------------------------------------------------------------------- per-client limit


class ClientLimiter:
    """At most ``limit`` searches in flight per client, so one client cannot hold every search slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}

    @contextmanager
    def slot(self, client: str) -> Iterator[None]:
        with self._lock:
            if self._running.get(client, 0) >= self.limit:
                raise VisualSearchError(
                    "Too many searches at once from this device; wait for one to finish and try again."
                )
            self._running[client] = self._running.get(client, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._running[client] - 1
                if left:
                    self._running[client] = left
                else:
                    del self._running[client]


def client_key(request: Any) -> str:
    """Who is asking: the connecting address and the Gradio session (a browser tab or API client)."""
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) or "unknown"
    return f"{host}|{getattr(request, 'session_hash', None) or '-'}"


# ---------------------------------------------------------------------------- shared context


@dataclass
class UIContext:
    """The engine, the pilot log and the facts both surfaces show (cached catalog statistics)."""

    engine: SearchEngine
    search_log: SearchLog | None
    options: UIOptions
    examples: list[Path] = field(default_factory=list)
    threshold: float = 0.0
    limiter: ClientLimiter = field(default_factory=lambda: ClientLimiter(MAX_SEARCHES_PER_CLIENT))
    _stats: StatsCache = field(default_factory=StatsCache)

    @classmethod
    def create(cls, engine: SearchEngine, search_log: SearchLog | None, options: UIOptions) -> UIContext:
        examples = (
            list(options.examples)
            if options.examples is not None
            else sorted(ASSETS_DIR.joinpath("examples").glob("*.jpg"))
        )
        threshold = options.threshold if options.threshold is not None else engine.default_threshold()
        return cls(
            engine,
            search_log,
            options,
            examples,
            threshold,
            ClientLimiter(options.max_searches_per_client),
        )

    def stats(self, refresh: bool = False) -> CatalogStats:
        """The catalog view (counts, facets, price bins), cached until the index changes."""
        try:
            return self._stats.get(self.engine.store, refresh=refresh)
        except VisualSearchError as exc:
            log.warning("catalog stats unavailable: %s", exc)
            return CatalogStats()

    def log_search(
        self, view: dict[str, Any], text: str | None, photo: Image.Image | None, session: str | None
    ) -> str | None:
        if self.search_log is None:
            return None
        try:
            return self.search_log.log_search(
                mode=view["mode"],
                query_text=text,
                filters=view["filters_text"],
                top_k=int(view["top_k"]),
                threshold=view["threshold"],
                result_ids=[c["product_id"] for c in view["results"]],
                scores=[c["score"] for c in view["results"]],
                latency_ms=float(view["total_ms"]),
                photo=photo,
                session=session,
            )
        except Exception:  # noqa: BLE001 - analytics must never break a search
            log.exception("could not log a search")
            return None

    def log_feedback(
        self, query_id: str | None, product_id: str, action: str, rank: int | None, session: str | None
    ) -> None:
        if self.search_log is None:
            return
        try:
            self.search_log.log_feedback(
                query_id=query_id, product_id=product_id, action=action, rank=rank or None, session=session
            )
        except Exception:  # noqa: BLE001
            log.exception("could not log feedback")
