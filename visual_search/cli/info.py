"""``info``: model, device, backend and counts (and whether searches are refused for a model mismatch)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from visual_search.core.config import Settings, add_settings_arguments
from visual_search.engine import SearchEngine


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="model, device, backend and counts")
    p.add_argument("--json", action="store_true")
    add_settings_arguments(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace, settings: Settings) -> int:
    engine = SearchEngine.from_settings(settings)
    try:
        status = engine.status()
    finally:
        engine.close()
    if args.json:
        print(json.dumps(asdict(status), indent=2, default=str))
        return 0
    s = status.store
    print(f"model:     {status.model_id} (text search: {'yes' if status.supports_text else 'no'})")
    print(f"device:    {status.device} (runtime: {status.runtime})")
    print(f"backend:   {s.backend} at {s.location}")
    print(f"index:     {status.products} products, {s.points} images, built by {s.model_id or '-'}")
    print(f"indexed:   {status.last_indexed or 'never'}")
    if s.model_id and s.model_id != status.model_id:
        print(f"note:      searches are refused: the index was built by {s.model_id}, not {status.model_id}")
    return 0
