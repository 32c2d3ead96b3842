"""The shopper's search tab: photo (upload, camera, paste, link, crop), text, filters, results
with more-like-this, like and dislike. Layout and wiring here; handlers in :mod:`.search_handlers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from .. import render
from ..common import MAX_TOP_K, UIContext, static_text
from ..state import SessionState
from .search_handlers import BACKGROUND_CHOICES, SearchHandlers, example_label


@dataclass
class SearchTab:
    """The components other parts of the page wire to (filters refreshed on page load)."""

    categories: gr.Dropdown
    brands: gr.Dropdown
    price_note: gr.HTML


def build_search_tab(ctx: UIContext) -> SearchTab:
    """The search layout and its events (all private: the named API lives in api.py)."""
    h = SearchHandlers(ctx)
    supports_text = ctx.engine.encoder.supports_text
    state = gr.State(SessionState())
    with gr.Row(equal_height=False, elem_id="search-row"):
        with gr.Column(scale=2, min_width=300, elem_id="query-col"):
            q = _query_column(ctx, h, supports_text)
        with gr.Column(scale=3, min_width=300, elem_id="results-col"):
            with gr.Row(elem_id="results-toolbar"):
                gr.HTML('<h2 class="vs-section">Results</h2>')
                reset_btn = gr.Button("↺ Reset likes", size="sm", scale=0, min_width=110, elem_id="reset-btn")
            # your photo, then every view that was searched (labelled), as inline images
            views_preview = gr.HTML("", visible=False, elem_id="views-preview")
            results = gr.HTML(
                h.render(None), js_on_load=static_text("results.js"), elem_id="results", min_height=200
            )

    filter_inputs = [q["categories"], q["brands"], q["min_price"], q["max_price"], q["top_k"], q["threshold"]]
    search_inputs = [
        q["photo"],
        q["url"],
        q["text"],
        q["text_weight"],
        q["background"],
        *filter_inputs,
        state,
    ]
    search_outputs = [results, views_preview, q["objects"], state]
    card_outputs = [results, views_preview, state]
    private = {"api_visibility": "private"}
    # preprocess=False: the photo arrives as Gradio's checked upload, undecoded (see SearchHandlers.photo).
    searching = {"scroll_to_output": True, "preprocess": False, **private}
    photo, url, text = q["photo"], q["url"], q["text"]

    q["search_btn"].click(h.search, search_inputs, search_outputs, **searching)
    text.submit(h.search, search_inputs, search_outputs, **searching)
    results.click(h.card_action, [*filter_inputs, state], card_outputs, show_progress="minimal", **private)
    reset_btn.click(h.reset, [state], card_outputs, **private)
    object_inputs = [text, q["text_weight"], q["background"], *filter_inputs, state]
    q["objects"].click(h.pick_object, object_inputs, search_outputs, scroll_to_output=True, **private)
    photo.upload(h.hide_objects, None, [q["objects"]], **private)
    q["clear_btn"].click(
        h.clear,
        [photo],
        [photo, url, text, results, views_preview, q["objects"], state, q["crop_box"], q["photo_msg"]],
        preprocess=False,
        **private,
    )
    q["load_btn"].click(h.load_url, [url], [photo, q["photo_msg"]], **private)
    url.submit(h.load_url, [url], [photo, q["photo_msg"]], **private)
    crop_outputs = [q["cropper"], q["crop_box"], q["photo_msg"]]
    q["crop_btn"].click(h.open_crop, [photo, state], crop_outputs, preprocess=False, **private)
    q["cropper"].click(
        h.crop_action, [photo, state], [photo, q["crop_box"], q["photo_msg"]], preprocess=False, **private
    )
    if "examples" in q:
        q["examples"].click(h.pick_example, None, [photo, url, text], **private).then(
            h.search, search_inputs, search_outputs, **searching
        )
    for button in q["text_buttons"]:
        button.click(lambda phrase: (None, "", phrase), [button], [photo, url, text], **private).then(
            h.search, search_inputs, search_outputs, **searching
        )
    return SearchTab(q["categories"], q["brands"], q["price_note"])


def _query_column(ctx: UIContext, h: SearchHandlers, supports_text: bool) -> dict[str, Any]:
    """Photo, link, crop, text, filters and the buttons; returns the components by name."""
    q: dict[str, Any] = {}
    _photo_inputs(q)
    q["text"] = gr.Textbox(
        label="Describe it" if supports_text else "Describe it (not available: image-only model)",
        placeholder="e.g. yellow hoodie, or with a photo: 'like this but in blue'",
        interactive=supports_text,
        lines=1,
        max_lines=3,
        elem_id="query-text",
    )
    q["text_weight"] = gr.Slider(
        0,
        1,
        value=0.5,
        step=0.05,
        label="Photo ← → text weight",
        info="Used when you give both: 0 = photo only, 1 = text only.",
        visible=supports_text,
        elem_id="text-weight",
    )
    q["background"] = gr.Radio(
        BACKGROUND_CHOICES,
        value="auto",
        label="Background",
        info="Auto finds the item in your photo; Off searches the whole photo; On cuts the item out.",
        elem_id="background",
    )
    _filters(ctx, h, q)
    with gr.Row(elem_id="search-buttons"):
        q["search_btn"] = gr.Button("Search", variant="primary", scale=3, elem_id="search-btn")
        q["clear_btn"] = gr.Button("Clear", scale=1, min_width=80, elem_id="clear-btn")
    if ctx.examples:
        strip = [(f"examples/{i}", example_label(p)) for i, p in enumerate(ctx.examples)]
        q["examples"] = gr.HTML(
            render.example_strip(strip), js_on_load=static_text("examples.js"), elem_id="example-photos"
        )
    q["text_buttons"] = []
    if supports_text and ctx.options.text_examples:
        gr.HTML('<div class="vs-step">…or an example description</div>')
        with gr.Row(elem_id="example-texts"):
            for phrase in ctx.options.text_examples:
                q["text_buttons"].append(gr.Button(phrase, size="sm", min_width=60))
    return q


def _photo_inputs(q: dict[str, Any]) -> None:
    """The photo box, its cropper, the link box with Load and Crop, and the message under them."""
    gr.HTML(
        '<div class="vs-step">Photo <span>upload, take one with the camera, or paste; '
        "then crop it to the item if you like</span></div>"
    )
    q["photo"] = gr.Image(
        label="Photo",
        show_label=False,
        sources=["upload", "webcam", "clipboard"],
        type="filepath",
        image_mode=None,
        height=300,
        elem_id="photo",
    )
    with gr.Group(visible=False, elem_id="crop-box") as q["crop_box"]:
        q["cropper"] = gr.HTML("", js_on_load=static_text("crop.js"), elem_id="cropper")
    with gr.Row(elem_id="url-row", equal_height=True):
        q["url"] = gr.Textbox(
            placeholder="…or paste an image link",
            show_label=False,
            container=False,
            scale=4,
            min_width=240,
            elem_id="image-url",
        )
        q["load_btn"] = gr.Button("Load", scale=1, min_width=64, size="md", elem_id="load-url")
        q["crop_btn"] = gr.Button("✂ Crop", scale=1, min_width=64, size="md", elem_id="crop-btn")
    q["photo_msg"] = gr.HTML("", visible=False, elem_id="photo-msg")
    # several items in the photo: numbered boxes over it and chips; a tap searches that item
    q["objects"] = gr.HTML("", visible=False, js_on_load=static_text("objects.js"), elem_id="object-chips")


def _filters(ctx: UIContext, h: SearchHandlers, q: dict[str, Any]) -> None:
    with gr.Accordion("Filters & ranking", open=False, elem_id="filters"):
        q["categories"] = gr.Dropdown(
            choices=h.category_choices(), multiselect=True, label="Category", elem_id="filter-category"
        )
        q["brands"] = gr.Dropdown(
            choices=h.brand_choices(), multiselect=True, label="Brand", elem_id="filter-brand"
        )
        with gr.Row():
            q["min_price"] = gr.Number(
                label="Min price",
                value=None,
                minimum=0,
                min_width=100,
                placeholder="no minimum",
                elem_id="min-price",
            )
            q["max_price"] = gr.Number(
                label="Max price",
                value=None,
                minimum=0,
                min_width=100,
                placeholder="no maximum",
                elem_id="max-price",
            )
        q["price_note"] = gr.HTML(h.price_note())
        q["top_k"] = gr.Slider(1, MAX_TOP_K, value=12, step=1, label="Results (top-k)", elem_id="top-k")
        q["threshold"] = gr.Slider(
            0,
            1,
            value=ctx.threshold,
            step=0.01,
            label="Score threshold",
            info=f"Hide weaker matches (cosine similarity); 0 = show all. "
            f"Default for this model: {ctx.threshold:.2f}"
            + (" (calibrated on an evaluation)." if ctx.engine.threshold_calibration() else "."),
            elem_id="threshold",
        )
