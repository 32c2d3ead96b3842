"""``index``: embed a catalog (CSV/Parquet) into the index."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from visual_search.core.config import Settings, add_settings_arguments
from visual_search.core.io import progress_bar
from visual_search.engine import SearchEngine


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("index", help="embed a catalog (CSV/Parquet) into the index")
    p.add_argument("catalog", help="CSV or Parquet with product_id, image, and optional title, price, ...")
    p.add_argument("--sync", action="store_true", help="also remove products that left the catalog")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--object-views",
        action="store_true",
        help="also index each image's background-removed cut-out (needs the u2netp model; doubles the "
        "points; a small measured gain, see bench/bench_object_views.py)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_settings_arguments(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace, settings: Settings) -> int:
    engine = SearchEngine.from_settings(settings)
    engine.object_views = bool(args.object_views)
    try:
        with progress_bar("embedding", "img", disable=args.json or None) as progress:
            report = engine.index_catalog(
                args.catalog, sync=args.sync, batch_size=args.batch_size, progress=progress
            )
    finally:
        engine.close()
    if args.json:
        data = asdict(report)
        data["issues"] = [str(i) for i in report.issues]
        print(json.dumps(data, indent=2))
    else:
        print(report.summary())
        for note in report.notes:
            print(f"  note: {note}")
        for issue in report.issues:
            print(f"  skipped {issue}")
    return 0
