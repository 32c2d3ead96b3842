"""``search``: by photo, text, or both, with filters; prints a table or JSON.

A photo goes through the object-aware pipeline (``--background auto``, the default, as in the app);
``--background off`` searches the whole photo, ``on`` the cut-out. When the photo holds several items,
the output lists them and ``--box N`` searches item N (1 = the largest/most central, as the app's chips).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from visual_search.core.config import Settings, add_settings_arguments
from visual_search.core.errors import VisualSearchError
from visual_search.core.query_options import DEFAULT_BACKGROUND, check_query_options
from visual_search.core.types import SearchFilters
from visual_search.engine import SearchEngine, SearchResponse
from visual_search.images.load import load_image
from visual_search.query_views import MODES


def _parse_attr(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip() or not val.strip():
        raise argparse.ArgumentTypeError(f"use COLUMN=VALUE, got {value!r}")
    return key.strip().lower(), val.strip()


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("search", help="search by photo, text, or both")
    p.add_argument("--image", help="photo path or http(s) URL")
    p.add_argument("--text", help="text query, e.g. 'red leather handbag'")
    p.add_argument("--text-weight", type=float, default=0.5, help="weight of the text with --image (0..1)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--category", action="append", help="repeat for any-of")
    p.add_argument("--brand", action="append", help="repeat for any-of")
    p.add_argument("--min-price", type=float)
    p.add_argument("--max-price", type=float)
    p.add_argument(
        "--attr", action="append", type=_parse_attr, metavar="COLUMN=VALUE", help="other catalog column"
    )
    p.add_argument("--threshold", type=float, help="minimum cosine score")
    p.add_argument(
        "--background",
        choices=MODES,
        default=None,
        help="how a photo is searched: auto (default: the item's cut-out and box, best match per product), "
        "off (the whole photo), on (the cut-out on white)",
    )
    p.add_argument(
        "--box",
        type=int,
        metavar="N",
        help="search item N of the photo (1 = the largest/most central; the output lists the items)",
    )
    p.add_argument(
        "--remove-background", action="store_true", help="same as --background on (kept for old scripts)"
    )
    p.add_argument("--json", action="store_true")
    add_settings_arguments(p)
    p.set_defaults(handler=run)
    return p


def filters_from_args(args: argparse.Namespace) -> SearchFilters:
    attributes: dict[str, tuple[str, ...]] = {}
    for key, val in args.attr or ():
        attributes[key] = (*attributes.get(key, ()), val)
    return SearchFilters(
        categories=tuple(args.category or ()),
        brands=tuple(args.brand or ()),
        min_price=args.min_price,
        max_price=args.max_price,
        attributes=attributes,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.image and not (args.text or "").strip():
        raise VisualSearchError("Give --image PATH, --text TEXT, or both.")
    # Bad options and a bad photo fail before the model loads (the engine checks again, same words).
    filters = filters_from_args(args)
    background = args.background or ("on" if args.remove_background else DEFAULT_BACKGROUND)
    if args.remove_background and background != "on":
        raise VisualSearchError("--remove-background means --background on; drop one of them.")
    if args.box is not None and args.box < 1:
        raise VisualSearchError(f"--box counts items from 1, got {args.box}.")
    if args.box is not None and not args.image:
        raise VisualSearchError("--box picks an item of the photo; give --image too.")
    if args.box is not None and background == "off":
        raise VisualSearchError(
            "--box picks an item found by background removal; use --background auto or on."
        )
    box_index = None if args.box is None else args.box - 1
    options = check_query_options(
        args.top_k, args.threshold, args.text_weight, background=background, box_index=box_index
    )
    photo = load_image(args.image) if args.image else None
    engine = SearchEngine.from_settings(settings)
    try:
        if photo is None:
            response = engine.search(
                text=args.text, filters=filters, top_k=options.top_k, score_threshold=options.score_threshold
            )
        else:
            response = engine.search_photo(
                photo,
                background=options.background,
                box_index=options.box_index,
                text=args.text,
                text_weight=options.text_weight,
                filters=filters,
                top_k=options.top_k,
                score_threshold=options.score_threshold,
            )
    finally:
        engine.close()
    print(_response_json(response) if args.json else _response_text(response))
    return 0


def _response_text(response: SearchResponse) -> str:
    lines = [
        f"{response.mode} search, {response.filters.describe()}, "
        f"{len(response.results)} results in {response.total_ms:.0f} ms"
    ]
    if response.pipeline is not None:
        views = " + ".join(v.label for v in response.views)
        lines.append(f"background {response.pipeline}: searched {views}")
    if len(response.objects) > 1 and response.box_index is not None:
        items = ", ".join(
            f"{i}: x {o.x0:.2f}-{o.x1:.2f}, y {o.y0:.2f}-{o.y1:.2f}"
            for i, o in enumerate(response.objects, 1)
        )
        lines.append(
            f"{len(response.objects)} items in the photo ({items}); searched item {response.box_index + 1} "
            "(--box N picks another)"
        )
    lines += [f"note: {note}" for note in response.notes]
    for rank, r in enumerate(response.results, 1):
        price = f"{r.price:.2f}" if r.price is not None else "-"
        lines.append(f"{rank:>3}. {r.score:.3f}  {r.product_id}  {r.title}  [{r.category or '-'}]  {price}")
    if not response.results:
        lines.append("No product above the threshold; lower --threshold or remove filters.")
    return "\n".join(lines)


def _response_json(response: SearchResponse) -> str:
    return json.dumps(
        {
            "mode": response.mode,
            "filters": asdict(response.filters),
            "notes": response.notes,
            "background": response.pipeline,
            "views": [v.name for v in response.views],
            "objects": [asdict(o) for o in response.objects],
            "box": None if response.box_index is None else response.box_index + 1,
            "total_ms": round(response.total_ms, 1),
            "results": [{k: v for k, v in asdict(r).items() if k != "payload"} for r in response.results],
        },
        indent=2,
        default=str,
    )
