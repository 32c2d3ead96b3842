"""The Gradio app: one Blocks definition wiring small functions to the engine.

Three audiences: a product manager demoing (examples, big results, latency on screen), a
merchandiser (filters, scores, Catalog tab with status, charts, import and audit), a shopper on a
phone (camera capture, single column, large touch targets).

The UI talks to the engine only (never Qdrant or torch). Per-browser-session state is a plain dict
in ``gr.State``: the last search (for reset), its query vector (a list of floats, so likes and
dislikes refine that search), the current view, liked and disliked products.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from .. import audit, evaluate, importer
from ..analytics import SearchLog
from ..engine import SearchEngine, SearchResponse
from ..errors import VisualSearchError
from ..images import MAX_BYTES, load_image
from ..types import SearchFilters
from . import render

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
CSS_PATH = Path(__file__).resolve().parent / "style.css"
TITLE = "Visual Product Search"
TAGLINE = "Snap it, find it: search the catalog with a photo, a few words, or both."
DEFAULT_TEXT_EXAMPLES = ("blue hoodie", "bottle of orange juice", "vintage camera", "potted cactus")
MAX_TOP_K = 48
API_MAX_TOP_K = 100
CHOICES_LIMIT = 2000

# Event delegation on the results panel: any element with data-action sends one 'click' event to
# Python with the action, the product id and its rank (the Python side re-validates everything).
RESULTS_JS = """
element.addEventListener('click', (ev) => {
  const el = ev.target.closest('[data-action]');
  if (!el || !element.contains(el)) return;
  ev.preventDefault();
  trigger('click', {action: el.dataset.action || '', product_id: el.dataset.pid || '',
                    rank: Number(el.dataset.rank || 0)});
});
"""


EXAMPLES_JS = """
element.addEventListener('click', (ev) => {
  const el = ev.target.closest('[data-example]');
  if (el && element.contains(el)) trigger('click', {index: Number(el.dataset.example)});
});
"""

# The cropper: a box over the photo, moved and resized with pointer events (mouse and touch);
# 'Use this crop' sends the box as fractions of the photo and Python crops the original.
CROP_JS = """
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const MIN = 0.05;
let drag = null;
const place = (rect, b) => {
  Object.assign(rect.dataset, {x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1});
  rect.style.left = (b.x0 * 100) + '%'; rect.style.top = (b.y0 * 100) + '%';
  rect.style.width = ((b.x1 - b.x0) * 100) + '%'; rect.style.height = ((b.y1 - b.y0) * 100) + '%';
};
const boxOf = (rect) => ({x0: +rect.dataset.x0, y0: +rect.dataset.y0, x1: +rect.dataset.x1, y1: +rect.dataset.y1});
element.addEventListener('pointerdown', (ev) => {
  const stage = element.querySelector('.vs-crop-stage');
  const rect = element.querySelector('.vs-crop-rect');
  if (!stage || !rect || !stage.contains(ev.target)) return;
  const r = stage.getBoundingClientRect();
  const handle = ev.target.closest('[data-h]');
  const mode = handle ? handle.dataset.h : (ev.target.closest('.vs-crop-rect') ? 'move' : 'new');
  drag = {mode, r, box: boxOf(rect), start: {x: clamp((ev.clientX - r.left) / r.width, 0, 1),
                                             y: clamp((ev.clientY - r.top) / r.height, 0, 1)}};
  stage.setPointerCapture(ev.pointerId);
  ev.preventDefault();
});
element.addEventListener('pointermove', (ev) => {
  if (!drag) return;
  const rect = element.querySelector('.vs-crop-rect');
  const {mode, r, start} = drag;
  const x = clamp((ev.clientX - r.left) / r.width, 0, 1), y = clamp((ev.clientY - r.top) / r.height, 0, 1);
  let {x0, y0, x1, y1} = drag.box;
  if (mode === 'move') {
    const w = x1 - x0, h = y1 - y0;
    x0 = clamp(x0 + x - start.x, 0, 1 - w); y0 = clamp(y0 + y - start.y, 0, 1 - h); x1 = x0 + w; y1 = y0 + h;
  } else if (mode === 'new') {
    x0 = Math.min(start.x, x); x1 = Math.max(start.x, x); y0 = Math.min(start.y, y); y1 = Math.max(start.y, y);
  } else {
    if (mode.includes('w')) x0 = clamp(x, 0, x1 - MIN);
    if (mode.includes('e')) x1 = clamp(x, x0 + MIN, 1);
    if (mode.includes('n')) y0 = clamp(y, 0, y1 - MIN);
    if (mode.includes('s')) y1 = clamp(y, y0 + MIN, 1);
  }
  place(rect, {x0, y0, x1, y1});
});
const stop = () => { drag = null; };
element.addEventListener('pointerup', stop);
element.addEventListener('pointercancel', stop);
element.addEventListener('click', (ev) => {
  const button = ev.target.closest('[data-crop]');
  const rect = element.querySelector('.vs-crop-rect');
  if (!button || !rect) return;
  trigger('click', Object.assign({action: button.dataset.crop}, boxOf(rect)));
});
"""


def default_threshold(model_id: str) -> float:
    """A score threshold that suits the model: CLIP text-image matches score ~0.25-0.35, unrelated
    ones ~0.1-0.2, so 0.2 keeps real matches; image-only backbones score higher throughout. Random
    test models get 0 (off), since their scores mean nothing."""
    if model_id.startswith("test:"):
        return 0.0
    if model_id.startswith("timm:"):
        return 0.3
    return 0.2


@dataclass
class UIOptions:
    """Everything build_ui needs besides the engine and the log."""

    import_root: Path = Path("data/imports")
    export_dir: Path | None = None
    currency: str = "$"
    examples: Sequence[Path] | None = None  # default: assets/examples/*.jpg
    text_examples: Sequence[str] = DEFAULT_TEXT_EXAMPLES
    threshold: float | None = None  # default: default_threshold(model)
    log_photos: bool = False
    allow_private_links: bool = False  # the image-link box must not become a probe of our own network
    title: str = TITLE
    tagline: str = TAGLINE
    extra_notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- plain helpers


def check_public_url(url: str) -> None:
    """Refuse links to loopback, private, link-local or reserved addresses (server-side request forgery)."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise VisualSearchError("That image link has no host name.")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        raise VisualSearchError(f"Cannot find the host {host!r} of that image link.") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            raise VisualSearchError(
                f"The image link points at a local or private address ({host}); only public links are "
                "fetched. Download the picture and upload it instead."
            )


