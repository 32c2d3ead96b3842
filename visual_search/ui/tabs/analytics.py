"""Pilot analytics (admin surface only): the log summary and its CSV export."""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from .. import render
from ..common import UIContext


class AnalyticsHandlers:
    def __init__(self, ctx: UIContext) -> None:
        self.ctx = ctx

    def summary_html(self) -> str:
        search_log = self.ctx.search_log
        if search_log is None:
            return render.notice_box("Analytics logging is off.")
        s = search_log.summary()
        by_mode = ", ".join(f"{m}: {n}" for m, n in (s.get("searches_by_mode") or {}).items()) or "–"
        photos = "stored (--log-photos)" if search_log.store_photos else "not stored"
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
                ("Log file", str(search_log.path)),
            ]
        )

    def export_csv(self):
        if self.ctx.search_log is None:
            return gr.update(value=None, visible=False), render.error_box("Analytics logging is off.")
        folder = Path(self.ctx.options.export_dir or tempfile.mkdtemp(prefix="vs-export-"))
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.ctx.search_log.export_csv(folder / f"pilot-log-{stamp}.csv")
        return gr.update(value=str(path), visible=True), self.summary_html()


def build_analytics_tab(ctx: UIContext) -> None:
    h = AnalyticsHandlers(ctx)
    private = {"api_visibility": "private"}
    gr.Markdown(
        "Every search (mode, filters, top results, latency) and every click, like and dislike is "
        "appended to a local log. Query photos are **not** stored unless the app was started "
        "with `--log-photos`."
    )
    summary = gr.HTML(h.summary_html(), elem_id="analytics-summary")
    with gr.Row():
        refresh = gr.Button("⟳ Refresh", elem_id="analytics-refresh")
        export_btn = gr.Button("Export CSV", variant="primary", elem_id="export-btn")
    export_file = gr.File(label="Pilot log (CSV)", visible=False, interactive=False, elem_id="export-file")
    refresh.click(h.summary_html, None, summary, **private)
    export_btn.click(h.export_csv, None, [export_file, summary], **private)
