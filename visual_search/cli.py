"""Command line: ``python -m visual_search {index,search,info} ...``.

Every VisualSearchError becomes one line on stderr and exit code 2; no tracebacks for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

from .config import Settings, add_settings_arguments
from .engine import SearchEngine, SearchResponse, check_query_options
from .errors import VisualSearchError
from .evaluate import add_evaluate_parser
from .fetch import FetchPolicy, set_default_policy
from .finetune import add_finetune_parser
from .images import load_image
from .types import SearchFilters

Command = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


def _parse_attr(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip() or not val.strip():
        raise argparse.ArgumentTypeError(f"use COLUMN=VALUE, got {value!r}")
    return key.strip().lower(), val.strip()


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m visual_search",
        description="Visual product search: index a catalog and search it by photo, text or both.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="embed a catalog (CSV/Parquet) into the index")
    p.add_argument("catalog", help="CSV or Parquet with product_id, image, and optional title, price, ...")
    p.add_argument("--sync", action="store_true", help="also remove products that left the catalog")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_settings_arguments(p)

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
    p.add_argument("--remove-background", action="store_true", help="cut the object out of the photo first")
    p.add_argument("--json", action="store_true")
    add_settings_arguments(p)

    p = sub.add_parser("info", help="model, device, backend and counts")
    p.add_argument("--json", action="store_true")
    add_settings_arguments(p)

    add_finetune_parser(sub)  # registers COMMANDS["finetune"]
    add_evaluate_parser(sub)  # registers COMMANDS["evaluate"]
    return parser


@command("index")
def _index(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    engine = SearchEngine.from_settings(settings)
    bar = tqdm(total=0, unit="img", desc="embedding", disable=args.json or None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        report = engine.index_catalog(
            args.catalog, sync=args.sync, batch_size=args.batch_size, progress=progress
        )
    finally:
        bar.close()
        engine.close()
    if args.json:
        data = asdict(report)
        data["issues"] = [str(i) for i in report.issues]
        print(json.dumps(data, indent=2))
    else:
        print(report.summary())
        for issue in report.issues:
            print(f"  skipped {issue}")
    return 0


@command("search")
def _search(args: argparse.Namespace, settings: Settings) -> int:
    if not args.image and not (args.text or "").strip():
        raise VisualSearchError("Give --image PATH, --text TEXT, or both.")
    # Bad options and a bad photo fail before the model loads (the engine checks again, same words).
    filters = filters_from_args(args)
    options = check_query_options(args.top_k, args.threshold, args.text_weight)
    photo = load_image(args.image) if args.image else None
    engine = SearchEngine.from_settings(settings)
    try:
        response = engine.search(
            image=photo,
            text=args.text,
            text_weight=options.text_weight,
            filters=filters,
            top_k=options.top_k,
            score_threshold=options.score_threshold,
            remove_background=args.remove_background,
        )
    finally:
        engine.close()
    print(_response_json(response) if args.json else _response_text(response))
    return 0


@command("info")
def _info(args: argparse.Namespace, settings: Settings) -> int:
    engine = SearchEngine.from_settings(settings)
    try:
        status = engine.status()
    finally:
        engine.close()
    if args.json:
        print(json.dumps(asdict(status), indent=2, default=str))
    else:
        s = status.store
        print(f"model:     {status.model_id} (text search: {'yes' if status.supports_text else 'no'})")
        print(f"device:    {status.device}")
        print(f"backend:   {s.backend} at {s.location}")
        print(f"index:     {status.products} products, {s.points} images, built by {s.model_id or '-'}")
        print(f"indexed:   {status.last_indexed or 'never'}")
        if s.model_id and s.model_id != status.model_id:
            print(
                f"note:      searches are refused: the index was built by {s.model_id}, not {status.model_id}"
            )
    return 0


def _response_text(response: SearchResponse) -> str:
    lines = [
        f"{response.mode} search, {response.filters.describe()}, "
        f"{len(response.results)} results in {response.total_ms:.0f} ms"
    ]
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
            "total_ms": round(response.total_ms, 1),
            "results": [{k: v for k, v in asdict(r).items() if k != "payload"} for r in response.results],
        },
        indent=2,
        default=str,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The operator runs the CLI: catalog and query links may point at LAN or local hosts.
    set_default_policy(FetchPolicy(allow_private=True))
    try:
        return COMMANDS[args.command](args, Settings.from_args(args))
    except VisualSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