def card_from_result(result: Any) -> dict[str, Any]:
    """ProductResult -> plain dict (what gr.State keeps and the renderer/API read)."""
    return {
        "product_id": result.product_id,
        "title": result.title,
        "price": result.price,
        "category": result.category,
        "brand": result.brand,
        "image": result.image,
        "score": round(float(result.score), 4),
        "url": result.url,
        "description": result.description,
    }


def build_filters(
    categories: Sequence[str] | str | None,
    brands: Sequence[str] | str | None,
    min_price: float | None,
    max_price: float | None,
) -> SearchFilters:
    """Filters from widget values; VisualSearchError with a human message for impossible ranges."""

    def as_tuple(value: Sequence[str] | str | None) -> tuple[str, ...]:
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            value = [value]
        return tuple(str(v).strip() for v in value if str(v).strip())

    def as_price(value: Any, label: str) -> float | None:
        if value is None or value == "":
            return None
        try:
            price = float(value)
        except (TypeError, ValueError):
            raise VisualSearchError(f"The {label} price must be a number, not {value!r}.") from None
        if np.isnan(price):
            return None
        if price < 0:
            raise VisualSearchError(f"The {label} price cannot be negative.")
        return price or None  # 0 means 'no limit' (an emptied number box sends 0)

    low, high = as_price(min_price, "minimum"), as_price(max_price, "maximum")
    if low is not None and high is not None and low > high:
        raise VisualSearchError(
            f"The minimum price ({low:g}) is above the maximum ({high:g}); swap them or clear one."
        )
    return SearchFilters(
        categories=as_tuple(categories), brands=as_tuple(brands), min_price=low, max_price=high
    )


def _message(html: str) -> dict[str, Any]:
    """Update for the small message box under the photo: shown only when there is something to say."""
    return gr.update(value=html, visible=bool(html))


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


