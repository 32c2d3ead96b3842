"""The merchandiser's Catalog tab (admin surface only): index status, charts, import, audit and
the retrieval evaluation. None of it may be reachable from the shopper surface."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr
import pandas as pd

from ... import audit, evaluation, importer
from ...core.errors import VisualSearchError
from ...stats import PriceBin, find_products
from .. import render
from ..common import CHOICES_LIMIT, USER_ERRORS, UIContext, card_from_result, public_message

log = logging.getLogger(__name__)


def price_histogram(bins: Sequence[PriceBin], currency: str = "$") -> tuple[pd.DataFrame, list[str]]:
    """The price bins stats.py counted, as a frame and labels in price order."""
    labels = [f"{currency}{b.low:,.0f}–{b.high:,.0f}" for b in bins]
    return pd.DataFrame({"price range": labels, "products": [int(b.products) for b in bins]}), labels


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


class CatalogHandlers:
    def __init__(self, ctx: UIContext) -> None:
        self.ctx = ctx

    def product_choices(self, query: str = "") -> list[tuple[str, str]]:
        """A bounded list for the picker: the first products, or those matching what was typed
        (id, or title words by prefix); any other id can still be typed in full."""
        try:
            found = find_products(self.ctx.engine.store, query, CHOICES_LIMIT)
        except VisualSearchError as exc:
            log.warning("product list unavailable: %s", exc)
            return []
        return [(f"{c.title} · {c.product_id}", c.product_id) for c in found]

    def lookup_products(self, key: gr.KeyUpData):
        """As the merchandiser types in the picker: the products matching it (bounded lookup)."""
        return gr.update(choices=self.product_choices(key.input_value or ""))

    def status_html(self) -> str:
        try:
            status = self.ctx.engine.status()
        except VisualSearchError as exc:
            return render.error_box(public_message(exc))
        stats = self.ctx.stats()
        store = status.store
        bg = "ready" if self.ctx.engine.background_remover.available else "model not installed"
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
        stats = self.ctx.stats()
        prices, labels = price_histogram(stats.price_bins, self.ctx.options.currency)
        return (
            facet_frame(stats.categories, "category"),
            facet_frame(stats.brands, "brand"),
            render.histogram("Price distribution", labels, [int(n) for n in prices["products"]]),
        )

    def refresh(self):
        self.ctx.stats(refresh=True)
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
                self.ctx.engine,
                Path(csv_file),
                Path(zip_file) if zip_file else None,
                self.ctx.options.import_root,
                progress=on_progress,
            )
        except USER_ERRORS as exc:
            result = render.error_box(public_message(exc))
        except Exception as exc:  # noqa: BLE001
            log.exception("import failed")
            result = render.error_box(f"The import failed ({type(exc).__name__}).")
        else:
            ok = report.embedded + report.unchanged + report.payload_updated
            kind = "vs-notice" if ok else "vs-error"
            result = (
                f'<div class="{kind}" role="status"><b>Imported.</b> {render.esc(report.summary())}</div>'
                + render.issues_table([public_message(i) for i in report.issues])
            )
        return (result, *self.refresh())

    def duplicates(self, threshold: float, limit: float) -> str:
        try:
            pairs = audit.near_duplicates(self.ctx.engine, threshold=float(threshold), limit=int(limit))
        except USER_ERRORS as exc:
            return render.error_box(public_message(exc))
        return render.duplicate_table(pairs, float(threshold))

    def suspects(self, k: float, limit: float) -> str:
        try:
            found = audit.miscategorised(self.ctx.engine, k=int(k), limit=int(limit))
        except USER_ERRORS as exc:
            return render.error_box(public_message(exc))
        return render.suspect_table(found)

    def neighbours(self, product_id: str | None, k: float) -> str:
        if not product_id:
            return render.error_box("Pick a product (or type its id) to see its nearest neighbours.")
        try:
            found = audit.neighbours(self.ctx.engine, str(product_id).strip(), k=int(k))
        except USER_ERRORS as exc:
            return render.error_box(public_message(exc))
        if not found:
            return render.notice_box("No other product in the index.")
        return render.card_grid(
            [card_from_result(r) for r in found], currency=self.ctx.options.currency, actions=False
        )

    def evaluate(self, n: float, remove_background: bool, progress=gr.Progress()) -> str:
        """Synthetic shopper photos of indexed products, searched in the live index (the CLI's table)."""

        def on_progress(done: int, total: int) -> None:
            if total:
                progress(done / total, desc=f"query {done} of {total}")

        try:
            report = evaluation.live_synthetic_eval(
                self.ctx.engine, n=int(n), remove_background=bool(remove_background), progress=on_progress
            )
        except USER_ERRORS as exc:
            return render.error_box(public_message(exc))
        return evaluation.format_markdown([report], title="Retrieval evaluation on the live index")


def build_catalog_tab(ctx: UIContext) -> None:
    h = CatalogHandlers(ctx)
    private = {"api_visibility": "private"}
    with gr.Row():
        gr.HTML('<h2 class="vs-section">Index status</h2>')
        refresh_btn = gr.Button("⟳ Refresh", size="sm", scale=0, min_width=100, elem_id="refresh-catalog")
    status = gr.HTML(h.status_html(), elem_id="index-status")
    cat_df, brand_df, price_df = h.charts()
    plot = {"y": "products", "sort": "-y", "x_label_angle": -30, "height": 280, "min_width": 280}
    with gr.Row(elem_id="catalog-charts"):
        cat_plot = gr.BarPlot(cat_df, x="category", title="Products per category", y_lim=[0, None], **plot)
        brand_plot = gr.BarPlot(
            brand_df, x="brand", title="Products per brand (top 20)", y_lim=[0, None], **plot
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
                label="Images (.zip, optional)", file_types=[".zip"], type="filepath", elem_id="import-zip"
            )
        import_btn = gr.Button("Import and index", variant="primary", elem_id="import-btn")
        import_report = gr.HTML("", elem_id="import-report")
    with gr.Accordion("Catalog audit", open=True, elem_id="audit"), gr.Tabs():
        product = _audit_tabs(h, private)

    catalog_outputs = [status, cat_plot, brand_plot, price_plot, product]
    refresh_btn.click(h.refresh, None, catalog_outputs, **private)
    import_btn.click(
        h.import_catalog,
        [csv_file, zip_file],
        [import_report, *catalog_outputs],
        concurrency_limit=1,
        concurrency_id="indexing",
        **private,
    )


def _audit_tabs(h: CatalogHandlers, private: dict) -> gr.Dropdown:
    """Near-duplicates, miscategorised, nearest neighbours, evaluation; returns the product picker."""
    with gr.Tab("Near-duplicates"):
        with gr.Row():
            dup_threshold = gr.Slider(0.5, 1.0, value=0.92, step=0.01, label="Similarity ≥")
            dup_limit = gr.Slider(5, 200, value=50, step=5, label="Show at most")
        dup_btn = gr.Button("Find near-duplicate products", elem_id="dup-btn")
        dup_out = gr.HTML("", elem_id="dup-out")
    with gr.Tab("Likely miscategorised"):
        with gr.Row():
            mis_k = gr.Slider(3, 20, value=5, step=1, label="Neighbours to consult")
            mis_limit = gr.Slider(5, 200, value=50, step=5, label="Show at most")
        mis_btn = gr.Button("Find products filed in the wrong category", elem_id="mis-btn")
        mis_out = gr.HTML("", elem_id="mis-out")
    with gr.Tab("Nearest neighbours"):
        with gr.Row():
            product = gr.Dropdown(
                choices=h.product_choices(),
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
    dup_btn.click(h.duplicates, [dup_threshold, dup_limit], dup_out, **private)
    mis_btn.click(h.suspects, [mis_k, mis_limit], mis_out, **private)
    nn_btn.click(h.neighbours, [product, nn_k], nn_out, **private)
    product.key_up(
        h.lookup_products, None, product, trigger_mode="always_last", show_progress="hidden", **private
    )
    eval_btn.click(h.evaluate, [eval_n, eval_bg], eval_out, concurrency_limit=1, **private)
    return product
