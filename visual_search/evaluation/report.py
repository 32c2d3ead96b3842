"""Markdown tables of EvalReports: one row per model x setting, and per query kind for pipelines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from visual_search.evaluation.metrics import (
    EvalReport,
    Metrics,
    QueryResult,
    percentile,
)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ms(p50: float, p95: float) -> str:
    if math.isnan(p50):
        return "-"
    return f"{p50:.0f} / {p95:.0f}"


def format_markdown(reports: Sequence[EvalReport], title: str = "Retrieval evaluation") -> str:
    """Markdown: a comparison table (one row per report), per-category Recall@10, query sets, notes."""
    if not reports:
        return f"## {title}\n\nNo results.\n"
    lines = [f"## {title}", ""]
    seen_sets: dict[str, str] = {}
    for r in reports:
        seen_sets.setdefault(r.query_set, r.query_set_description)
    for name, description in seen_sets.items():
        flag = "**SYNTHETIC** " if any(r.synthetic and r.query_set == name for r in reports) else ""
        lines.append(f"- Query set {flag}`{name}`: {description or name}")
    lines += [
        "",
        "| model | query pipeline | queries | R@1 | R@5 | R@10 | MRR | nDCG@10 "
        "| embed ms p50 / p95 | search ms p50 / p95 | total ms p50 / p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        o, lat = r.overall, r.latency
        lines.append(
            f"| {_cell(_model_name(r.label, r))} | {_setting(r)} | {r.n_queries}"
            f"{' (synthetic)' if r.synthetic else ''} | {_num(o.recall_at_1)} | {_num(o.recall_at_5)} "
            f"| {_num(o.recall_at_10)} | {_num(o.mrr)} | {_num(o.ndcg_at_10)} "
            f"| {_ms(lat.embed_p50_ms, lat.embed_p95_ms)} | {_ms(lat.search_p50_ms, lat.search_p95_ms)} "
            f"| {_ms(lat.total_p50_ms, lat.total_p95_ms)} |"
        )
    categories = sorted({c for r in reports for c in r.per_category})
    if categories:
        lines += ["", "### Recall@10 per category (queries in brackets)", ""]
        headers = [f"{_model_name(r.label, r)} ({_setting(r)})" for r in reports]
        lines.append("| category | " + " | ".join(_cell(h) for h in headers) + " |")
        lines.append("|---|" + "---:|" * len(reports))
        for c in categories:
            cells = []
            for r in reports:
                m = r.per_category.get(c)
                cells.append(f"{_num(m.recall_at_10)} ({m.n})" if m else "-")
            lines.append(f"| {_cell(c)} | " + " | ".join(cells) + " |")
    notes = [(r, note) for r in reports for note in r.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {_cell(_model_name(r.label, r))}: {note}" for r, note in notes]
    return "\n".join(lines) + "\n"


def _model_name(label: str, report: EvalReport) -> str:
    for suffix in (" + background removal", f" [{report.pipeline}]"):
        if label.endswith(suffix):
            return label[: -len(suffix)]
    return label


def _setting(report: EvalReport) -> str:
    """The photo pipeline: auto/off/on (legacy rows: background removal off/on)."""
    return report.pipeline or ("on" if report.remove_background else "off")


def format_pipeline_table(reports: Sequence[EvalReport], title: str = "Query pipelines per kind") -> str:
    """Markdown, one row per report (pipeline) x query kind (category) plus an ``all`` row:
    R@1, R@10, MRR and the p50 of the whole query's time (load + views + embed + search)."""
    if not reports:
        return f"## {title}\n\nNo results.\n"
    models = {r.model_id for r in reports}
    lines = [f"## {title}", ""]
    seen: dict[str, str] = {}
    for r in reports:
        seen.setdefault(r.query_set, r.query_set_description)
    for name, description in seen.items():
        flag = "**SYNTHETIC** " if any(r.synthetic and r.query_set == name for r in reports) else ""
        lines.append(f"- Query set {flag}`{name}`: {description or name}")
    model_head = "model | " if len(models) > 1 else ""
    lines += [
        "",
        f"| {model_head}pipeline | kind | queries | R@1 | R@10 | MRR | p50 ms |",
        "|" + ("---|" if model_head else "") + "---|---|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        groups: dict[str, list[QueryResult]] = {}
        for q in r.queries:
            groups.setdefault(q.category, []).append(q)
        for kind in [*sorted(groups), "all"]:
            rows = r.queries if kind == "all" else groups[kind]
            m = Metrics.of(rows)
            p50 = percentile([q.total_ms for q in rows if q.error is None], 50)
            model_cell = f"{_cell(_model_name(r.label, r))} | " if model_head else ""
            kind_cell = f"**{kind}**" if kind == "all" else _cell(kind)
            lines.append(
                f"| {model_cell}{_setting(r)} | {kind_cell} | {m.n}{' (synthetic)' if r.synthetic else ''} "
                f"| {_num(m.recall_at_1)} | {_num(m.recall_at_10)} | {_num(m.mrr)} "
                f"| {'-' if math.isnan(p50) else f'{p50:.0f}'} |"
            )
    if len(models) == 1:
        lines += ["", f"Model: `{next(iter(models))}`."]
    return "\n".join(lines) + "\n"
