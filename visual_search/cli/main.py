"""Command line: ``python -m visual_search {index,search,info,finetune,evaluate} ...``.

Each command lives in its own module (``cli/<command>.py``) with ``add_parser(sub)``, which registers its
flags and its handler through argparse's ``set_defaults(handler=...)``. Every VisualSearchError becomes one
line on stderr and exit code 2; no tracebacks for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from visual_search.core.config import Settings
from visual_search.core.errors import VisualSearchError
from visual_search.images.fetch import FetchPolicy, set_default_policy

# Imported on demand: a command pays only for its own imports (``info`` needs no torch and answers
# in a fraction of a second; ``evaluate`` alone imports pandas, torch and the training code).
COMMANDS = ("index", "search", "info", "finetune", "evaluate")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All commands, or just ``only`` (what main() runs: the other modules stay unimported)."""
    parser = argparse.ArgumentParser(
        prog="python -m visual_search",
        description="Visual product search: index a catalog and search it by photo, text or both.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if only not in COMMANDS else (only,):
        importlib.import_module(f"visual_search.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    # The operator runs the CLI: catalog and query links may point at LAN or local hosts.
    set_default_policy(FetchPolicy(allow_private=True))
    try:
        return args.handler(args, Settings.from_args(args))
    except VisualSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
