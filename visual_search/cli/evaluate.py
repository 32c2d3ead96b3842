"""``evaluate``: index the catalog with each --model, run a query set, print Recall@k / MRR / nDCG and latency.

The measuring lives in visual_search.evaluation; this module turns flags into query sets and runs, and
writes the Markdown/JSON reports.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visual_search.catalog import Catalog, read_catalog
from visual_search.core.config import Settings
from visual_search.core.errors import VisualSearchError
from visual_search.core.io import progress_bar
from visual_search.encoders import create_encoder
from visual_search.engine import SearchEngine
from visual_search.evaluation import (
    DEFAULT_DEPTH,
    DEFAULT_PIPELINE,
    EvalReport,
    QuerySet,
    SourceImage,
    evaluate_engine,
    format_markdown,
    format_pipeline_table,
    holdout_queries,
    load_queries,
    shopper_queries,
    slug,
    synthetic_queries,
)
from visual_search.images.background import BackgroundRemovalUnavailable
from visual_search.query_views import MODES
from visual_search.store import open_store
from visual_search.training.augment import QUERY_KINDS


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` (flags and handler) on the CLI's subparsers."""
    p = sub.add_parser(
        "evaluate",
        help="measure Recall@k / MRR / nDCG and latency for one or more models",
        description="Index the catalog with each --model (separate index per model under "
        "<data-dir>/eval/, reused across runs), run the query set, print a Markdown table.",
    )
    p.add_argument("--catalog", required=True, help="catalog CSV/Parquet to index and search")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--queries", help="query CSV: query_image and/or query_text, expected, [filters]")
    group.add_argument("--synthetic", type=int, metavar="N", help="N synthetic shopper photos (default: 50)")
    group.add_argument(
        "--shopper",
        type=int,
        metavar="N",
        help="N SYNTHETIC shopper photos per kind (handheld, close_up, clutter), reported per kind; "
        "with --holdout they are made from the held-out photos only",
    )
    p.add_argument(
        "--holdout",
        action="store_true",
        help="hold one image of multi-image products out of the index and query with it (or, with "
        "--shopper, build the shopper photos from it)",
    )
    p.add_argument(
        "--kinds",
        default=",".join(QUERY_KINDS),
        help=f"query kinds for --shopper, comma-separated (default {','.join(QUERY_KINDS)})",
    )
    p.add_argument(
        "--pipeline",
        help="photo query pipeline(s), comma-separated: auto (object-aware views, fused; the default), "
        "off (whole photo), on (background removed); one row per pipeline",
    )
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="SPEC",
        help="model spec; repeat to compare (VS_MODEL)",
    )
    p.add_argument(
        "--remove-background",
        choices=("off", "on", "both"),
        help="today's engine.search without / with / both ways, instead of --pipeline",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="calibrate each model's default score threshold from this run (the first-result score that "
        "best separates right from wrong answers) and store it in <data-dir>/calibration.json, where "
        "the app reads it",
    )
    p.add_argument("--out-json", help="write the full report (per query too) as JSON")
    p.add_argument("--out-md", help="write the Markdown table to this file")
    p.add_argument(
        "--data-dir", help="work folder; indexes go to <data-dir>/eval/ (VS_DATA_DIR; default ./data)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic/holdout queries (default 0)")
    p.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help="results per query for MRR (default 100)")
    p.add_argument("--batch-size", type=int, default=32, help="indexing batch size")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (VS_DEVICE; default: CUDA when present)")
    p.add_argument("--bg-model", help="rembg model for background removal (VS_BG_MODEL; default u2netp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # cli.main builds Settings from every command's namespace
    p.set_defaults(handler=run, model=None, qdrant_url=None, qdrant_api_key=None, collection=None)
    return p


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _index_dir(root: Path, model_id: str, catalog: Path, holdout_seed: int | None) -> Path:
    key = f"{model_id}|{catalog}|{holdout_seed}"
    suffix = f"-holdout{holdout_seed}" if holdout_seed is not None else ""
    return root / "index" / f"{slug(model_id)}{suffix}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with_model = Path("/proc/cpuinfo")
    if with_model.is_file():
        for line in with_model.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The ``evaluate`` subcommand: build the query set, evaluate each model, print and write reports."""
    started = time.perf_counter()
    if args.holdout and (args.queries or args.synthetic is not None):
        raise VisualSearchError(
            "--holdout goes with --shopper N or on its own, not with --queries/--synthetic"
        )
    if args.remove_background and args.pipeline:
        raise VisualSearchError("Give --pipeline or --remove-background, not both")
    runs = _runs(args)
    root = Path(settings.data_dir) / "eval"
    catalog = read_catalog(args.catalog)
    for issue in catalog.issues:
        _say(f"catalog: skipped {issue}")
    plan = _query_plan(args, catalog, root)
    reports: list[EvalReport] = []
    run_notes: list[str] = []
    for spec in args.models or [settings.model]:
        reports += _evaluate_model(spec, plan, runs, args, settings, root, run_notes)
    markdown = format_markdown(reports)
    if any(r.pipeline for r in reports) and (args.shopper is not None or len(reports) > 1):
        markdown += "\n" + format_pipeline_table(reports)
    if run_notes:
        markdown += "\n" + "\n".join(f"- {note}" for note in run_notes) + "\n"
    if args.calibrate:
        markdown += "\n" + calibrate_reports(reports, Path(settings.data_dir))
    print(markdown)
    if args.out_md:
        Path(args.out_md).write_text(markdown, encoding="utf-8")
    if args.out_json:
        _write_json(Path(args.out_json), plan, reports, time.perf_counter() - started)
    return 0


def calibrate_reports(reports: list[EvalReport], data_dir: Path) -> str:
    """Calibrate and store one threshold per model (from its default-pipeline row when there is
    one, else its first row); returns a Markdown section saying what was stored."""
    from visual_search.evaluation.calibration import CalibrationError, calibrate_report, save_calibration

    lines = [
        "Calibrated score thresholds and colour weights (stored in calibration.json in the data dir; "
        "the app's defaults):",
        "",
        "| model | threshold | precision | recall | wrong let through | colour weight | from |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    by_model: dict[str, list[EvalReport]] = {}
    for report in reports:
        by_model.setdefault(report.model_id, []).append(report)
    notes = []
    for model_id, rows in by_model.items():
        row = next((r for r in rows if r.pipeline == DEFAULT_PIPELINE), rows[0])
        try:
            calibration = calibrate_report(row)
        except CalibrationError as exc:
            notes.append(f"- {model_id}: not calibrated: {exc}.")
            continue
        save_calibration(data_dir, model_id, calibration)
        _say(f"{model_id}: {calibration.summary()}")
        lines.append(
            f"| {model_id} | {calibration.threshold:.3f} | {calibration.precision:.3f} | "
            f"{calibration.recall:.3f} | {calibration.false_positive_rate:.3f} | {_colour_cell(calibration)} | "
            f"{calibration.source} |"
        )
    return "\n".join(lines + [""] + notes) + "\n"


def _colour_cell(calibration: Any) -> str:
    if calibration.colour_weight is None:
        return "not calibrated (needs the auto pipeline)"
    return (
        f"{calibration.colour_weight:.2f} (R@1 {calibration.colour_r1_off:.3f} -> {calibration.colour_r1:.3f}, "
        f"{calibration.colour_queries} queries)"
    )


@dataclass(frozen=True)
class _Plan:
    """What to index (the catalog, or what is left of it after a holdout) and what to ask."""

    catalog: Catalog  # as read: its path keys the index folder
    index_catalog: Catalog
    query_set: QuerySet
    holdout_seed: int | None


def _query_plan(args: argparse.Namespace, catalog: Catalog, root: Path) -> _Plan:
    seed = args.seed
    if args.queries:
        return _Plan(catalog, catalog, load_queries(args.queries), None)
    if args.shopper is not None:
        return _shopper_plan(args, catalog, root)
    if args.holdout:
        index_catalog, query_set = holdout_queries(catalog, seed=seed)
        return _Plan(catalog, index_catalog, query_set, seed)
    n = args.synthetic if args.synthetic is not None else 50
    folder = root / "queries" / f"synthetic-{slug(catalog.path.stem)}-n{n}-seed{seed}"
    query_set = synthetic_queries(catalog, n=n, out_dir=folder, seed=seed)
    _say(f"{len(query_set)} synthetic shopper photos in {folder}")
    return _Plan(catalog, catalog, query_set, None)


def _shopper_plan(args: argparse.Namespace, catalog: Catalog, root: Path) -> _Plan:
    """--shopper N: synthetic shopper photos per kind, from the catalog or (--holdout) held-out photos."""
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    source: Any = catalog
    index_catalog, holdout_seed, note = catalog, None, ""
    if args.holdout:
        index_catalog, held = holdout_queries(catalog, seed=args.seed)
        holdout_seed = args.seed
        source = [
            SourceImage(q.expected[0], 0, str(q.image), q.category)
            for q in held  # type: ignore[arg-type]
        ]
        note = (
            f"Made from {len(held)} held-out photos (not in the index; holdout seed {args.seed}) "
            "of the multi-image products."
        )
    tag = "-holdout" if args.holdout else ""
    folder = root / "queries" / f"shopper{tag}-{slug(catalog.path.stem)}-n{args.shopper}-seed{args.seed}"
    query_set = shopper_queries(
        source, n=args.shopper, out_dir=folder, seed=args.seed, kinds=kinds,
        distractors=index_catalog, description=note,
    )  # fmt: skip
    _say(f"{len(query_set)} synthetic shopper photos in {folder}")
    return _Plan(catalog, index_catalog, query_set, holdout_seed)


def _evaluate_model(
    spec: str,
    plan: _Plan,
    runs: list[tuple[bool, str | None]],
    args: argparse.Namespace,
    settings: Settings,
    root: Path,
    run_notes: list[str],
) -> list[EvalReport]:
    """Index the catalog with one model (its own index folder, reused across runs), then one report per
    (background removal, pipeline) run."""
    encoder = create_encoder(spec, device=settings.device, runtime=settings.runtime)
    index_dir = _index_dir(root, encoder.model_id, plan.catalog.path, plan.holdout_seed)
    engine = SearchEngine(
        encoder,
        open_store(index_dir, None, None),
        bg_model=settings.bg_model,
        colour_weight=settings.colour_weight,  # VS_COLOUR_WEIGHT=0 measures auto without the colour re-rank
    )
    reports: list[EvalReport] = []
    try:
        index_report = engine.index_catalog(plan.index_catalog, sync=True, batch_size=args.batch_size)
        _say(f"{encoder.model_id}: index {index_dir}: {index_report.summary()}")
        for bg, pipeline in runs:
            if pipeline is None and bg and not _background_ready(engine, args.remove_background, run_notes):
                continue  # legacy --remove-background both: no "on" row
            if pipeline in ("on", "auto") and not engine.background_remover.available:
                _note(
                    run_notes,
                    f"Background removal is not available: the {pipeline} pipeline searched whole photos.",
                )
            desc = f"{spec} [{pipeline or ('bg on' if bg else 'bg off')}]"
            with progress_bar(desc, "query", disable=args.no_progress or None, file=sys.stderr) as tick:
                reports.append(
                    evaluate_engine(
                        engine, plan.query_set, bg, depth=args.depth, progress=tick, pipeline=pipeline
                    )
                )
    finally:
        engine.close()
        del engine, encoder
        gc.collect()
    return reports


def _note(run_notes: list[str], note: str) -> None:
    """A note for the report's footer, said once on stderr as it happens."""
    if note not in run_notes:
        run_notes.append(note)
        _say(note)


def _write_json(path: Path, plan: _Plan, reports: list[EvalReport], seconds: float) -> None:
    query_set = plan.query_set
    data = {
        "query_set": {
            "name": query_set.name,
            "description": query_set.description,
            "synthetic": query_set.synthetic,
            "size": len(query_set),
            "folder": str(query_set.folder) if query_set.folder else None,
        },
        "catalog": str(plan.catalog.path),
        "command": "python -m visual_search " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "seconds": round(seconds, 1),
        "reports": [r.to_dict() for r in reports],
    }
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _runs(args: argparse.Namespace) -> list[tuple[bool, str | None]]:
    """(remove_background, pipeline) per report row: legacy --remove-background rows, else the
    --pipeline list (default: the app's default pipeline)."""
    if args.remove_background:
        return [
            (bg, None) for bg in {"off": [False], "on": [True], "both": [False, True]}[args.remove_background]
        ]
    names = [p.strip() for p in (args.pipeline or DEFAULT_PIPELINE).split(",") if p.strip()]
    unknown = [p for p in names if p not in MODES]
    if unknown or not names:
        raise VisualSearchError(
            f"Unknown pipeline {', '.join(unknown) or '(none)'}; use one or more of {', '.join(MODES)}"
        )
    return [(p == "on", p) for p in dict.fromkeys(names)]


def _background_ready(engine: Any, mode: str, run_notes: list[str]) -> bool:
    try:
        engine.background_remover.session()
        return True
    except BackgroundRemovalUnavailable as exc:
        if mode == "on":
            raise VisualSearchError(
                f"--remove-background on cannot run. {str(exc).replace(' Search continues without background removal.', '')}"
                " Use --remove-background off, or install the model."
            ) from None
        _note(run_notes, f"No background-removal rows: {exc}")
        return False
