"""The five named search endpoints of the shopper surface (gradio_client / HTTP API):
/search_image, /search_text, /search_combined, /more_like_this, /recommend.

JSON answers with scores, filters and latency; images are referred to by URL (``/img/<id>/<n>``),
never by server path. Errors are one-line ``gr.Error`` messages; an uploaded photo is deleted once
answered, and each client has a bounded number of searches in flight.

The photo endpoints take ``background`` ("auto", the default: the object-aware pipeline; "off":
the whole photo; "on": the cut-out) and ``box_index`` (which detected object to search, 0 = the
largest/most central; the response's ``objects`` lists them as fractions of the photo). The older
boolean ``remove_background`` still works: when sent (true/false) and ``background`` is left at
"auto", it means "on"/"off".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ..core.query_options import check_query_options
from ..engine import SearchResponse
from ..images.load import load_image
from .common import (
    API_MAX_TOP_K,
    USER_ERRORS,
    UIContext,
    build_filters,
    card_from_result,
    check_top_k,
    client_key,
    discard_upload,
    public_message,
    view_from_response,
)


class SearchAPI:
    """Handlers of the named endpoints; each validates its input like the UI does."""

    def __init__(self, ctx: UIContext) -> None:
        self.ctx = ctx

    def _api_response(self, resp: SearchResponse, text: str | None = None) -> dict[str, Any]:
        results = []
        for rank, r in enumerate(resp.results, start=1):
            card = card_from_result(r)
            card["rank"] = rank
            if not card["image_url"].startswith(("http://", "https://")):
                card["image_url"] = "/" + card["image_url"].split("?")[0]
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
            "background": resp.pipeline,
            "views": [{"name": v.name, "label": v.label} for v in resp.views],
            "fusion": resp.fusion,
            "objects": [
                {"x0": o.x0, "y0": o.y0, "x1": o.x1, "y1": o.y1, "area": o.area} for o in resp.objects
            ],
            "box_index": resp.box_index,
            "results": results,
        }

    def _api_call(
        self,
        fn: Callable[[], SearchResponse],
        text: str | None,
        request: gr.Request | None,
        photo: Image.Image | None = None,
    ) -> dict[str, Any]:
        """Run one search under the client's limit (the photo endpoints delete the upload)."""
        try:
            with self.ctx.limiter.slot(client_key(request)):
                resp = fn()
        except USER_ERRORS as exc:
            raise gr.Error(public_message(exc), print_exception=False) from None
        out = self._api_response(resp, text)
        self.ctx.log_search(view_from_response(resp), text, photo, "api")
        return out

    @staticmethod
    def _api_image(image: str | None) -> Image.Image:
        if not image:
            raise gr.Error(
                "Send a photo: image=handle_file('photo.jpg') (a path or an http(s) URL).",
                print_exception=False,
            )
        try:
            return load_image(Path(image))
        except USER_ERRORS as exc:
            raise gr.Error(public_message(exc), print_exception=False) from None

    @staticmethod
    def _api_background(background: Any, remove_background: Any, box_index: Any) -> tuple[str, int | None]:
        """The pipeline choice (the legacy boolean maps to on/off when background is left at auto)."""
        mode = background if background not in (None, "") else "auto"
        if isinstance(mode, str) and mode.strip().lower() == "auto" and remove_background is not None:
            if not isinstance(remove_background, bool):
                raise gr.Error("remove_background must be true or false.", print_exception=False)
            mode = "on" if remove_background else "off"
        try:
            options = check_query_options(background=mode, box_index=box_index)
        except USER_ERRORS as exc:
            raise gr.Error(public_message(exc), print_exception=False) from None
        return options.background, options.box_index

    def _api_common(self, top_k, categories, brands, min_price, max_price, score_threshold):
        try:
            filters = build_filters(categories, brands, min_price, max_price)
            k = check_top_k(top_k, API_MAX_TOP_K)
        except USER_ERRORS as exc:
            raise gr.Error(public_message(exc), print_exception=False) from None
        thr = None if score_threshold is None or score_threshold == "" else float(score_threshold)
        return filters, k, thr

    def search_image(
        self,
        image: str | None,
        top_k: float = 12,
        categories: list[str] | None = None,
        brands: list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        score_threshold: float | None = None,
        remove_background: bool | None = None,
        background: str = "auto",
        box_index: float | None = None,
        request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """Products that look like the photo (background auto/off/on; box_index picks the object)."""
        return self._photo_search(
            image, None, 0.0, top_k, categories, brands, min_price, max_price, score_threshold,
            remove_background, background, box_index, request,
        )  # fmt: skip

    def search_text(
        self,
        text: str,
        top_k: float = 12,
        categories: list[str] | None = None,
        brands: list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        score_threshold: float | None = None,
        request: gr.Request | None = None,
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
            lambda: self.ctx.engine.search(text=text, filters=filters, top_k=k, score_threshold=thr),
            text,
            request,
        )

    def search_combined(
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
        remove_background: bool | None = None,
        background: str = "auto",
        box_index: float | None = None,
        request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """Photo + text ('like this, but in blue'); text_weight 0 = photo only, 1 = text only.
        The text is blended into every view of the photo that is searched."""
        if not (text or "").strip():
            discard_upload(image)
            raise gr.Error(
                "The text part is empty; use /search_image for a photo alone.", print_exception=False
            )
        return self._photo_search(
            image, text, text_weight, top_k, categories, brands, min_price, max_price, score_threshold,
            remove_background, background, box_index, request,
        )  # fmt: skip

    def _photo_search(
        self,
        image: str | None,
        text: str | None,
        text_weight: float,
        top_k: float,
        categories: list[str] | None,
        brands: list[str] | None,
        min_price: float | None,
        max_price: float | None,
        score_threshold: float | None,
        remove_background: bool | None,
        background: str,
        box_index: float | None,
        request: gr.Request | None,
    ) -> dict[str, Any]:
        """The photo endpoints' one path: checks, the object-aware search, and the upload deleted
        afterwards (also when the request is refused before the search). The engine validates
        text_weight, top_k and the threshold (InvalidQueryError, shown as it is)."""
        try:
            filters, k, thr = self._api_common(
                top_k, categories, brands, min_price, max_price, score_threshold
            )
            text = (text or "").strip() or None
            try:
                weight = float(text_weight)
            except (TypeError, ValueError):
                raise gr.Error(
                    "text_weight must be a number between 0 and 1.", print_exception=False
                ) from None
            mode, index = self._api_background(background, remove_background, box_index)
            photo = self._api_image(image)
            return self._api_call(
                lambda: self.ctx.engine.search_photo(
                    photo,
                    background=mode,
                    box_index=index,
                    text=text,
                    text_weight=weight,
                    filters=filters,
                    top_k=k,
                    score_threshold=thr,
                ),
                text,
                request,
                photo,
            )
        finally:
            discard_upload(image)

    def more_like_this(
        self,
        product_id: str,
        top_k: float = 12,
        categories: list[str] | None = None,
        brands: list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        score_threshold: float | None = None,
        request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """Products that look like a catalog product."""
        filters, k, thr = self._api_common(top_k, categories, brands, min_price, max_price, score_threshold)
        pid = (product_id or "").strip()
        if not pid:
            raise gr.Error("Give a product_id from the catalog.", print_exception=False)
        return self._api_call(
            lambda: self.ctx.engine.more_like_this(pid, filters=filters, top_k=k, score_threshold=thr),
            None,
            request,
        )

    def recommend(
        self,
        positive_ids: list[str] | str,
        negative_ids: list[str] | str | None = None,
        top_k: float = 12,
        score_threshold: float | None = None,
        request: gr.Request | None = None,
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
            lambda: self.ctx.engine.recommend(pos, neg, filters=filters, top_k=k, score_threshold=thr),
            None,
            request,
        )


def add_api_endpoints(ctx: UIContext) -> None:
    """Named, JSON-returning endpoints on hidden components. File inputs go through Gradio's upload checks."""
    api = SearchAPI(ctx)
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
        # legacy true/false; null (the default) = use background. JSON, since a Checkbox has no null.
        a_bg = gr.JSON(label="remove_background", value=None)
        a_background = gr.Textbox(label="background", value="auto")  # auto | off | on, checked by the engine
        a_box = gr.Number(label="box_index", value=None, precision=0)
        a_pid = gr.Textbox(label="product_id")
        a_pos = gr.JSON(label="positive_ids", value=[])
        a_neg = gr.JSON(label="negative_ids", value=[])
        a_out = gr.JSON(label="response")
        trigger = gr.Button(visible=False)
    filters = [a_top_k, a_categories, a_brands, a_min, a_max, a_threshold]
    photo_options = [a_bg, a_background, a_box]
    trigger.click(api.search_image, [a_image, *filters, *photo_options], a_out, api_name="search_image")
    trigger.click(api.search_text, [a_text, *filters], a_out, api_name="search_text")
    trigger.click(
        api.search_combined,
        [a_image, a_text, a_weight, *filters, *photo_options],
        a_out,
        api_name="search_combined",
    )
    trigger.click(api.more_like_this, [a_pid, *filters], a_out, api_name="more_like_this")
    trigger.click(api.recommend, [a_pos, a_neg, a_top_k, a_threshold], a_out, api_name="recommend")
