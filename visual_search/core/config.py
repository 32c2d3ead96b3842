"""Settings from flags and environment, in one dataclass shared by the CLI and the app."""

from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .cluster import RemoteOptions, add_remote_arguments

DEFAULT_MODEL = "ViT-B-32@laion2b_s34b_b79k"
DEFAULT_BG_MODEL = "u2netp"
DEFAULT_LOG_DAYS = 30  # pilot analytics retention (events, query photos, exports)
SAMPLE_CATALOG = Path(__file__).resolve().parents[2] / "sample_catalog" / "catalog.csv"


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    device: str | None = None
    data_dir: Path = Path("data")
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    collection: str = "products"
    bg_model: str = DEFAULT_BG_MODEL
    log_days: int = DEFAULT_LOG_DAYS  # 0 keeps the analytics log forever
    runtime: str = "auto"  # torch | onnx | onnx-int8 | auto (visual_search.device.pick_runtime)
    remote: RemoteOptions = RemoteOptions()  # cluster layout and uploads (remote backend only)
    indexing_threads: int = 0  # HNSW build threads of the embedded index; 0 = all cores
    # Weight of the colour re-rank of the auto photo query (query_views.COLOUR_WEIGHT); 0 = off.
    colour_weight: float | None = None  # None: the measured default

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            model=env.get("VS_MODEL", DEFAULT_MODEL),
            device=device_from_env(),
            data_dir=Path(env.get("VS_DATA_DIR", "data")),
            qdrant_url=env.get("QDRANT_URL") or None,
            qdrant_api_key=env.get("QDRANT_API_KEY") or None,
            collection=env.get("VS_COLLECTION", "products"),
            bg_model=env.get("VS_BG_MODEL", DEFAULT_BG_MODEL),
            log_days=_log_days(env.get("VS_LOG_DAYS")),
            runtime=runtime_from_env() or "auto",
            remote=RemoteOptions.from_env(env),
            indexing_threads=_indexing_threads(env.get("VS_INDEXING_THREADS")),
            colour_weight=_colour_weight(env.get("VS_COLOUR_WEIGHT")),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        base = cls.from_env()
        return cls(
            model=args.model or base.model,
            device=args.device or base.device,
            data_dir=Path(args.data_dir) if args.data_dir else base.data_dir,
            qdrant_url=args.qdrant_url or base.qdrant_url,
            qdrant_api_key=args.qdrant_api_key or base.qdrant_api_key,
            collection=args.collection or base.collection,
            bg_model=args.bg_model or base.bg_model,
            log_days=base.log_days if getattr(args, "log_days", None) is None else args.log_days,
            runtime=getattr(args, "runtime", None) or base.runtime,
            remote=base.remote.with_args(args),
            indexing_threads=base.indexing_threads
            if getattr(args, "indexing_threads", None) is None
            else args.indexing_threads,
            colour_weight=base.colour_weight,
        )


def device_from_env() -> str | None:
    """VS_DEVICE (cpu, cuda, cuda:1, mps), read here only; device.pick_device falls back to it."""
    return os.environ.get("VS_DEVICE") or None


def runtime_from_env() -> str | None:
    """VS_RUNTIME (torch, onnx, onnx-int8, auto), read here only; device.pick_runtime falls back to it."""
    return os.environ.get("VS_RUNTIME") or None


def _indexing_threads(value: str | None) -> int:
    """VS_INDEXING_THREADS; unset or unreadable gives 0 (Qdrant uses every core)."""
    try:
        threads = int(value) if value and value.strip() else 0
    except ValueError:
        threads = -1
    if threads < 0:
        warnings.warn(f"VS_INDEXING_THREADS={value!r} is not 0 or more; using 0 (all cores)", stacklevel=2)
        return 0
    return threads


def _colour_weight(value: str | None) -> float | None:
    """VS_COLOUR_WEIGHT (0 turns the colour re-rank off); unset or unreadable gives None (the default)."""
    if not value or not value.strip():
        return None
    try:
        weight = float(value)
    except ValueError:
        weight = -1.0
    if not 0.0 <= weight <= 10.0:  # also refuses nan and inf
        warnings.warn(
            f"VS_COLOUR_WEIGHT={value!r} is not a number from 0 to 10; using the default", stacklevel=2
        )
        return None
    return weight


def _log_days(value: str | None) -> int:
    """VS_LOG_DAYS as days; unset or unreadable gives the default (never 'forever' by accident)."""
    try:
        days = int(value) if value and value.strip() else DEFAULT_LOG_DAYS
    except ValueError:
        days = -1
    if days < 0:
        warnings.warn(f"VS_LOG_DAYS={value!r} is not 0 or more days; using {DEFAULT_LOG_DAYS}", stacklevel=2)
        return DEFAULT_LOG_DAYS
    return days


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of days, got {value!r}") from None
    if days < 0:
        raise argparse.ArgumentTypeError(f"0 or more days, got {days}")
    return days


def _threads(value: str) -> int:
    try:
        threads = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of threads, got {value!r}") from None
    if threads < 0:
        raise argparse.ArgumentTypeError(f"0 (all cores) or more threads, got {threads}")
    return threads


def add_log_days_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--log-days N`` for the app: pilot analytics retention (pass Settings.log_days to
    ``SearchLog(retention_days=...)``)."""
    parser.add_argument(
        "--log-days",
        type=_days,
        help=f"delete pilot analytics events, query photos and exports older than N days, at start and "
        f"daily (VS_LOG_DAYS; default {DEFAULT_LOG_DAYS}; 0 keeps them forever)",
    )


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every entry point shares; environment variables give the defaults."""
    g = parser.add_argument_group("model and index (flags override environment variables)")
    g.add_argument(
        "--model",
        help=f"encoder spec (VS_MODEL; default {DEFAULT_MODEL}); e.g. ViT-L-14@openai, "
        "ViT-B-32@/path/weights.safetensors, local-dir:/path, timm:efficientnet_lite0@/path.pth",
    )
    g.add_argument("--device", help="cpu, cuda, cuda:1 (VS_DEVICE; default: CUDA when present)")
    g.add_argument(
        "--runtime",
        choices=("auto", "torch", "onnx", "onnx-int8"),
        help="CPU inference runtime (VS_RUNTIME; default auto: ONNX Runtime int8 on CPU, torch on CUDA)",
    )
    g.add_argument("--data-dir", help="embedded index folder (VS_DATA_DIR; default ./data)")
    g.add_argument("--qdrant-url", help="remote Qdrant server/cluster URL (QDRANT_URL); default: embedded")
    g.add_argument("--qdrant-api-key", help="API key for the remote Qdrant (QDRANT_API_KEY)")
    g.add_argument(
        "--collection", help="collection name on the remote Qdrant (VS_COLLECTION; default products)"
    )
    g.add_argument(
        "--indexing-threads",
        type=_threads,
        help="threads building the embedded index's HNSW graph after indexing (VS_INDEXING_THREADS; "
        "default 0 = all cores; fewer keeps a core free for a running app)",
    )
    add_remote_arguments(g)
    g.add_argument(
        "--bg-model", help=f"rembg model for background removal (VS_BG_MODEL; default {DEFAULT_BG_MODEL})"
    )