def photo_image(value: Any) -> Image.Image | None:
    """The photo to search, from the raw ``gr.Image`` payload (the event runs with preprocess=False,
    so Gradio has already checked the file is one of its uploads but has not decoded it): decoding
    here gives load_image's human messages for corrupt, HEIC or oversized photos."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        return None
    return load_image(Path(str(path)))


def price_histogram(
    prices: Sequence[float], currency: str = "$", bins: int = 10
) -> tuple[pd.DataFrame, list[str]]:
    if not prices:
        return pd.DataFrame({"price range": [], "products": []}), []
    values = np.asarray(prices, dtype=float)
    high = float(values.max())
    step = _nice_step(high / bins if high > 0 else 1.0)
    edges = np.arange(0.0, high + step, step)
    if len(edges) < 2:
        edges = np.array([0.0, step])
    counts, edges = np.histogram(values, bins=edges)
    labels = [f"{currency}{edges[i]:,.0f}–{edges[i + 1]:,.0f}" for i in range(len(counts))]
    return pd.DataFrame({"price range": labels, "products": counts.astype(int)}), labels


def _nice_step(raw: float) -> float:
    exponent = np.floor(np.log10(raw))
    base = 10**exponent
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * base:
            return float(m * base)
    return float(10 * base)


def facet_frame(counts: dict[str, int], key: str, limit: int = 20) -> pd.DataFrame:
    items = list(counts.items())[:limit]
    return pd.DataFrame({key: [k for k, _ in items], "products": [int(v) for _, v in items]})


def format_time(stamp: str | None) -> str:
    if not stamp:
        return "never"
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def example_label(path: Path) -> str:
    return path.stem.removeprefix("example_").replace("_", " ").replace("-", " ").capitalize()


# ---------------------------------------------------------------------------- controller


class SearchApp:
    """Handlers for every event; each takes widget values and returns widget values."""

    def __init__(self, engine: SearchEngine, search_log: SearchLog | None, options: UIOptions) -> None:
        self.engine = engine
        self.search_log = search_log
        self.options = options
        self.threshold = (
            options.threshold if options.threshold is not None else default_threshold(engine.encoder.model_id)
        )
        self._stats: audit.CatalogStats | None = None
        self.examples = (
            list(options.examples)
            if options.examples is not None
            else sorted(ASSETS_DIR.joinpath("examples").glob("*.jpg"))
        )

    # ------------------------------------------------------------ catalog facts

    def stats(self, refresh: bool = False) -> audit.CatalogStats:
        if self._stats is None or refresh:
            try:
                self._stats = audit.catalog_stats(self.engine)
            except VisualSearchError as exc:
                log.warning("catalog stats unavailable: %s", exc)
                self._stats = audit.CatalogStats(0, 0, {}, {}, [])
        return self._stats

    def category_choices(self) -> list[tuple[str, str]]:
        return [(f"{c} ({n})", c) for c, n in self.stats().categories.items()][:CHOICES_LIMIT]

    def brand_choices(self) -> list[tuple[str, str]]:
        return [(f"{b} ({n})", b) for b, n in self.stats().brands.items()][:CHOICES_LIMIT]

    def price_info(self) -> str:
        prices = self.stats().prices
        if not prices:
            return "No prices in the catalog."
        cur = self.options.currency
        return f"Catalog prices run from {cur}{min(prices):,.2f} to {cur}{max(prices):,.2f}."

    def product_choices(self) -> list[tuple[str, str]]:
        seen: dict[str, str] = {}
        try:
            for hit in self.engine.store.scroll():
                pid = str(hit.payload.get("product_id"))
                if pid not in seen:
                    seen[pid] = str(hit.payload.get("title") or pid)
                if len(seen) >= CHOICES_LIMIT:
                    break
        except VisualSearchError as exc:
            log.warning("product list unavailable: %s", exc)
        return sorted(((f"{title} · {pid}", pid) for pid, title in seen.items()), key=lambda t: t[0].lower())

    def header_html(self) -> str:
        stats = self.stats()
        facts = [f"{stats.products:,} products", self.engine.encoder.model_id, self.engine.encoder.device]
        return render.header(self.options.title, self.options.tagline, facts)

    # ------------------------------------------------------------ logging

    def _log_search(
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

    def _log_feedback(
        self, state: dict[str, Any], product_id: str, action: str, rank: int | None, session: str | None
    ) -> None:
        if self.search_log is None:
            return
        try:
            self.search_log.log_feedback(
                query_id=state.get("query_id"),
                product_id=product_id,
                action=action,
                rank=rank or None,
                session=session,
            )
        except Exception:  # noqa: BLE001
            log.exception("could not log feedback")

    # ------------------------------------------------------------ search tab

    def _render(self, state: dict[str, Any] | None, error: str | None = None) -> str:
        state = state or {}
        return render.results_view(
            state.get("view"),
            liked=state.get("liked", []),
            disliked=state.get("disliked", []),
            error=error,
            currency=self.options.currency,
            examples_hint=bool(self.examples or self.options.text_examples),
        )

    def search(
        self,
        photo: Any,
        url: str,
        text: str,
        text_weight: float,
        remove_background: bool,
        categories: list[str],
        brands: list[str],
        min_price: float | None,
        max_price: float | None,
        top_k: float,
        threshold: float,
        state: dict[str, Any] | None,
        request: gr.Request,
    ):
        """Search button: photo (else the image link), text, or both. Runs with preprocess=False."""
        hidden = gr.update(visible=False, value=None)
        try:
            image = photo_image(photo)
            url = (url or "").strip()
            if image is None and url:
                if not url.lower().startswith(("http://", "https://")):
                    raise VisualSearchError("The image link must start with http:// or https://.")
                image = load_image(url)
            text = (text or "").strip()
            if image is None and not text:
                raise VisualSearchError(
                    "Add a photo (upload, camera or paste), paste an image link, or type what you are looking for."
                )
            if text and not self.engine.encoder.supports_text:
                raise VisualSearchError(
                    f"The model in use ({self.engine.encoder.model_id}) understands photos only; "
                    "clear the text box and search with a photo."
                )
            filters = build_filters(categories, brands, min_price, max_price)
            top_k = check_top_k(top_k, MAX_TOP_K)
            resp = self.engine.search(
                image=image,
                text=text or None,
                text_weight=float(text_weight if text_weight is not None else 0.5),
                filters=filters,
                top_k=top_k,
                score_threshold=threshold_or_none(threshold),
                remove_background=bool(remove_background) and image is not None,
            )
        except VisualSearchError as exc:
            return self._render(state, str(exc)), hidden, state
        except Exception as exc:  # noqa: BLE001 - a bug must not take the app down
            log.exception("search failed")
            return (
                self._render(
                    state, f"Something went wrong on our side ({type(exc).__name__}). Please try again."
                ),
                hidden,
                state,
            )
        view = view_from_response(resp, text=text or None)
        session = getattr(request, "session_hash", None)
        new_state = {
            "query_id": self._log_search(view, text or None, image, session),
            "base": view,
            "view": view,
            "liked": [],
            "disliked": [],
            # plain floats: the state stays JSON-able and free of numpy/torch types
            "query_vector": None if resp.query_vector is None else [float(x) for x in resp.query_vector],
        }
        preview = hidden
        if resp.background is not None:
            preview = gr.update(visible=True, value=resp.background.preview())
        return self._render(new_state), preview, new_state

    def card_action(
        self,
        categories: list[str],
        brands: list[str],
        min_price: float | None,
        max_price: float | None,
        top_k: float,
        threshold: float,
        state: dict[str, Any] | None,
        evt: gr.EventData,
        request: gr.Request,
    ):
        """A click inside the results panel: more-like-this, like, dislike, or undo one of those."""
        data = getattr(evt, "_data", None) or {}
        action = str(data.get("action") or "")
        product_id = str(data.get("product_id") or "")
        rank = data.get("rank") or None
        session = getattr(request, "session_hash", None)
        state = dict(state or {})
        if action not in {"more", "like", "dislike", "unlike", "undislike", "reset"}:
            return gr.skip(), gr.skip(), state
        if action == "reset":
            return self.reset(state)
        if not state.get("view"):
            return self._render(state, "Search first, then refine the results."), gr.skip(), state
        try:
            filters = build_filters(categories, brands, min_price, max_price)
            top_k = check_top_k(top_k, MAX_TOP_K)
            thr = threshold_or_none(threshold)
            if action == "more":
                self._log_feedback(state, product_id, "click", rank, session)
                card = self._find_card(state, product_id)
                resp = self.engine.more_like_this(
                    product_id, filters=filters, top_k=top_k, score_threshold=thr
                )
                view = view_from_response(
                    resp, anchor_id=product_id, anchor_title=(card or {}).get("title") or product_id
                )
                new_state = {
                    "query_id": self._log_search(view, None, None, session),
                    "base": view,
                    "view": view,
                    "liked": [],
                    "disliked": [],
                }
                return self._render(new_state), gr.update(visible=False, value=None), new_state
            liked = list(state.get("liked", []))
            disliked = list(state.get("disliked", []))
            if action in ("like", "dislike"):
                card = self._find_card(state, product_id)
                if card is None:
                    raise VisualSearchError("That product is no longer in the results; search again.")
                self._log_feedback(state, product_id, action, rank, session)
                liked = [c for c in liked if c["product_id"] != product_id]
                disliked = [c for c in disliked if c["product_id"] != product_id]
                (liked if action == "like" else disliked).append(card)
            elif action == "unlike":
                liked = [c for c in liked if c["product_id"] != product_id]
            else:
                disliked = [c for c in disliked if c["product_id"] != product_id]
            state["liked"], state["disliked"] = liked, disliked
            state["view"] = self._refined_view(state, filters, top_k, thr)
            if state["view"] is not state.get("base"):
                state["query_id"] = self._log_search(state["view"], None, None, session) or state.get(
                    "query_id"
                )
        except VisualSearchError as exc:
            return self._render(state, str(exc)), gr.skip(), state
        except Exception as exc:  # noqa: BLE001
            log.exception("refinement failed")
            return (
                self._render(
                    state, f"Something went wrong on our side ({type(exc).__name__}). Please try again."
                ),
                gr.skip(),
                state,
            )
        return self._render(state), gr.skip(), state

    @staticmethod
    def _find_card(state: dict[str, Any], product_id: str) -> dict[str, Any] | None:
        for key in ("view", "base"):
            for card in (state.get(key) or {}).get("results", []):
                if card["product_id"] == product_id:
                    return card
        for card in [*state.get("liked", []), *state.get("disliked", [])]:
            if card["product_id"] == product_id:
                return card
        return None

    def _refined_view(
        self, state: dict[str, Any], filters: SearchFilters, top_k: int, threshold: float | None
    ) -> dict[str, Any]:
        """Qdrant recommend: liked products are positive examples, disliked ones negative.

        The current search stays in: after a photo/text search its query vector is one more
        positive example (so dislikes alone mean "away from these, still near my query"); after
        'more like this' its product is.
        """
        base = state["base"]
        liked_ids = [c["product_id"] for c in state["liked"]]
        disliked_ids = [c["product_id"] for c in state["disliked"]]
        if not liked_ids and not disliked_ids:
            return base
        positives = list(liked_ids)
        if base.get("anchor_id") and base["anchor_id"] not in disliked_ids:
            positives.insert(0, base["anchor_id"])
        query_vector = state.get("query_vector") or None
        if not positives and query_vector is None:
            raise VisualSearchError("Like at least one product to refine the results, or press Reset.")
        resp = self.engine.recommend(
            positives,
            disliked_ids,
            query_vector=query_vector,
            filters=filters,
            top_k=top_k,
            score_threshold=threshold,
        )
        view = view_from_response(resp)
        view["mode"] = "recommend"
        view["text"] = base.get("text")
        view["anchor_title"] = base.get("anchor_title")
        return view

    def reset(self, state: dict[str, Any] | None):
        """Drop likes/dislikes and show the original results of the last search again."""
        state = dict(state or {})
        if state.get("base"):
            state["view"] = state["base"]
        state["liked"], state["disliked"] = [], []
        return self._render(state), gr.skip(), state

    def clear(self):
        return (
            None,
            "",
            "",
            self._render(None),
            gr.update(visible=False, value=None),
            {},
            gr.update(visible=False),
            "",
        )

    def load_url(self, url: str):
        """'Load' next to the link box: fetch the picture into the photo box (to see it, crop it)."""
        url = (url or "").strip()
        try:
            if not url:
                raise VisualSearchError(
                    "Paste the link of a picture first (it starts with http:// or https://)."
                )
            if not url.lower().startswith(("http://", "https://")):
                raise VisualSearchError("The image link must start with http:// or https://.")
            if not self.options.allow_private_links:
                check_public_url(url)
            image = load_image(url)
        except VisualSearchError as exc:
            return gr.skip(), _message(render.error_box(str(exc)))
        return image, _message("")

    def open_crop(self, photo: Any):
        """'Crop' next to the photo: show the cropper over the current photo (preprocess=False)."""
        try:
            if photo_image(photo) is None:
                raise VisualSearchError("Add a photo first, then crop it.")
        except VisualSearchError as exc:
            return "", gr.update(visible=False), _message(render.error_box(str(exc)))
        path = photo.get("path") if isinstance(photo, dict) else str(photo)
        return render.cropper(path), gr.update(visible=True), _message("")

    def crop_action(self, photo: Any, evt: gr.EventData):
        """The cropper's buttons: 'apply' crops the photo to the box (fractions of its size)."""
        data = getattr(evt, "_data", None) or {}
        if data.get("action") != "apply":
            return gr.skip(), gr.update(visible=False), _message("")
        try:
            image = photo_image(photo)
            if image is None:
                raise VisualSearchError("The photo is gone; add it again, then crop.")
            box = [
                min(max(float(data.get(k, d)), 0.0), 1.0)
                for k, d in (("x0", 0), ("y0", 0), ("x1", 1), ("y1", 1))
            ]
        except (TypeError, ValueError):
            return (
                gr.skip(),
                gr.update(visible=True),
                _message(render.error_box("The crop box was not understood; try again.")),
            )
        except VisualSearchError as exc:
            return gr.skip(), gr.update(visible=False), _message(render.error_box(str(exc)))
        x0, x1 = sorted((box[0], box[2]))
        y0, y1 = sorted((box[1], box[3]))
        w, h = image.size
        left, top, right, bottom = round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)
        if right - left < 8 or bottom - top < 8:
            return (
                gr.skip(),
                gr.update(visible=True),
                _message(render.error_box("The crop is too small; drag a bigger box.")),
            )
        return image.crop((left, top, right, bottom)), gr.update(visible=False), _message("")

    def pick_example(self, evt: gr.EventData):
        """An example photo was tapped: it becomes the photo (text and link cleared), then search runs."""
        try:
            index = int((getattr(evt, "_data", None) or {}).get("index", -1))
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < len(self.examples):
            return gr.skip(), gr.skip(), gr.skip()
        return str(self.examples[index]), "", ""

    def refresh_filters(self):
        cats, brands = self.category_choices(), self.brand_choices()
        return (
            gr.update(choices=cats),
            gr.update(choices=brands),
            f'<div class="vs-dim">{render.esc(self.price_info())} Empty or 0 = no limit.</div>',
            self.header_html(),
        )

    # ------------------------------------------------------------ catalog tab

    def status_html(self) -> str:
        try:
            status = self.engine.status()
        except VisualSearchError as exc:
            return render.error_box(str(exc))
        stats = self.stats()
        store = status.store
        bg = "ready" if self.engine.background_remover.available else "model not installed"
        return render.stat_tiles(
            [
                ("Model", status.model_id),
                ("Device", status.device),
                ("Text search", "yes" if status.supports_text else "no (image-only model)"),
                ("Backend", f"{store.backend}"),
                ("Location", store.location),
                ("Products", f"{status.products:,}"),
                ("Images", f"{store.points:,}"),
                ("Categories", f"{len(stats.categories):,}"),
                ("Last indexed", format_time(status.last_indexed)),
                ("Background removal", bg),
            ]
        )

    def charts(self):
        stats = self.stats()
        prices, labels = price_histogram(stats.prices, self.options.currency)
        return (
            facet_frame(stats.categories, "category"),
            facet_frame(stats.brands, "brand"),
            render.histogram("Price distribution", labels, [int(n) for n in prices["products"]]),
        )

    def refresh_catalog(self):
        self.stats(refresh=True)
        return (self.status_html(), *self.charts(), gr.update(choices=self.product_choices()))

    def import_catalog(self, csv_file: str | None, zip_file: str | None, progress=gr.Progress()):
        def on_progress(done: int, total: int) -> None:
            if total:
                progress((done, total), desc="Embedding images", unit="images")

        try:
            if not csv_file:
                raise VisualSearchError("Choose a catalog CSV (or Parquet) file to import.")
            progress(0, desc="Unpacking upload")
            report = importer.import_catalog(
                self.engine,
                Path(csv_file),
                Path(zip_file) if zip_file else None,
                self.options.import_root,
                progress=on_progress,
            )
        except VisualSearchError as exc:
            result = render.error_box(str(exc))
        except Exception as exc:  # noqa: BLE001
            log.exception("import failed")
            result = render.error_box(f"The import failed ({type(exc).__name__}: {exc}).")
        else:
            ok = report.embedded + report.unchanged + report.payload_updated
            kind = "vs-notice" if ok else "vs-error"
            result = (
                f'<div class="{kind}" role="status"><b>Imported.</b> {render.esc(report.summary())}</div>'
                + render.issues_table([str(i) for i in report.issues])
            )
        self.stats(refresh=True)
        return (result, *self.refresh_catalog(), *self.refresh_filters())

    def duplicates(self, threshold: float, limit: float) -> str:
        try:
            pairs = audit.near_duplicates(self.engine, threshold=float(threshold), limit=int(limit))
        except VisualSearchError as exc:
            return render.error_box(str(exc))
        return render.duplicate_table(pairs, float(threshold))

    def suspects(self, k: float, limit: float) -> str:
        try:
            found = audit.miscategorised(self.engine, k=int(k), limit=int(limit))
        except VisualSearchError as exc:
            return render.error_box(str(exc))
        return render.suspect_table(found)

    def neighbours(self, product_id: str | None, k: float) -> str:
        if not product_id:
            return render.error_box("Pick a product (or type its id) to see its nearest neighbours.")
        try:
            found = audit.neighbours(self.engine, str(product_id).strip(), k=int(k))
        except VisualSearchError as exc:
            return render.error_box(str(exc))
        if not found:
            return render.notice_box("No other product in the index.")
        return render.card_grid(
            [card_from_result(r) for r in found], currency=self.options.currency, actions=False
        )

    def evaluate(self, n: float, remove_background: bool, progress=gr.Progress()) -> str:
        """Synthetic shopper photos of indexed products, searched in the live index (the CLI's table)."""

        def on_progress(done: int, total: int) -> None:
            if total:
                progress(done / total, desc=f"query {done} of {total}")

        try:
            report = evaluate.live_synthetic_eval(
                self.engine, n=int(n), remove_background=bool(remove_background), progress=on_progress
            )
        except VisualSearchError as exc:
            return render.error_box(str(exc))
        return evaluate.format_markdown([report], title="Retrieval evaluation on the live index")

    # ------------------------------------------------------------ analytics tab

    def analytics_html(self) -> str:
        if self.search_log is None:
            return render.notice_box("Analytics logging is off.")
        s = self.search_log.summary()
        by_mode = ", ".join(f"{m}: {n}" for m, n in (s.get("searches_by_mode") or {}).items()) or "–"
        photos = "stored (--log-photos)" if self.search_log.store_photos else "not stored"
        return render.stat_tiles(
            [
                ("Searches", s.get("searches", 0)),
                ("By mode", by_mode),
                ("Latency p50", render.fmt_ms(s.get("latency_p50_ms"))),
                ("Latency p95", render.fmt_ms(s.get("latency_p95_ms"))),
                ("Clicks", s.get("clicks", 0)),
                ("Likes", s.get("likes", 0)),
                ("Dislikes", s.get("dislikes", 0)),
                ("Click-through", f"{100 * float(s.get('click_through_rate') or 0):.0f}%"),
                ("Query photos", photos),
                ("Log file", str(self.search_log.path)),
            ]
        )

    def export_csv(self):
        if self.search_log is None:
            return gr.update(value=None, visible=False), render.error_box("Analytics logging is off.")
        folder = Path(self.options.export_dir or tempfile.mkdtemp(prefix="vs-export-"))
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.search_log.export_csv(folder / f"pilot-log-{stamp}.csv")
        return gr.update(value=str(path), visible=True), self.analytics_html()

    # ------------------------------------------------------------ API (gradio_client)

    def _api_response(self, resp: SearchResponse, text: str | None = None) -> dict[str, Any]:
        results = []
        for rank, r in enumerate(resp.results, start=1):
            card = card_from_result(r)
            card["rank"] = rank
            card["image_url"] = "/" + render.file_url(r.image) if not r.image.startswith("http") else r.image
            results.append(card)
        f = resp.filters
        return {
            "mode": resp.mode,
            "text": text,
            "text_weight": resp.text_weight,
            "filters": {
                "categories": list(f.categories),
                "brands": list(f.brands),
                "min_price": f.min_price,
                "max_price": f.max_price,
                "description": f.describe(),
            },
            "top_k": resp.top_k,
            "score_threshold": resp.score_threshold,
            "latency_ms": {
                "total": round(resp.total_ms, 2),
                "embed": round(resp.embed_ms, 2),
                "search": round(resp.search_ms, 2),
            },
            "notes": list(resp.notes),
            "background_removed_fraction": None
            if resp.background is None
            else round(float(resp.background.removed_fraction), 4),
            "results": results,
        }

    def _api_call(self, fn, text: str | None, photo: Image.Image | None = None, session: str | None = "api"):
        try:
            resp = fn()
        except VisualSearchError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        out = self._api_response(resp, text)
        view = view_from_response(resp)
        self._log_search(view, text, photo, session)
        return out

    def _api_image(self, image: str | None) -> Image.Image:
        if not image:
            raise gr.Error(
                "Send a photo: image=handle_file('photo.jpg') (a path or an http(s) URL).",
                print_exception=False,
            )
        try:
            return load_image(Path(image))
        except VisualSearchError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def _api_common(self, top_k, categories, brands, min_price, max_price, score_threshold):
        try:
            filters = build_filters(categories, brands, min_price, max_price)
            k = check_top_k(top_k, API_MAX_TOP_K)
        except VisualSearchError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        thr = None if score_threshold is None or score_threshold == "" else float(score_threshold)
        return filters, k, thr

    def api_search_image(
        self,
        image: str | None,
        top_k: float = 12,
        categories: list[str] | None = None,
        brands: list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        score_threshold: float | None = None,
        remove_background: bool = False,
    ) -> dict[str, Any]:
        """Products that look like the photo."""
        filters, k, thr = self._api_common(top_k, categories, brands, min_price, max_price, score_threshold)
        photo = self._api_image(image)
        return self._api_call(
            lambda: self.engine.search(
                image=photo,
                filters=filters,
                top_k=k,
                score_threshold=thr,
                remove_background=bool(remove_background),
            ),
            None,
            photo,
        )

    def api_search_text(
        self,
        text: str,
        top_k: float = 12,
        categories: list[str] | None = None,
        brands: list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Products that match a description."""
        filters, k, thr = self._api_common(top_k, categories, brands, min_price, max_price, score_threshold)
        text = (text or "").strip()
        if not text:
            raise gr.Error(
                "The text query is empty; describe the product, e.g. 'red leather handbag'.",
                print_exception=False,
            )
        return self._api_call(
            lambda: self.engine.search(text=text, filters=filters, top_k=k, score_threshold=thr), text
        )

    def api_search_combined(
        self,
        image: str | None,
        text: str,
        text_weight: float = 0.5,
        top_k: float = 12,
        categories: list[str] | None = None,
        brands: list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        score_threshold: float | None = None,
        remove_background: bool = False,
    ) -> dict[str, Any]:
        """Photo + text ('like this, but in blue'); text_weight 0 = photo only, 1 = text only."""
        filters, k, thr = self._api_common(top_k, categories, brands, min_price, max_price, score_threshold)
        text = (text or "").strip()
        if not text:
            raise gr.Error(
                "The text part is empty; use /search_image for a photo alone.", print_exception=False
            )
        try:
            weight = float(text_weight)
        except (TypeError, ValueError):
            raise gr.Error("text_weight must be a number between 0 and 1.", print_exception=False) from None
        if not 0.0 <= weight <= 1.0:
            raise gr.Error(f"text_weight must be between 0 and 1, got {weight:g}.", print_exception=False)
        photo = self._api_image(image)
        return self._api_call(
            lambda: self.engine.search(
                image=photo,
                text=text,
                text_weight=weight,
                filters=filters,
                top_k=k,
                score_threshold=thr,
                remove_background=bool(remove_background),
            ),
            text,
            photo,
        )

    def api_more_like_this(
        self,
        product_id: str,
        top_k: float = 12,
        categories: list[str] | None = None,
        brands: list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Products that look like a catalog product."""
        filters, k, thr = self._api_common(top_k, categories, brands, min_price, max_price, score_threshold)
        pid = (product_id or "").strip()
        if not pid:
            raise gr.Error("Give a product_id from the catalog.", print_exception=False)
        return self._api_call(
            lambda: self.engine.more_like_this(pid, filters=filters, top_k=k, score_threshold=thr), None
        )

    def api_recommend(
        self,
        positive_ids: list[str] | str,
        negative_ids: list[str] | str | None = None,
        top_k: float = 12,
        score_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Qdrant recommend: towards the liked product ids, away from the disliked ones."""

        def ids(value: Any) -> list[str]:
            if value is None or value == "":
                return []
            if isinstance(value, str):
                value = value.split(",")
            if not isinstance(value, list):
                raise gr.Error("Product ids must be a list of strings.", print_exception=False)
            return [str(v).strip() for v in value if str(v).strip()]

        filters, k, thr = self._api_common(top_k, None, None, None, None, score_threshold)
        pos, neg = ids(positive_ids), ids(negative_ids)
        return self._api_call(
            lambda: self.engine.recommend(pos, neg, filters=filters, top_k=k, score_threshold=thr), None
        )


# ---------------------------------------------------------------------------- layout


def build_ui(
    engine: SearchEngine, search_log: SearchLog | None = None, options: UIOptions | None = None
) -> gr.Blocks:
    """The whole app as one Blocks. Launch it with :func:`launch_kwargs` (theme, CSS, allowed paths)."""
    options = options or UIOptions()
    app = SearchApp(engine, search_log, options)
    supports_text = engine.encoder.supports_text

    with gr.Blocks(title=options.title, analytics_enabled=False) as demo:
        state = gr.State({})
        header = gr.HTML(app.header_html(), elem_id="vs-header")

        with gr.Tabs(elem_id="vs-tabs"):
            # ============================================================ Search
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                with gr.Row(equal_height=False, elem_id="search-row"):
                    with gr.Column(scale=2, min_width=300, elem_id="query-col"):
                        gr.HTML(
                            '<div class="vs-step">Photo <span>upload, take one with the camera, or paste; '
                            "then crop it to the item if you like</span></div>"
                        )
                        photo = gr.Image(
                            label="Photo",
                            show_label=False,
                            sources=["upload", "webcam", "clipboard"],
                            type="filepath",
                            image_mode=None,
                            height=300,
                            elem_id="photo",
                        )
                        with gr.Group(visible=False, elem_id="crop-box") as crop_box:
                            cropper = gr.HTML("", js_on_load=CROP_JS, elem_id="cropper")
                        with gr.Row(elem_id="url-row", equal_height=True):
                            url = gr.Textbox(
                                placeholder="…or paste an image link",
                                show_label=False,
                                container=False,
                                scale=4,
                                min_width=240,
                                elem_id="image-url",
                            )
                            load_btn = gr.Button("Load", scale=1, min_width=64, size="md", elem_id="load-url")
                            crop_btn = gr.Button(
                                "✂ Crop", scale=1, min_width=64, size="md", elem_id="crop-btn"
                            )
                        photo_msg = gr.HTML("", visible=False, elem_id="photo-msg")
                        text = gr.Textbox(
                            label="Describe it"
                            if supports_text
                            else "Describe it (not available: image-only model)",
                            placeholder="e.g. yellow hoodie, or with a photo: 'like this but in blue'",
                            interactive=supports_text,
                            lines=1,
                            max_lines=3,
                            elem_id="query-text",
                        )
                        text_weight = gr.Slider(
                            0,
                            1,
                            value=0.5,
                            step=0.05,
                            label="Photo ← → text weight",
                            info="Used when you give both: 0 = photo only, 1 = text only.",
                            visible=supports_text,
                            elem_id="text-weight",
                        )
                        remove_bg = gr.Checkbox(
                            label="Remove the background first (see what was searched)",
                            value=False,
                            elem_id="remove-bg",
                        )
                        with gr.Accordion("Filters & ranking", open=False, elem_id="filters"):
                            categories = gr.Dropdown(
                                choices=app.category_choices(),
                                multiselect=True,
                                label="Category",
                                elem_id="filter-category",
                            )
                            brands = gr.Dropdown(
                                choices=app.brand_choices(),
                                multiselect=True,
                                label="Brand",
                                elem_id="filter-brand",
                            )
                            with gr.Row():
                                min_price = gr.Number(
                                    label="Min price",
                                    value=None,
                                    minimum=0,
                                    min_width=100,
                                    placeholder="no minimum",
                                    elem_id="min-price",
                                )
                                max_price = gr.Number(
                                    label="Max price",
                                    value=None,
                                    minimum=0,
                                    min_width=100,
                                    placeholder="no maximum",
                                    elem_id="max-price",
                                )
                            price_note = gr.HTML(
                                f'<div class="vs-dim">{render.esc(app.price_info())} Empty or 0 = no limit.</div>'
                            )
                            top_k = gr.Slider(
                                1, MAX_TOP_K, value=12, step=1, label="Results (top-k)", elem_id="top-k"
                            )
                            threshold = gr.Slider(
                                0,
                                1,
                                value=app.threshold,
                                step=0.01,
                                label="Score threshold",
                                info=f"Hide weaker matches (cosine similarity); 0 = show all. "
                                f"Default for this model: {app.threshold:.2f}.",
                                elem_id="threshold",
                            )
                        with gr.Row(elem_id="search-buttons"):
                            search_btn = gr.Button("Search", variant="primary", scale=3, elem_id="search-btn")
                            clear_btn = gr.Button("Clear", scale=1, min_width=80, elem_id="clear-btn")
                        if app.examples:
                            example_strip = gr.HTML(
                                render.example_strip([(str(p), example_label(p)) for p in app.examples]),
                                js_on_load=EXAMPLES_JS,
                                elem_id="example-photos",
                            )
                        text_buttons = []
                        if supports_text and options.text_examples:
                            gr.HTML('<div class="vs-step">…or an example description</div>')
                            with gr.Row(elem_id="example-texts"):
                                for phrase in options.text_examples:
                                    text_buttons.append(gr.Button(phrase, size="sm", min_width=60))
                    with gr.Column(scale=3, min_width=300, elem_id="results-col"):
                        with gr.Row(elem_id="results-toolbar"):
                            gr.HTML('<h2 class="vs-section">Results</h2>')
                            reset_btn = gr.Button(
                                "↺ Reset likes", size="sm", scale=0, min_width=110, elem_id="reset-btn"
                            )
                        bg_preview = gr.Image(
                            label="Background removal: the photo (left) and exactly what was searched (right)",
                            type="pil",
                            interactive=False,
                            visible=False,
                            height=220,
                            buttons=["fullscreen"],
                            elem_id="bg-preview",
                        )
                        results = gr.HTML(
                            app._render(None), js_on_load=RESULTS_JS, elem_id="results", min_height=200
                        )

            # ============================================================ Catalog
            with gr.Tab("Catalog", id="catalog", elem_id="tab-catalog"):
                with gr.Row():
                    gr.HTML('<h2 class="vs-section">Index status</h2>')
                    refresh_btn = gr.Button(
                        "⟳ Refresh", size="sm", scale=0, min_width=100, elem_id="refresh-catalog"
                    )
                status = gr.HTML(app.status_html(), elem_id="index-status")
                cat_df, brand_df, price_df = app.charts()
                with gr.Row(elem_id="catalog-charts"):
                    cat_plot = gr.BarPlot(
                        cat_df,
                        x="category",
                        y="products",
                        title="Products per category",
                        sort="-y",
                        x_label_angle=-30,
                        height=280,
                        min_width=280,
                        y_lim=[0, None],
                    )
                    brand_plot = gr.BarPlot(
                        brand_df,
                        x="brand",
                        y="products",
                        title="Products per brand (top 20)",
                        sort="-y",
                        x_label_angle=-30,
                        height=280,
                        min_width=280,
                        y_lim=[0, None],
                    )
                # HTML, not gr.BarPlot: Gradio 6.31 does not redraw a plot whose `sort` changes in an
                # update, and price bins must stay in price order as the catalog changes.
                price_plot = gr.HTML(price_df, elem_id="price-histogram")
                with gr.Accordion("Import a catalog", open=True, elem_id="import"):
                    gr.Markdown(
                        "A CSV (or Parquet) with `product_id`, `image` and optional `title`, `category`, `brand`, "
                        "`price`, `description`, `url` columns; `image` holds paths relative to the zip (or http links). "
                        "Re-importing the same products updates them; bad rows are skipped and listed."
                    )
                    with gr.Row():
                        csv_file = gr.File(
                            label="Catalog CSV / Parquet",
                            file_types=[".csv", ".tsv", ".parquet"],
                            type="filepath",
                            elem_id="import-csv",
                        )
                        zip_file = gr.File(
                            label="Images (.zip, optional)",
                            file_types=[".zip"],
                            type="filepath",
                            elem_id="import-zip",
                        )
                    import_btn = gr.Button("Import and index", variant="primary", elem_id="import-btn")
                    import_report = gr.HTML("", elem_id="import-report")
                with gr.Accordion("Catalog audit", open=True, elem_id="audit"):
                    with gr.Tabs():
                        with gr.Tab("Near-duplicates"):
                            with gr.Row():
                                dup_threshold = gr.Slider(
                                    0.5, 1.0, value=0.92, step=0.01, label="Similarity ≥"
                                )
                                dup_limit = gr.Slider(5, 200, value=50, step=5, label="Show at most")
                            dup_btn = gr.Button("Find near-duplicate products", elem_id="dup-btn")
                            dup_out = gr.HTML("", elem_id="dup-out")
                        with gr.Tab("Likely miscategorised"):
                            with gr.Row():
                                mis_k = gr.Slider(3, 20, value=5, step=1, label="Neighbours to consult")
                                mis_limit = gr.Slider(5, 200, value=50, step=5, label="Show at most")
                            mis_btn = gr.Button(
                                "Find products filed in the wrong category", elem_id="mis-btn"
                            )
                            mis_out = gr.HTML("", elem_id="mis-out")
                        with gr.Tab("Nearest neighbours"):
                            with gr.Row():
                                product = gr.Dropdown(
                                    choices=app.product_choices(),
                                    label="Product",
                                    allow_custom_value=True,
                                    filterable=True,
                                    scale=3,
                                    elem_id="nn-product",
                                )
                                nn_k = gr.Slider(1, 24, value=8, step=1, label="Neighbours", scale=1)
                            nn_btn = gr.Button("Show nearest neighbours", elem_id="nn-btn")
                            nn_out = gr.HTML("", elem_id="nn-out")
                        with gr.Tab("Retrieval evaluation"):
                            gr.Markdown(
                                "Pastes indexed product photos on cluttered backgrounds (synthetic shopper "
                                "photos) and checks that search finds each product: Recall@1/5/10, MRR, "
                                "nDCG@10, per category, latency. `python -m visual_search evaluate` does "
                                "the same from the command line, with your own query set."
                            )
                            with gr.Row():
                                eval_n = gr.Slider(5, 200, value=30, step=5, label="Synthetic queries")
                                eval_bg = gr.Checkbox(False, label="Remove the background first")
                            eval_btn = gr.Button("Run evaluation", elem_id="eval-btn")
                            eval_out = gr.Markdown("", elem_id="eval-out")

            # ============================================================ Analytics
            with gr.Tab("Pilot analytics", id="analytics", elem_id="tab-analytics"):
                gr.Markdown(
                    "Every search (mode, filters, top results, latency) and every click, like and dislike is "
                    "appended to a local log. Query photos are **not** stored unless the app was started "
                    "with `--log-photos`."
                )
                analytics = gr.HTML(app.analytics_html(), elem_id="analytics-summary")
                with gr.Row():
                    analytics_refresh = gr.Button("⟳ Refresh", elem_id="analytics-refresh")
                    export_btn = gr.Button("Export CSV", variant="primary", elem_id="export-btn")
                export_file = gr.File(
                    label="Pilot log (CSV)", visible=False, interactive=False, elem_id="export-file"
                )

        # ================================================================ events (UI: private)
        filter_inputs = [categories, brands, min_price, max_price, top_k, threshold]
        search_inputs = [photo, url, text, text_weight, remove_bg, *filter_inputs, state]
        search_outputs = [results, bg_preview, state]
        private = {"api_visibility": "private"}
        # preprocess=False: the photo arrives as Gradio's checked upload, undecoded (see photo_image).
        searching = {"scroll_to_output": True, "preprocess": False, **private}

        search_btn.click(app.search, search_inputs, search_outputs, **searching)
        text.submit(app.search, search_inputs, search_outputs, **searching)
        results.click(
            app.card_action, [*filter_inputs, state], search_outputs, show_progress="minimal", **private
        )
        reset_btn.click(app.reset, [state], search_outputs, **private)
        clear_btn.click(
            app.clear, None, [photo, url, text, results, bg_preview, state, crop_box, photo_msg], **private
        )
        load_btn.click(app.load_url, [url], [photo, photo_msg], **private)
        url.submit(app.load_url, [url], [photo, photo_msg], **private)
        crop_btn.click(app.open_crop, [photo], [cropper, crop_box, photo_msg], preprocess=False, **private)
        cropper.click(app.crop_action, [photo], [photo, crop_box, photo_msg], preprocess=False, **private)
        if app.examples:
            example_strip.click(app.pick_example, None, [photo, url, text], **private).then(
                app.search, search_inputs, search_outputs, **searching
            )
        for button in text_buttons:
            button.click(lambda phrase: (None, "", phrase), [button], [photo, url, text], **private).then(
                app.search, search_inputs, search_outputs, **searching
            )

        catalog_outputs = [status, cat_plot, brand_plot, price_plot, product]
        filter_updates = [categories, brands, price_note, header]
        refresh_btn.click(app.refresh_catalog, None, catalog_outputs, **private)
        import_btn.click(
            app.import_catalog,
            [csv_file, zip_file],
            [import_report, *catalog_outputs, *filter_updates],
            concurrency_limit=1,
            concurrency_id="indexing",
            **private,
        )
        dup_btn.click(app.duplicates, [dup_threshold, dup_limit], dup_out, **private)
        mis_btn.click(app.suspects, [mis_k, mis_limit], mis_out, **private)
        nn_btn.click(app.neighbours, [product, nn_k], nn_out, **private)
        eval_btn.click(app.evaluate, [eval_n, eval_bg], eval_out, concurrency_limit=1, **private)
        analytics_refresh.click(app.analytics_html, None, analytics, **private)
        export_btn.click(app.export_csv, None, [export_file, analytics], **private)
        demo.load(app.refresh_filters, None, filter_updates, **private)

        # ================================================================ API (gradio_client)
        _api_endpoints(app)
    return demo


def _api_endpoints(app: SearchApp) -> None:
    """Named, JSON-returning endpoints on hidden components: /search_image, /search_text,
    /search_combined, /more_like_this, /recommend. File inputs go through Gradio's upload checks."""
    with gr.Group(visible=False):
        a_image = gr.File(label="image", type="filepath")
        a_text = gr.Textbox(label="text")
        a_weight = gr.Number(label="text_weight", value=0.5)
        a_top_k = gr.Number(label="top_k", value=12, precision=0)
        a_categories = gr.Dropdown(
            label="categories", multiselect=True, allow_custom_value=True, choices=[], value=[]
        )
        a_brands = gr.Dropdown(
            label="brands", multiselect=True, allow_custom_value=True, choices=[], value=[]
        )
        a_min = gr.Number(label="min_price", value=None)
        a_max = gr.Number(label="max_price", value=None)
        a_threshold = gr.Number(label="score_threshold", value=None)
        a_bg = gr.Checkbox(label="remove_background", value=False)
        a_pid = gr.Textbox(label="product_id")
        a_pos = gr.JSON(label="positive_ids", value=[])
        a_neg = gr.JSON(label="negative_ids", value=[])
        a_out = gr.JSON(label="response")
        trigger = gr.Button(visible=False)
    filters = [a_top_k, a_categories, a_brands, a_min, a_max, a_threshold]
    trigger.click(app.api_search_image, [a_image, *filters, a_bg], a_out, api_name="search_image")
    trigger.click(app.api_search_text, [a_text, *filters], a_out, api_name="search_text")
    trigger.click(
        app.api_search_combined,
        [a_image, a_text, a_weight, *filters, a_bg],
        a_out,
        api_name="search_combined",
    )
    trigger.click(app.api_more_like_this, [a_pid, *filters], a_out, api_name="more_like_this")
    trigger.click(app.api_recommend, [a_pos, a_neg, a_top_k, a_threshold], a_out, api_name="recommend")


# ---------------------------------------------------------------------------- launch helpers


def theme() -> gr.themes.Base:
    """Soft theme, system fonts only (no font downloads: offline demos and privacy in a pilot)."""
    return gr.themes.Soft(
        primary_hue=gr.themes.colors.indigo,
        secondary_hue=gr.themes.colors.pink,
        neutral_hue=gr.themes.colors.slate,
        radius_size=gr.themes.sizes.radius_lg,
        font=["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    )


# Page-frame rules: Gradio prefixes launch(css=...) with its content container, so these go in <head>.
HEAD_STYLE = """<meta name="theme-color" content="#4f46e5">
<style>
.gradio-container { max-width: 1320px !important; margin: 0 auto !important; }
@media (max-width: 640px) {
  .gradio-container .main.app { padding-left: 10px !important; padding-right: 10px !important; }
}
</style>"""


def css() -> str:
    return CSS_PATH.read_text(encoding="utf-8")


def catalog_image_dirs(engine: SearchEngine) -> list[Path]:
    """Folders holding the indexed (local) catalog images, outermost only."""
    dirs: set[Path] = set()
    try:
        for hit in engine.store.scroll():
            source = str(hit.payload.get("image") or "")
            if source and not source.startswith(("http://", "https://")):
                dirs.add(Path(source).resolve().parent)
    except VisualSearchError as exc:
        log.warning("cannot list catalog image folders: %s", exc)
    return _outermost(dirs)


def _outermost(paths: set[Path]) -> list[Path]:
    ordered = sorted(paths, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in ordered:
        if not any(p == k or p.is_relative_to(k) for k in kept):
            kept.append(p)
    return kept


def launch_kwargs(
    engine: SearchEngine,
    *,
    import_root: Path,
    blocked: Sequence[Path] = (),
    extra_allowed: Sequence[Path] = (),
    max_file_size: int = MAX_BYTES,
) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``: theme, CSS, upload cap and the only folders served.

    Gradio serves its own static files and the files it created (uploads, outputs) by itself;
    ``allowed_paths`` adds the catalog image folders, the import folder and ``assets/`` and nothing
    else. ``blocked`` (the analytics log, the index) wins over everything.
    """
    import_root.mkdir(parents=True, exist_ok=True)
    roots = {*catalog_image_dirs(engine), import_root.resolve(), ASSETS_DIR.resolve()}
    roots |= {Path(p).resolve() for p in extra_allowed}
    return {
        "theme": theme(),
        "css": css(),
        "head": HEAD_STYLE,
        "allowed_paths": [str(p) for p in _outermost(roots)],
        "blocked_paths": [str(Path(p).resolve()) for p in blocked],
        "max_file_size": max_file_size,
        "footer_links": ["api"],
    }
