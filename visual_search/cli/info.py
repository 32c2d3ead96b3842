"""``info``: model, device, backend and counts (and whether searches are refused for a model mismatch).

Two sources, and the output says which one answered:

- ``summary``: the embedded index's meta.json holds the catalog view saved at the end of indexing
  (model id, points, products, last indexed). It is current by construction (the store drops it
  before any write lands), so ``info`` reads that file and nothing else of the index: no shard
  load (9.5-20 s at 1M points), no data-dir lock (it works beside a running app), and the
  configured model's id is computed from its spec (encoders.identity) instead of loading weights.
- ``index``: no current summary (written since, an older index, a remote server) or
  ``--open-index``: the store is opened and the model loaded, as every command does.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from visual_search.core.config import Settings, add_settings_arguments
from visual_search.core.errors import StoreUnavailableError
from visual_search.core.types import CollectionInfo, EngineStatus
from visual_search.store import saved_index

SOURCE_SUMMARY = "summary"
SOURCE_INDEX = "index"
# Why info had to open an index another process holds (the holder's writes dropped the summary).
CHANGED_SINCE_SUMMARY = (
    "The index changed since its summary was saved (an import running?), so info has to open it; "
    "the summary is saved again when the import ends."
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="model, device, backend and counts")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--open-index",
        action="store_true",
        help="open the index and load the model instead of reading the summary saved with the index",
    )
    add_settings_arguments(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace, settings: Settings) -> int:
    status = None if args.open_index else status_from_summary(settings)
    source = SOURCE_SUMMARY
    if status is None:
        try:
            status, source = status_from_index(settings), SOURCE_INDEX
        except StoreUnavailableError as exc:
            held = "in use by" in str(exc)  # the data-dir lock (store.IN_USE_MESSAGE), not a broken index
            if args.open_index or not held or saved_index(settings.data_dir, settings.qdrant_url) is None:
                raise
            raise StoreUnavailableError(f"{exc} {CHANGED_SINCE_SUMMARY}") from exc
    if args.json:
        print(json.dumps({**asdict(status), "source": source}, indent=2, default=str))
        return 0
    s = status.store
    print(f"model:     {status.model_id} (text search: {'yes' if status.supports_text else 'no'})")
    print(f"device:    {status.device} (runtime: {status.runtime})")
    print(f"backend:   {s.backend} at {s.location}")
    print(f"index:     {status.products} products, {s.points} images, built by {s.model_id or '-'}")
    print(f"indexed:   {status.last_indexed or 'never'}")
    if source == SOURCE_SUMMARY:
        print("source:    the summary saved with the index at its last write (the index was not opened)")
    else:
        print("source:    the index (opened, with the model loaded)")
    if s.model_id and s.model_id != status.model_id:
        print(f"note:      searches are refused: the index was built by {s.model_id}, not {status.model_id}")
    return 0


def status_from_index(settings: Settings) -> EngineStatus:
    """Today's path: open the store (shard load, data-dir lock) and load the model."""
    from visual_search.engine import SearchEngine

    engine = SearchEngine.from_settings(settings)
    try:
        return engine.status()
    finally:
        engine.close()


def status_from_summary(settings: Settings) -> EngineStatus | None:
    """The EngineStatus from meta.json's saved summary, or None when there is no current one."""
    saved = saved_index(settings.data_dir, settings.qdrant_url)
    if saved is None or saved.summary is None:
        return None
    try:
        products, images = int(saved.summary["products"]), int(saved.summary["images"])
        last = saved.summary.get("last_indexed")
    except (KeyError, TypeError, ValueError):
        return None  # a summary from another version: count in the index
    model_id, device, supports_text, runtime = configured_model(settings, saved.model_id)
    return EngineStatus(
        model_id=model_id,
        device=device,
        supports_text=supports_text,
        store=CollectionInfo(saved.backend, saved.location, saved.model_id, saved.dim, images),
        products=products,
        last_indexed=None if last is None else str(last),
        runtime=runtime,
    )


def configured_model(settings: Settings, index_model_id: str | None = None) -> tuple[str, str, bool, str]:
    """(model id, device, text search, runtime) of ``--model`` without building the network where
    the spec says its id (encoders.identity; no torch import when it matches the index's model and
    no GPU driver is present); else the encoder is loaded (never the index). The runtime is the one
    chosen for the device; a loaded encoder may fall back from it (to torch when an export fails),
    which only ``--open-index`` shows."""
    from visual_search.device import pick_device, pick_runtime
    from visual_search.encoders.identity import model_identity

    identity = model_identity(settings.model, index_model_id)
    if identity is None:
        from visual_search.encoders import create_encoder

        encoder = create_encoder(settings.model, device=settings.device, runtime=settings.runtime)
        return encoder.model_id, encoder.device, encoder.supports_text, getattr(encoder, "runtime", "torch")
    device = pick_device(settings.device)
    return identity.model_id, device, identity.supports_text, pick_runtime(settings.runtime, device)
