"""Event handlers of the shopper's search (layout in :mod:`.search`). Everything here is on the
public surface, so every handler re-validates its input, answers with a human message, and deletes
an uploaded photo once answered.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ...core.errors import VisualSearchError
from ...core.types import SearchFilters
from ...engine import SearchResponse
from ...images.load import load_image
from .. import render
from ..common import (
    CHOICES_LIMIT,
    MAX_TOP_K,
    USER_ERRORS,
    UIContext,
    build_filters,
    check_top_k,
    client_key,
    discard_upload,
    internal_error,
    load_link,
    public_message,
    threshold_or_none,
    upload_path,
    view_from_response,
)
from ..state import SessionState, as_state

log = logging.getLogger(__name__)

CARD_ACTIONS = {"more", "like", "dislike", "unlike", "undislike", "reset"}
CROP_PREVIEW_SIDE = 1024
VIEW_PREVIEW_SIDE = 256  # the "what was searched" tiles
CHIPS_PHOTO_SIDE = 640  # the photo under the item chips
BACKGROUND_CHOICES = [("Auto", "auto"), ("Off", "off"), ("On", "on")]


def _message(html: str) -> dict[str, Any]:
    """Update for the small message box under the photo: shown only when there is something to say."""
    return gr.update(value=html, visible=bool(html))


def pipeline_facts(resp: SearchResponse) -> dict[str, Any]:
    """What the results header says about a photo search: background mode, views, objects."""
    if resp.pipeline is None:
        return {}
    return {
        "background": resp.pipeline,
        "view_labels": [v.label for v in resp.views],
        "objects": [asdict(o) for o in resp.objects],
        "box_index": resp.box_index,
    }


def example_label(path: Path) -> str:
    return path.stem.removeprefix("example_").replace("_", " ").replace("-", " ").capitalize()


def data_url(image: Image.Image, side: int = CROP_PREVIEW_SIDE) -> str:
    """The photo inlined in the page (cropper, chips, what was searched): no server file has to
    outlive the search."""
    preview = image.convert("RGB")
    preview.thumbnail((side, side))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class SearchHandlers:
    """The search tab's event handlers; each takes widget values and returns widget values."""

    def __init__(self, ctx: UIContext) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------ facts shown on the tab

    def category_choices(self) -> list[tuple[str, str]]:
        return [(f"{c} ({n})", c) for c, n in self.ctx.stats().categories.items()][:CHOICES_LIMIT]

    def brand_choices(self) -> list[tuple[str, str]]:
        return [(f"{b} ({n})", b) for b, n in self.ctx.stats().brands.items()][:CHOICES_LIMIT]

    def price_note(self) -> str:
        stats = self.ctx.stats()
        cur = self.ctx.options.currency
        info = (
            f"Catalog prices run from {cur}{stats.price_min:,.2f} to {cur}{stats.price_max:,.2f}."
            if stats.price_min is not None and stats.price_max is not None
            else "No prices in the catalog."
        )
        return f'<div class="vs-dim">{render.esc(info)} Empty or 0 = no limit.</div>'

    def render(self, state: SessionState | None, error: str | None = None) -> str:
        state = state or SessionState()
        return render.results_view(
            state.view,
            liked=state.liked,
            disliked=state.disliked,
            error=error,
            currency=self.ctx.options.currency,
            examples_hint=bool(self.ctx.examples or self.ctx.options.text_examples),
        )

    def refresh_filters(self):
        return (
            gr.update(choices=self.category_choices()),
            gr.update(choices=self.brand_choices()),
            self.price_note(),
        )

    # ------------------------------------------------------------ the photo

    def photo(self, value: Any, state: SessionState) -> Image.Image | None:
        """The photo to search from Gradio's raw payload (preprocess=False: its upload checks done,
        not decoded), or the same photo kept in the session after its file was deleted."""
        if value is None:
            return None
        if isinstance(value, Image.Image):
            return value
        path = upload_path(value)
        if not path:
            return None
        if path == state.photo_key and state.photo is not None and not Path(path).exists():
            return state.photo
        try:
            return load_image(Path(path))
        except VisualSearchError:
            if not Path(path).exists():
                raise VisualSearchError("The photo is no longer here; add it again.") from None
            raise

    # ------------------------------------------------------------ search

    def search(
        self,
        photo: Any,
        url: str,
        text: str,
        text_weight: float,
        background: str,
        categories: list[str],
        brands: list[str],
        min_price: float | None,
        max_price: float | None,
        top_k: float,
        threshold: float,
        state: SessionState | None,
        request: gr.Request,
    ):
        """Search button: photo (else the image link), text, or both. Runs with preprocess=False.

        A photo goes through the engine's object-aware pipeline with the Background choice
        (auto/off/on); the first (most central sizeable) item is searched, the others become chips.
        """
        state = as_state(state)
        try:
            with self.ctx.limiter.slot(client_key(request)):
                image = self.photo(photo, state)
                if image is not None and image is not state.photo:
                    state = state.copy()
                    state.remember_photo(upload_path(photo), image)  # its file is deleted once answered
                image, text = self._query(image, url, text)
                query = (
                    text,
                    text_weight,
                    background,
                    categories,
                    brands,
                    min_price,
                    max_price,
                    top_k,
                    threshold,
                )
                return self._search(state, image, None, *query, request)
        except USER_ERRORS as exc:
            return self._failed(state, public_message(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not take the app down
            log.exception("search failed")
            return self._failed(state, internal_error(exc))
        finally:
            discard_upload(upload_path(photo))  # photos are not kept (the log keeps its own copy)

    def pick_object(
        self,
        text: str,
        text_weight: float,
        background: str,
        categories: list[str],
        brands: list[str],
        min_price: float | None,
        max_price: float | None,
        top_k: float,
        threshold: float,
        state: SessionState | None,
        evt: gr.EventData,
        request: gr.Request,
    ):
        """A tap on an item chip: search the same photo again for that item (the photo the chips
        were found in, kept in the session; Background Off would ignore the item, so it means Auto)."""
        state = as_state(state)
        try:
            index = int(getattr(evt, "index", -1))
        except (TypeError, ValueError):
            index = -1
        if state.searched_photo is None or not 0 <= index < len(state.objects):
            error = "That item is no longer here; search the photo again."
            return self.render(state, error), gr.skip(), gr.update(visible=False, value=""), state
        mode = background if background in ("auto", "on") else "auto"
        try:
            with self.ctx.limiter.slot(client_key(request)):
                text = (text or "").strip()
                query = (text, text_weight, mode, categories, brands, min_price, max_price, top_k, threshold)
                return self._search(state, state.searched_photo, index, *query, request)
        except USER_ERRORS as exc:
            return self.render(state, public_message(exc)), gr.skip(), gr.skip(), state
        except Exception as exc:  # noqa: BLE001
            log.exception("item search failed")
            return self.render(state, internal_error(exc)), gr.skip(), gr.skip(), state

    def _failed(self, state: SessionState, message: str):
        hidden = gr.update(visible=False, value="")
        return self.render(state, message), hidden, hidden, state

    def _search(
        self,
        state: SessionState,
        image: Image.Image | None,
        box_index: int | None,
        text: str,
        text_weight: float,
        background: str,
        categories: list[str],
        brands: list[str],
        min_price: float | None,
        max_price: float | None,
        top_k: float,
        threshold: float,
        request: gr.Request,
    ):
        """Run one search and build the four outputs: results, what was searched, chips, state."""
        engine = self.ctx.engine
        options = {
            "filters": build_filters(categories, brands, min_price, max_price),
            "top_k": check_top_k(top_k, MAX_TOP_K),
            "score_threshold": threshold_or_none(threshold),
        }
        if image is None:
            resp = engine.search(text=text or None, **options)
        else:
            resp = engine.search_photo(
                image,
                background=background or "auto",
                box_index=box_index,
                text=text or None,
                text_weight=float(text_weight if text_weight is not None else 0.5),
                **options,
            )
        view = view_from_response(resp, text=text or None, **pipeline_facts(resp))
        session = getattr(request, "session_hash", None)
        new_state = SessionState(
            query_id=self.ctx.log_search(view, text or None, image, session),
            base=view,
            view=view,
            # plain floats: the state stays free of numpy/torch types
            query_vector=None if resp.query_vector is None else [float(x) for x in resp.query_vector],
            photo_key=state.photo_key,
            photo=state.photo,
        )
        new_state.remember_objects(image, view.get("objects") or [], resp.box_index)
        hidden = gr.update(visible=False, value="")
        preview = hidden
        if image is not None and any(v.name != "photo" for v in resp.views):
            tiles = [(v.name, v.label, data_url(v.image, VIEW_PREVIEW_SIDE)) for v in resp.views]
            preview = gr.update(
                visible=True, value=render.views_preview(tiles, data_url(image, VIEW_PREVIEW_SIDE))
            )
        chips = hidden
        if image is not None and len(resp.objects) > 1:
            html = render.object_chips(data_url(image, CHIPS_PHOTO_SIDE), new_state.objects, resp.box_index)
            chips = gr.update(visible=True, value=html)
        return self.render(new_state), preview, chips, new_state

    def _query(self, image: Image.Image | None, url: str, text: str) -> tuple[Image.Image | None, str]:
        """The photo (else the link's picture) and the text, or a message saying what is missing."""
        url = (url or "").strip()
        if image is None and url:
            image = load_link(url, self.ctx.options.allow_private_links)
        text = (text or "").strip()
        if image is None and not text:
            raise VisualSearchError(
                "Add a photo (upload, camera or paste), paste an image link, or type what you are looking for."
            )
        if text:
            self.ctx.engine.encoder.require_text()  # before any search work; says why in one line
        return image, text

    # ------------------------------------------------------------ results panel clicks

    def card_action(
        self,
        categories: list[str],
        brands: list[str],
        min_price: float | None,
        max_price: float | None,
        top_k: float,
        threshold: float,
        state: SessionState | None,
        evt: gr.EventData,
        request: gr.Request,
    ):
        """A click inside the results panel: more-like-this, like, dislike, or undo one of those."""
        action = str(getattr(evt, "action", "") or "")
        product_id = str(getattr(evt, "product_id", "") or "")
        try:
            rank = int(getattr(evt, "rank", 0) or 0) or None
        except (TypeError, ValueError):
            rank = None
        state = as_state(state).copy()
        if action not in CARD_ACTIONS:
            return gr.skip(), gr.skip(), state
        if action == "reset":
            return self.reset(state)
        if not state.view:
            return self.render(state, "Search first, then refine the results."), gr.skip(), state
        try:
            with self.ctx.limiter.slot(client_key(request)):
                filters = build_filters(categories, brands, min_price, max_price)
                k = check_top_k(top_k, MAX_TOP_K)
                thr = threshold_or_none(threshold)
                session = getattr(request, "session_hash", None)
                if action == "more":
                    return self._more_like_this(state, product_id, rank, filters, k, thr, session)
                self._vote(state, action, product_id, rank, session)
                state.view = self._refined_view(state, filters, k, thr)
                if state.view is not state.base:
                    state.query_id = self.ctx.log_search(state.view, None, None, session) or state.query_id
        except USER_ERRORS as exc:
            return self.render(state, public_message(exc)), gr.skip(), state
        except Exception as exc:  # noqa: BLE001
            log.exception("refinement failed")
            return self.render(state, internal_error(exc)), gr.skip(), state
        return self.render(state), gr.skip(), state

    def _more_like_this(
        self,
        state: SessionState,
        product_id: str,
        rank: int | None,
        filters: SearchFilters,
        top_k: int,
        threshold: float | None,
        session: str | None,
    ):
        self.ctx.log_feedback(state.query_id, product_id, "click", rank, session)
        card = state.find_card(product_id)
        resp = self.ctx.engine.more_like_this(
            product_id, filters=filters, top_k=top_k, score_threshold=threshold
        )
        view = view_from_response(
            resp, anchor_id=product_id, anchor_title=(card or {}).get("title") or product_id
        )
        new_state = SessionState(
            query_id=self.ctx.log_search(view, None, None, session),
            base=view,
            view=view,
            photo_key=state.photo_key,
            photo=state.photo,
            searched_photo=state.searched_photo,  # the chips still search that photo's items
            objects=list(state.objects),
            box_index=state.box_index,
        )
        return self.render(new_state), gr.update(visible=False, value=""), new_state

    def _vote(
        self, state: SessionState, action: str, product_id: str, rank: int | None, session: str | None
    ) -> None:
        """Like/dislike (or undo one) in place on ``state``."""
        if action in ("like", "dislike"):
            card = state.find_card(product_id)
            if card is None:
                raise VisualSearchError("That product is no longer in the results; search again.")
            self.ctx.log_feedback(state.query_id, product_id, action, rank, session)
        state.liked = [c for c in state.liked if c["product_id"] != product_id]
        state.disliked = [c for c in state.disliked if c["product_id"] != product_id]
        if action == "like":
            state.liked.append(card)
        elif action == "dislike":
            state.disliked.append(card)

    def _refined_view(
        self, state: SessionState, filters: SearchFilters, top_k: int, threshold: float | None
    ) -> dict[str, Any]:
        """Qdrant recommend: liked products are positive examples, disliked ones negative.

        The current search stays in: after a photo/text search its query vector is one more
        positive example (so dislikes alone mean "away from these, still near my query"); after
        'more like this' its product is.
        """
        base = state.base or {}
        liked_ids = [c["product_id"] for c in state.liked]
        disliked_ids = [c["product_id"] for c in state.disliked]
        if not liked_ids and not disliked_ids:
            return state.base
        positives = list(liked_ids)
        if base.get("anchor_id") and base["anchor_id"] not in disliked_ids:
            positives.insert(0, base["anchor_id"])
        if not positives and state.query_vector is None:
            raise VisualSearchError("Like at least one product to refine the results, or press Reset.")
        resp = self.ctx.engine.recommend(
            positives,
            disliked_ids,
            query_vector=state.query_vector,
            filters=filters,
            top_k=top_k,
            score_threshold=threshold,
        )
        view = view_from_response(resp)
        view.update(mode="recommend", text=base.get("text"), anchor_title=base.get("anchor_title"))
        return view

    def reset(self, state: SessionState | None):
        """Drop likes/dislikes and show the original results of the last search again."""
        state = as_state(state).copy(liked=[], disliked=[])
        if state.base:
            state.view = state.base
        return self.render(state), gr.skip(), state

    def clear(self, photo: Any):
        discard_upload(upload_path(photo))
        hidden = gr.update(visible=False, value="")
        return None, "", "", self.render(None), hidden, hidden, SessionState(), gr.update(visible=False), ""

    def hide_objects(self):
        """A new photo was uploaded: the chips of the last one go away until it is searched."""
        return gr.update(visible=False, value="")

    # ------------------------------------------------------------ link, crop, examples

    def load_url(self, url: str):
        """'Load' next to the link box: fetch the picture into the photo box (to see it, crop it)."""
        try:
            if not (url or "").strip():
                raise VisualSearchError(
                    "Paste the link of a picture first (it starts with http:// or https://)."
                )
            image = load_link(url, self.ctx.options.allow_private_links)
        except USER_ERRORS as exc:
            return gr.skip(), _message(render.error_box(public_message(exc)))
        return image, _message("")

    def open_crop(self, photo: Any, state: SessionState | None):
        """'Crop' next to the photo: show the cropper over the current photo (preprocess=False)."""
        try:
            image = self.photo(photo, as_state(state))
            if image is None:
                raise VisualSearchError("Add a photo first, then crop it.")
        except USER_ERRORS as exc:
            return "", gr.update(visible=False), _message(render.error_box(public_message(exc)))
        return render.cropper(data_url(image)), gr.update(visible=True), _message("")

    def crop_action(self, photo: Any, state: SessionState | None, evt: gr.EventData):
        """The cropper's buttons: 'apply' crops the photo to the box (fractions of its size)."""
        if getattr(evt, "action", None) != "apply":
            return gr.skip(), gr.update(visible=False), _message("")
        try:
            image = self.photo(photo, as_state(state))
            if image is None:
                raise VisualSearchError("The photo is gone; add it again, then crop.")
            box = [
                min(max(float(getattr(evt, k, d)), 0.0), 1.0)
                for k, d in (("x0", 0), ("y0", 0), ("x1", 1), ("y1", 1))
            ]
        except (TypeError, ValueError):
            error = render.error_box("The crop box was not understood; try again.")
            return gr.skip(), gr.update(visible=True), _message(error)
        except USER_ERRORS as exc:
            return gr.skip(), gr.update(visible=False), _message(render.error_box(public_message(exc)))
        x0, x1 = sorted((box[0], box[2]))
        y0, y1 = sorted((box[1], box[3]))
        w, h = image.size
        left, top, right, bottom = round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)
        if right - left < 8 or bottom - top < 8:
            error = render.error_box("The crop is too small; drag a bigger box.")
            return gr.skip(), gr.update(visible=True), _message(error)
        discard_upload(upload_path(photo))  # the crop replaces it
        return image.crop((left, top, right, bottom)), gr.update(visible=False), _message("")

    def pick_example(self, evt: gr.EventData):
        """An example photo was tapped: it becomes the photo (text and link cleared), then search runs."""
        try:
            index = int(getattr(evt, "index", -1))
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < len(self.ctx.examples):
            return gr.skip(), gr.skip(), gr.skip()
        with Image.open(self.ctx.examples[index]) as img:  # a copy, never the asset's path
            return img.convert("RGB"), "", ""
