"""HTML for the app: result cards, summaries, empty and error states, status tiles, audit tables.

Pure functions from plain dicts/dataclasses to strings; no Gradio, no engine calls. Every piece of
catalog or user text goes through :func:`esc` (``html.escape`` with quotes), every URL through
:func:`file_url` / :func:`safe_link`, so a product called ``<script>`` renders as text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

MODE_LABELS = {
    "image": "Photo search",
    "text": "Text search",
    "image+text": "Photo + text",
    "more-like-this": "More like this",
    "recommend": "Refined by your likes and dislikes",
}

# Inline SVG icons (Lucide, ISC licence): emoji fonts are missing on many kiosk/CI machines.
_SVG = (
    '<svg class="vs-icon" viewBox="0 0 24 24" width="18" height="18" fill="none" stroke="currentColor" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">{}</svg>'
)
ICONS = {
    "like": _SVG.format(
        '<path d="M7 10v12"/><path d="M15 5.88 14 10h5.83a2 2 0 0 1 1.92 2.56l-2.33 8A2 2 0 0 1 17.5 22H4'
        'a2 2 0 0 1-2-2v-8a2 2 0 0 1 2-2h2.76a2 2 0 0 0 1.79-1.11L12 2a3.13 3.13 0 0 1 3 3.88Z"/>'
    ),
    "dislike": _SVG.format(
        '<path d="M17 14V2"/><path d="M9 18.12 10 14H4.17a2 2 0 0 1-1.92-2.56l2.33-8A2 2 0 0 1 6.5 2H20'
        'a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2h-2.76a2 2 0 0 0-1.79 1.11L12 22a3.13 3.13 0 0 1-3-3.88Z"/>'
    ),
    "search": _SVG.format('<circle cx="11" cy="11" r="8"/><path d="m21 21-4.3-4.3"/>'),
    "camera": _SVG.format(
        '<path d="M14.5 4h-5L7 7H4a2 2 0 0 0-2 2v9a2 2 0 0 0 2 2h16a2 2 0 0 0 2-2V9a2 2 0 0 0-2-2h-3l-2.5-3z"/>'
        '<circle cx="12" cy="13" r="3"/>'
    ),
    "alert": _SVG.format(
        '<circle cx="12" cy="12" r="10"/><line x1="12" x2="12" y1="8" y2="12"/><line x1="12" x2="12.01" y1="16" y2="16"/>'
    ),
    "clock": _SVG.format('<circle cx="12" cy="12" r="10"/><polyline points="12 6 12 12 16 14"/>'),
}


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def file_url(source: str | None) -> str:
    """Browser URL for an image that is already a URL: http(s) links and the app's own routes.

    Server paths are never turned into URLs: catalog images go through the image route
    (``img/<product id>/<index>``), a photo to crop is inlined as a data URL.
    """
    if not source:
        return ""
    if source.startswith(("http://", "https://", "img/", "examples/", "data:image/")):
        return source
    return ""


def product_image_url(product_id: Any, index: int = 0, *, thumb: bool = True) -> str:
    """The image route of a product (``img/<id>/<index>``), relative so it works under any mount."""
    suffix = "?size=thumb" if thumb else ""
    return f"img/{quote(str(product_id), safe='')}/{int(index)}{suffix}"


def image_url(product_id: Any, source: str | None, index: int = 0) -> str:
    """http(s) catalog images as they are; local ones through the image route, never by path."""
    if source and source.startswith(("http://", "https://")):
        return source
    return product_image_url(product_id, index) if source else ""


def safe_link(url: str | None) -> str | None:
    """Only http(s) links become clickable (no javascript: or data: from a catalog cell)."""
    if url and str(url).strip().lower().startswith(("http://", "https://")):
        return str(url).strip()
    return None


def money(price: Any, currency: str = "$") -> str:
    if price is None:
        return ""
    try:
        value = float(price)
    except (TypeError, ValueError):
        return ""
    if math.isnan(value):
        return ""
    return f"{currency}{value:,.2f}"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


# --------------------------------------------------------------------------- cards


def product_card(
    card: Mapping[str, Any],
    rank: int | None = None,
    *,
    currency: str = "$",
    actions: bool = True,
) -> str:
    """One product: image, title, price, category, brand, score and (optionally) action buttons."""
    pid = esc(card.get("product_id"))
    title = esc(card.get("title") or card.get("product_id"))
    score = card.get("score")
    score_html = ""
    if score is not None:
        width = max(0.0, min(1.0, float(score))) * 100
        score_html = (
            f'<div class="vs-score" title="Cosine similarity to the query">'
            f'<span class="vs-score-bar"><span style="width:{width:.0f}%"></span></span>'
            f'<span class="vs-score-num">{float(score):.3f}</span></div>'
        )
    price = money(card.get("price"), currency)
    category = card.get("category")
    brand = card.get("brand")
    meta = []
    if price:
        meta.append(f'<span class="vs-price">{esc(price)}</span>')
    if category:
        meta.append(f'<span class="vs-chip">{esc(category)}</span>')
    link = safe_link(card.get("url"))
    link_html = (
        f'<a class="vs-link" href="{esc(link)}" target="_blank" rel="noopener noreferrer">View ↗</a>'
        if link
        else ""
    )
    rank_attr = f' data-rank="{rank}"' if rank is not None else ""
    img = file_url(card.get("image_url"))
    img_html = (
        f'<img src="{esc(img)}" alt="{title}" loading="lazy">'
        if img
        else '<span class="vs-noimg">no image</span>'
    )
    if actions:
        thumb = (
            f'<div class="vs-thumb"><button class="vs-thumb-btn" data-action="more" data-pid="{pid}"{rank_attr} '
            f'title="More like this" aria-label="More like {title}">{img_html}</button>'
            f'<div class="vs-vote">'
            f'<button class="vs-like" data-action="like" data-pid="{pid}"{rank_attr} '
            f'title="Like: show more like this" aria-label="Like {title}">{ICONS["like"]}</button>'
            f'<button class="vs-dislike" data-action="dislike" data-pid="{pid}"{rank_attr} '
            f'title="Dislike: show fewer like this" aria-label="Dislike {title}">{ICONS["dislike"]}</button>'
            f"</div></div>"
        )
        buttons = (
            f'<button class="vs-btn vs-more" data-action="more" data-pid="{pid}"{rank_attr}>'
            f"{ICONS['search']}More like this</button>"
        )
    else:
        thumb = f'<div class="vs-thumb">{img_html}</div>'
        buttons = ""
    rank_html = f'<span class="vs-rank">#{rank}</span>' if rank is not None else ""
    brand_html = f'<div class="vs-brand">{esc(brand)}</div>' if brand else ""
    return (
        f'<article class="vs-card" data-pid="{pid}">{thumb}'
        f'<div class="vs-body">{rank_html}<h3 class="vs-title" title="{title}">{title}</h3>{brand_html}'
        f'<div class="vs-meta">{"".join(meta)}</div>{score_html}{link_html}{buttons}</div></article>'
    )


def card_grid(cards: Sequence[Mapping[str, Any]], *, currency: str = "$", actions: bool = True) -> str:
    parts = [product_card(c, i + 1, currency=currency, actions=actions) for i, c in enumerate(cards)]
    return f'<div class="vs-grid">{"".join(parts)}</div>'


# --------------------------------------------------------------------------- search results


def welcome(examples_hint: bool = True) -> str:
    tip = " Or start with one of the examples." if examples_hint else ""
    return (
        f'<div class="vs-empty vs-welcome"><div class="vs-empty-icon">{ICONS["camera"]}</div>'
        "<h3>Find it by photo, words, or both</h3>"
        "<p>Upload or snap a photo of an item (crop it to the part you care about), paste an image link, "
        f"or describe what you want, then press <b>Search</b>.{esc(tip)}</p></div>"
    )


def error_box(message: str) -> str:
    return (
        f'<div class="vs-error" role="alert"><span class="vs-error-icon">{ICONS["alert"]}</span>'
        f"<div><b>That didn't work.</b> {esc(message)}</div></div>"
    )


def notice_box(message: str) -> str:
    return f'<div class="vs-notice" role="status">{esc(message)}</div>'


def empty_results(filters_text: str, threshold: float | None) -> str:
    hints = []
    if threshold is not None:
        hints.append(f"lower the score threshold (now {threshold:.2f})")
    if filters_text and filters_text != "no filters":
        hints.append("clear the filters")
    hint = " or ".join(hints) if hints else "try another photo or a different description"
    return (
        f'<div class="vs-empty vs-noresults"><div class="vs-empty-icon">{ICONS["search"]}</div>'
        "<h3>No product above the threshold</h3>"
        f"<p>Nothing in the catalog matched well enough. To see more, {esc(hint)}.</p></div>"
    )


def summary_bar(view: Mapping[str, Any]) -> str:
    """Query mode, applied filters, threshold, result count and latency, above the results."""
    label = MODE_LABELS.get(view.get("mode", ""), str(view.get("mode", "Search")))
    extra = ""
    if view.get("mode") == "image+text" and view.get("text_weight") is not None:
        extra = f" · text weight {float(view['text_weight']):.2f}"
    anchor = view.get("anchor_title")
    if anchor:
        extra += f" · from “{esc(anchor)}”"
    query_text = view.get("text")
    text_html = f'<span class="vs-q">“{esc(query_text)}”</span>' if query_text else ""
    threshold = view.get("threshold")
    thr = f"score ≥ {float(threshold):.2f}" if threshold is not None else "no score threshold"
    n = len(view.get("results") or [])
    timing = fmt_ms(view.get("total_ms"))
    breakdown = ""
    if view.get("embed_ms"):
        breakdown = f' <span class="vs-dim">(model {fmt_ms(view.get("embed_ms"))}, index {fmt_ms(view.get("search_ms"))})</span>'
    notes = "".join(f'<div class="vs-note">{esc(n_)}</div>' for n_ in view.get("notes") or [])
    pipeline = pipeline_text(view)
    pipeline_html = (
        f'<div class="vs-pipeline" data-testid="pipeline">{esc(pipeline)}</div>' if pipeline else ""
    )
    return (
        '<div class="vs-summary">'
        f'<div class="vs-summary-main"><span class="vs-mode">{esc(label)}</span>'
        f'<span class="vs-mode-extra">{extra}</span>{text_html}</div>{pipeline_html}'
        '<div class="vs-summary-facts">'
        f'<span class="vs-fact" data-testid="filters">Filters: {esc(view.get("filters_text") or "no filters")}</span>'
        f'<span class="vs-fact">{esc(thr)}</span>'
        f'<span class="vs-fact">{n} product{"s" if n != 1 else ""}</span>'
        f'<span class="vs-fact vs-latency" title="Time to answer this search">{ICONS["clock"]}{esc(timing)}{breakdown}</span>'
        f"</div>{notes}</div>"
    )


BACKGROUND_LABELS = {"auto": "Background: auto", "off": "Background: off", "on": "Background: on"}


def pipeline_text(view: Mapping[str, Any]) -> str:
    """How a photo was searched, in one line: the background mode, the views searched and how
    their results were combined, and which item of the photo (when it holds several)."""
    background = view.get("background")
    labels = [str(v) for v in view.get("view_labels") or []]
    if not background or not labels:
        return ""
    text = f"{BACKGROUND_LABELS.get(str(background), str(background))} · searched " + " + ".join(labels)
    if len(labels) > 1:
        text += " (best match per product)"
    count = len(view.get("objects") or [])
    index = view.get("box_index")
    if count > 1 and index is not None:
        text += f" · item {int(index) + 1} of {count}"
    return text


def views_preview(views: Sequence[tuple[str, str, str]], photo_url: str = "") -> str:
    """Before/after: the photo (``photo_url``, when given) and every view that was searched, each
    labelled (``views``: name, label, data URL)."""
    tiles = []
    if photo_url:
        tiles.append(
            f'<figure class="vs-view vs-view-source" data-view="source"><img src="{esc(file_url(photo_url))}" '
            'alt="Your photo"><figcaption>your photo</figcaption></figure>'
        )
    for name, label, url in views:
        tiles.append(
            f'<figure class="vs-view" data-view="{esc(name)}"><img src="{esc(file_url(url))}" alt="{esc(label)}">'
            f"<figcaption>{esc(label)}</figcaption></figure>"
        )
    return (
        '<div class="vs-views"><div class="vs-views-title">What was searched</div>'
        f'<div class="vs-views-row">{"".join(tiles)}</div></div>'
    )


def object_chips(photo_url: str, objects: Sequence[Mapping[str, Any]], selected: int | None) -> str:
    """Several items in one photo: the photo with a numbered box over each item, and one chip per
    item under it; tapping a box or a chip searches that item (static/objects.js)."""
    if len(objects) < 2:
        return ""
    marks, chips = [], []
    for i, box in enumerate(objects):
        try:
            x0, y0, x1, y1 = (min(max(float(box[k]), 0.0), 1.0) for k in ("x0", "y0", "x1", "y1"))
        except (KeyError, TypeError, ValueError):
            continue
        on = " vs-on" if i == selected else ""
        pressed = "true" if i == selected else "false"
        style = f"left:{x0 * 100:.2f}%;top:{y0 * 100:.2f}%;width:{(x1 - x0) * 100:.2f}%;height:{(y1 - y0) * 100:.2f}%"
        marks.append(
            f'<button class="vs-obj-box{on}" data-object="{i}" style="{style}" '
            f'aria-label="Search item {i + 1}" title="Search item {i + 1}"><span>{i + 1}</span></button>'
        )
        chips.append(
            f'<button class="vs-obj-chip{on}" data-object="{i}" aria-pressed="{pressed}">'
            f'<span class="vs-obj-n">{i + 1}</span>Item {i + 1}</button>'
        )
    return (
        '<div class="vs-objects">'
        f'<div class="vs-step">{len(chips)} items in your photo <span>tap one to search it</span></div>'
        f'<div class="vs-obj-stage"><img src="{esc(file_url(photo_url))}" alt="Your photo" draggable="false">'
        f'{"".join(marks)}</div><div class="vs-obj-chips">{"".join(chips)}</div></div>'
    )


def refine_bar(liked: Sequence[Mapping[str, Any]], disliked: Sequence[Mapping[str, Any]]) -> str:
    if not liked and not disliked:
        return ""

    def chips(items: Sequence[Mapping[str, Any]], undo: str) -> str:
        return "".join(
            f'<span class="vs-refine-chip"><img src="{esc(file_url(c.get("image_url")))}" alt="">'
            f"{esc(c.get('title') or c.get('product_id'))}"
            f'<button class="vs-x" data-action="{undo}" data-pid="{esc(c.get("product_id"))}" '
            f'title="Remove" aria-label="Remove {esc(c.get("title"))}">×</button></span>'
            for c in items
        )

    parts = []
    if liked:
        parts.append(
            f'<div class="vs-refine-row"><b class="vs-liked">{ICONS["like"]} Liked</b>{chips(liked, "unlike")}</div>'
        )
    if disliked:
        parts.append(
            f'<div class="vs-refine-row"><b class="vs-disliked">{ICONS["dislike"]} Disliked</b>{chips(disliked, "undislike")}</div>'
        )
    return f'<div class="vs-refine">{"".join(parts)}</div>'


def results_view(
    view: Mapping[str, Any] | None,
    *,
    liked: Sequence[Mapping[str, Any]] = (),
    disliked: Sequence[Mapping[str, Any]] = (),
    error: str | None = None,
    currency: str = "$",
    examples_hint: bool = True,
) -> str:
    """The whole results panel: error (if any), summary, refinements, cards or the empty state."""
    parts = []
    if error:
        parts.append(error_box(error))
    if view is None:
        if not error:
            parts.append(welcome(examples_hint))
        return f'<div class="vs-results">{"".join(parts)}</div>'
    parts.append(summary_bar(view))
    parts.append(refine_bar(liked, disliked))
    results = view.get("results") or []
    if results:
        parts.append(card_grid(results, currency=currency))
    else:
        parts.append(empty_results(view.get("filters_text") or "", view.get("threshold")))
    return f'<div class="vs-results">{"".join(parts)}</div>'


# --------------------------------------------------------------------------- header and catalog tab


def header(title: str, tagline: str, facts: Iterable[str]) -> str:
    pills = "".join(f'<span class="vs-pill">{esc(f)}</span>' for f in facts)
    return (
        f'<header class="vs-header"><div class="vs-brandmark" aria-hidden="true">{ICONS["camera"]}</div>'
        f'<div class="vs-heading"><h1>{esc(title)}</h1><p>{esc(tagline)}</p></div>'
        f'<div class="vs-pills">{pills}</div></header>'
    )


def stat_tiles(items: Sequence[tuple[str, Any]]) -> str:
    tiles = "".join(
        f'<div class="vs-tile"><div class="vs-tile-label">{esc(label)}</div>'
        f'<div class="vs-tile-value" title="{esc(value)}">{esc(value)}</div></div>'
        for label, value in items
    )
    return f'<div class="vs-tiles">{tiles}</div>'


def duplicate_table(pairs: Sequence[Any], threshold: float) -> str:
    if not pairs:
        return notice_box(
            f"No pair of different products scores ≥ {threshold:.2f}. Good news, or lower the threshold."
        )
    rows = "".join(
        "<tr>"
        f'<td><div class="vs-pair"><img src="{esc(image_url(p.product_a, p.image_a))}" alt="">'
        f"<div><b>{esc(p.title_a)}</b><br><code>{esc(p.product_a)}</code></div></div></td>"
        f'<td><div class="vs-pair"><img src="{esc(image_url(p.product_b, p.image_b))}" alt="">'
        f"<div><b>{esc(p.title_b)}</b><br><code>{esc(p.product_b)}</code></div></div></td>"
        f'<td class="vs-num">{p.score:.3f}</td></tr>'
        for p in pairs
    )
    return (
        f'<p class="vs-dim">{len(pairs)} pair(s) of products whose closest images score ≥ {threshold:.2f}.</p>'
        '<div class="vs-table-wrap"><table class="vs-table"><thead><tr><th>Product</th><th>Looks like</th>'
        f"<th>Similarity</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def suspect_table(suspects: Sequence[Any]) -> str:
    if not suspects:
        return notice_box("Every product's nearest neighbours share its category. Nothing looks misfiled.")
    rows = []
    for s in suspects:
        votes = ", ".join(f"{esc(cat)} ×{n}" for cat, n in s.neighbour_categories.items())
        rows.append(
            "<tr>"
            f'<td><div class="vs-pair"><img src="{esc(image_url(s.product_id, s.image))}" alt="">'
            f"<div><b>{esc(s.title)}</b><br><code>{esc(s.product_id)}</code></div></div></td>"
            f'<td><span class="vs-chip">{esc(s.category)}</span></td>'
            f'<td><span class="vs-chip vs-chip-warn">{esc(s.suggested_category)}</span>'
            f'<div class="vs-dim">neighbours: {votes}</div></td>'
            f'<td><div class="vs-pair"><img src="{esc(image_url(s.neighbour_id, s.neighbour_image))}" alt="">'
            f"<div>{esc(s.neighbour_title)}<br><code>{esc(s.neighbour_id)}</code></div></div></td>"
            f'<td class="vs-num">{s.score:.3f}</td></tr>'
        )
    return (
        f'<p class="vs-dim">{len(suspects)} product(s) whose nearest neighbours are mostly in another category.</p>'
        '<div class="vs-table-wrap"><table class="vs-table"><thead><tr><th>Product</th><th>Filed under</th>'
        "<th>Looks like</th><th>Nearest product</th><th>Similarity</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def issues_table(issues: Sequence[Any]) -> str:
    if not issues:
        return ""
    rows = "".join(f"<li>{esc(i)}</li>" for i in issues[:500])
    more = f"<li>… and {len(issues) - 500} more</li>" if len(issues) > 500 else ""
    return (
        f'<div class="vs-issues"><b>{len(issues)} row(s) skipped</b>'
        f'<ul class="vs-issue-list">{rows}{more}</ul></div>'
    )


def cropper(photo_url: str, box: tuple[float, float, float, float] = (0.1, 0.1, 0.9, 0.9)) -> str:
    """The crop tool: the photo with a draggable box (handles at the corners) and two buttons.

    ``photo_url`` is a data URL of the photo (the upload itself is not kept); static/crop.js moves the box.
    """
    x0, y0, x1, y1 = box
    handles = "".join(f'<span class="vs-h vs-h-{h}" data-h="{h}"></span>' for h in ("nw", "ne", "sw", "se"))
    style = f"left:{x0 * 100:g}%;top:{y0 * 100:g}%;width:{(x1 - x0) * 100:g}%;height:{(y1 - y0) * 100:g}%"
    return (
        '<div class="vs-cropper">'
        '<div class="vs-crop-help"><b>Crop:</b> drag the box or its corners around the item, '
        "then <b>Use this crop</b>.</div>"
        f'<div class="vs-crop-stage"><img src="{esc(file_url(photo_url))}" alt="Photo to crop" draggable="false">'
        f'<div class="vs-crop-rect" data-x0="{x0}" data-y0="{y0}" data-x1="{x1}" data-y1="{y1}" style="{style}">'
        f"{handles}</div></div>"
        '<div class="vs-crop-actions">'
        '<button class="vs-btn vs-crop-apply" data-crop="apply">Use this crop</button>'
        '<button class="vs-btn" data-crop="cancel">Cancel</button></div></div>'
    )


def example_strip(examples: Sequence[tuple[str, str]]) -> str:
    """One-tap example photos (URL, label) for demos."""
    items = "".join(
        f'<button class="vs-example" data-example="{i}" title="Search with this photo">'
        f'<img src="{esc(file_url(url))}" alt="{esc(label)}" loading="lazy"><span>{esc(label)}</span></button>'
        for i, (url, label) in enumerate(examples)
    )
    return f'<div class="vs-step">Try an example photo <span>one tap searches</span></div><div class="vs-examples">{items}</div>'


def histogram(title: str, labels: Sequence[str], counts: Sequence[int], unit: str = "products") -> str:
    """A small bar chart in HTML (bins stay in the given order, unlike a sorted plot)."""
    if not counts:
        return notice_box(f"{title}: nothing to show yet.")
    top = max(max(counts), 1)
    bars = "".join(
        f'<div class="vs-bar" title="{esc(label)}: {n} {esc(unit)}">'
        f'<span class="vs-bar-n">{n}</span>'
        f'<span class="vs-bar-fill" style="height:{100 * n / top:.1f}%"></span>'
        f'<span class="vs-bar-label">{esc(label)}</span></div>'
        for label, n in zip(labels, counts, strict=True)
    )
    return f'<div class="vs-hist"><div class="vs-hist-title">{esc(title)}</div><div class="vs-bars">{bars}</div></div>'
