"""The five named search endpoints of the shopper surface (gradio_client / HTTP API):
/search_image, /search_text, /search_combined, /more_like_this, /recommend.

JSON answers with scores, filters and latency; images are referred to by URL (``/img/<id>/<n>``),
never by server path. Errors are one-line ``gr.Error`` messages; an uploaded photo is deleted once
answered, and each client has a bounded number of searches in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

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
        remove_background: bool = False,
        request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """Products that look like the photo."""
        try:
            filters, k, thr = self._api_common(
                top_k, categories, brands, min_price, max_price, score_threshold
            )
            photo = self._api_image(image)
            return self._api_call(
                lambda: self.ctx.engine.search(
                    image=photo,
                    filters=filters,
                    top_k=k,
                    score_threshold=thr,
                    remove_background=bool(remove_background),
                ),
                None,
                request,
                photo,
            )
        finally:
            discard_upload(image)  # also when the request is refused before the search

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
        remove_background: bool = False,
        request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """Photo + text ('like this, but in blue'); text_weight 0 = photo only, 1 = text only."""
        try:
            filters, k, thr = self._api_common(
                top_k, categories, brands, min_price, max_price, score_threshold
            )
            text = (text or "").strip()
            if not text:
                raise gr.Error(
                    "The text part is empty; use /search_image for a photo alone.", print_exception=False
                )
            try:
                weight = float(text_weight)
            except (TypeError, ValueError):
                raise gr.Error(
                    "text_weight must be a number between 0 and 1.", print_exception=False
                ) from None
            if not 0.0 <= weight <= 1.0:
                raise gr.Error(f"text_weight must be between 0 and 1, got {weight:g}.", print_exception=False)
            photo = self._api_image(image)
            return self._api_call(
                lambda: self.ctx.engine.search(
                    image=photo,
                    text=text,
                    text_weight=weight,
                    filters=filters,
                    top_k=k,
                    score_threshold=thr,
                    remove_background=bool(remove_background),
                ),
                text,
                request,
                photo,
            )
        finally:
            discard_upload(image)  # also when the request is refused before the search

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
        a_bg = gr.Checkbox(label="remove_background", value=False)
        a_pid = gr.Textbox(label="product_id")
        a_pos = gr.JSON(label="positive_ids", value=[])
        a_neg = gr.JSON(label="negative_ids", value=[])
        a_out = gr.JSON(label="response")
        trigger = gr.Button(visible=False)
    filters = [a_top_k, a_categories, a_brands, a_min, a_max, a_threshold]
    trigger.click(api.search_image, [a_image, *filters, a_bg], a_out, api_name="search_image")
    trigger.click(api.search_text, [a_text, *filters], a_out, api_name="search_text")
    trigger.click(
        api.search_combined, [a_image, a_text, a_weight, *filters, a_bg], a_out, api_name="search_combined"
    )
    trigger.click(api.more_like_this, [a_pid, *filters], a_out, api_name="more_like_this")
    trigger.click(api.recommend, [a_pos, a_neg, a_top_k, a_threshold], a_out, api_name="recommend")
