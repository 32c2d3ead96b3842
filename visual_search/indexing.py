"""Indexing a catalog into the engine's store: embed, upsert, skip what is unchanged, sync.

:func:`index_catalog` is the implementation behind :meth:`SearchEngine.index_catalog` (the public
entry point, which delegates here). It needs only the engine's encoder, store, background remover,
``object_views`` switch and ``index_lock``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from . import stats
from .catalog import POINT_NAMESPACE, Catalog, CatalogImage, RowIssue, read_catalog
from .core.errors import ImageError, VisualSearchError
from .core.io import ProgressFn
from .core.types import IMAGE_HASH, INDEXED_AT, IndexPoint
from .images.background import BackgroundRemovalUnavailable
from .images.load import load_image, source_sha256
from .query_views import COLOUR_KEY

if TYPE_CHECKING:
    from .engine import SearchEngine

__all__ = ["OBJECT_VIEW", "VIEW", "IndexReport", "index_catalog", "object_point_id"]

log = logging.getLogger(__name__)

# Hashing and decoding are I/O + C code that release the GIL; URL catalogs need more than the core count.
IO_WORKERS = min(8, (os.cpu_count() or 2) * 2)

VIEW = "view"  # payload key of an object point
OBJECT_VIEW = "object"


def object_point_id(product_id: str, image_index: int) -> str:
    """The object point of a catalog image: stable like point_id, never equal to it."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{product_id}#{image_index}#object"))


@dataclass(frozen=True)
class IndexReport:
    """What an indexing run did, for the CLI summary and the Catalog tab."""

    products: int
    images: int
    embedded: int
    unchanged: int
    payload_updated: int
    removed: int
    issues: list[RowIssue]
    seconds: float
    object_views: int = 0  # object points (cut-outs) embedded this run (SearchEngine.object_views)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{self.products} products, {self.images} images in catalog",
            f"{self.embedded} embedded",
            f"{self.unchanged} unchanged",
        ]
        if self.object_views:
            parts.append(f"{self.object_views} object views")
        if self.payload_updated:
            parts.append(f"{self.payload_updated} details updated")
        if self.removed:
            parts.append(f"{self.removed} removed")
        parts.append(f"{len(self.issues)} problem" + ("" if len(self.issues) == 1 else "s"))
        return ", ".join(parts) + f" ({self.seconds:.1f} s)"


def index_catalog(
    engine: SearchEngine,
    catalog: Catalog | str | Path,
    *,
    sync: bool = False,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
) -> IndexReport:
    """Embed and upsert every catalog image; idempotent and resumable.

    Point ids are uuid5(product, image index), so a re-run overwrites. An image whose content hash
    and details are unchanged is skipped; changed details alone reuse the stored vector. Each batch
    is upserted as it is embedded, so an interrupted run resumes where it stopped.

    With ``object_views`` each image also gets an object point (:func:`object_point_id`, payload
    ``view="object"``) holding its background-removed cut-out, when background removal is
    available and finds an object. An existing index upgrades in place: unchanged images get
    their object point without re-embedding the photo. ``sync`` drops object points when
    object views are off.

    Every payload carries ``colour`` (images/colour.py: 40 floats, the product pixels' colour
    histogram, for the colour re-rank of photo queries). An unchanged image whose stored payload
    lacks it (an index from before) gets it by a payload-only update: decoded, no re-embedding.
    """
    started = time.perf_counter()
    if not isinstance(catalog, Catalog):
        catalog = read_catalog(catalog)
    with engine.index_lock:
        engine.store.ensure_collection(engine.encoder.dim, engine.encoder.model_id, catalog.extra_columns)
        existing = {hit.id: hit.payload for hit in engine.store.scroll()}
        issues = list(catalog.issues)
        products = {p.product_id: p for p in catalog.products}
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")

        to_embed: list[tuple[CatalogImage, str]] = []
        payload_only: list[tuple[CatalogImage, dict[str, Any]]] = []
        objects_only: list[tuple[CatalogImage, str]] = []  # photo unchanged, object point missing
        unchanged = 0
        with ThreadPoolExecutor(max_workers=IO_WORKERS) as pool:
            digests = list(pool.map(_digest, (image.source for image in catalog.images)))
        colours: dict[str, list[float]] = {}  # point id -> colour, for object points
        for image, digest in zip(catalog.images, digests, strict=True):
            if isinstance(digest, Exception):
                issues.append(RowIssue(image.row, image.product_id, str(digest)))
                continue
            stored = existing.get(image.point_id)
            if stored is None or stored.get(IMAGE_HASH) != digest:
                to_embed.append((image, digest))
                continue
            payload = _payload(products, image, digest, now)
            if _has_colour(stored):
                payload[COLOUR_KEY] = colours[image.point_id] = stored[COLOUR_KEY]
            if _details(stored) != _details(payload) or COLOUR_KEY not in payload:
                payload_only.append((image, payload))
            else:
                unchanged += 1
            if engine.object_views and (stored is not None and stored.get(IMAGE_HASH) == digest):
                obj = existing.get(object_point_id(image.product_id, image.image_index))
                if obj is None or obj.get(IMAGE_HASH) != digest:
                    objects_only.append((image, digest))

        # an index from before colours: decode those images for their colour (no re-embedding)
        lacking = [(img, p) for img, p in payload_only if COLOUR_KEY not in p]
        if lacking:
            with ThreadPoolExecutor(max_workers=IO_WORKERS) as pool:
                found = list(pool.map(_source_colour, (img.source for img, _ in lacking)))
            for (img, payload), colour in zip(lacking, found, strict=True):
                if colour is not None:  # undecodable now: stored without, tried again next run
                    payload[COLOUR_KEY] = colours[img.point_id] = colour
        if payload_only:
            ids = [img.point_id for img, _ in payload_only]
            objects = {object_point_id(img.product_id, img.image_index): p for img, p in payload_only}
            ids += [i for i in objects if i in existing]
            vectors = engine.store.get_vectors(ids)
            engine.store.upsert(
                [
                    IndexPoint(img.point_id, vectors[img.point_id], payload)
                    for img, payload in payload_only
                    if img.point_id in vectors
                ]
                + [
                    IndexPoint(i, vectors[i], {**payload, VIEW: OBJECT_VIEW})
                    for i, payload in objects.items()
                    if i in vectors
                ]
            )

        embedded = done = object_count = 0
        notes: list[str] = []
        total = len(to_embed)
        if progress:
            progress(0, total)
        for batch, loaded in _prefetched_batches(to_embed, batch_size, _load_with_colour):
            good: list[tuple[CatalogImage, str, Image.Image]] = []
            for (image, digest), result in zip(batch, loaded, strict=True):
                if isinstance(result, Exception):
                    issues.append(RowIssue(image.row, image.product_id, str(result)))
                else:
                    photo, colours[image.point_id] = result
                    good.append((image, digest, photo))
            if good:
                vectors = engine.encoder.embed_images([img for _, _, img in good], batch_size=batch_size)
                engine.store.upsert(
                    [
                        IndexPoint(
                            image.point_id,
                            vec,
                            {
                                **_payload(products, image, digest, now),
                                COLOUR_KEY: colours[image.point_id],
                            },
                        )
                        for (image, digest, _), vec in zip(good, vectors, strict=True)
                    ]
                )
                embedded += len(good)
                if engine.object_views and not notes:
                    object_count += _index_object_views(
                        engine, good, products, now, batch_size, notes, colours
                    )
            done += len(batch)
            if progress:
                progress(done, total)
        # an existing index gaining object views: only the cut-outs are embedded
        for batch, loaded in _prefetched_batches(objects_only if not notes else [], batch_size):
            good = [
                (image, digest, result)
                for (image, digest), result in zip(batch, loaded, strict=True)
                if not isinstance(result, Exception)
            ]
            if good and not notes:
                object_count += _index_object_views(engine, good, products, now, batch_size, notes, colours)

        removed = _sync(engine, catalog, existing) if sync else 0
        if embedded or removed or object_count:
            engine.store.optimize()
        if engine.store.exclusive:  # save the catalog view with the index for later readers
            try:
                stats.catalog_view(engine.store)
            except VisualSearchError as exc:  # the view is recomputed on demand; indexing succeeded
                log.warning("catalog summary not saved: %s", exc)
    return IndexReport(
        products=len(catalog.products),
        images=len(catalog.images),
        embedded=embedded,
        unchanged=unchanged,
        payload_updated=len(payload_only),
        removed=removed,
        issues=issues,
        seconds=time.perf_counter() - started,
        object_views=object_count,
        notes=notes,
    )


def _index_object_views(
    engine: SearchEngine,
    good: list[tuple[CatalogImage, str, Image.Image]],
    products: dict,
    now: str,
    batch_size: int,
    notes: list[str],
    colours: dict[str, list[float]] | None = None,
) -> int:
    """Upsert the object points of ``good`` (one batched forward); 0 and a note in ``notes``
    when background removal is unavailable (object views then stop for this run)."""
    cutouts: list[tuple[CatalogImage, str, Image.Image]] = []
    for image, digest, photo in good:
        try:
            removal = engine.background_remover.remove(photo)
        except BackgroundRemovalUnavailable as exc:
            notes.append(f"No object views: {exc}")
            return 0
        except ImageError:
            continue
        if removal.bbox is not None:
            cutouts.append((image, digest, removal.cleaned))
    if not cutouts:
        return 0
    vectors = engine.encoder.embed_images([img for _, _, img in cutouts], batch_size=batch_size)
    colours = colours or {}
    engine.store.upsert(
        [
            IndexPoint(
                object_point_id(image.product_id, image.image_index),
                vec,
                {
                    **_payload(products, image, digest, now),
                    **({COLOUR_KEY: colours[image.point_id]} if image.point_id in colours else {}),
                    VIEW: OBJECT_VIEW,
                },
            )
            for (image, digest, _), vec in zip(cutouts, vectors, strict=True)
        ]
    )
    return len(cutouts)


def _payload(products: dict, image: CatalogImage, digest: str, now: str) -> dict[str, Any]:
    payload = products[image.product_id].payload(image)
    payload[IMAGE_HASH] = digest
    payload[INDEXED_AT] = now
    return payload


def _sync(engine: SearchEngine, catalog: Catalog, existing: dict[str, dict[str, Any]]) -> int:
    """Delete points of products (or images) that are no longer in the catalog (and object
    points when object views are off)."""
    wanted = {img.point_id for img in catalog.images}
    if engine.object_views:
        wanted |= {object_point_id(img.product_id, img.image_index) for img in catalog.images}
    stale = [pid for pid in existing if pid not in wanted]
    if stale:
        engine.store.delete(stale)
    return len(stale)


def _details(payload: dict[str, Any]) -> dict[str, Any]:
    """Payload minus bookkeeping and the colour (derived from the image), to tell whether only
    product details changed."""
    return {k: v for k, v in payload.items() if k not in (INDEXED_AT, COLOUR_KEY)}


def _has_colour(payload: dict[str, Any]) -> bool:
    from .images.colour import stored_colour

    return stored_colour(payload.get(COLOUR_KEY)) is not None


def _colour_list(image: Image.Image) -> list[float]:
    """A catalog image's colour histogram as the payload stores it (40 floats, 4 decimals)."""
    from .images.colour import catalog_colour

    return [round(float(x), 4) for x in catalog_colour(image)]


def _source_colour(source: str) -> list[float] | None:
    result = _load(source)
    return None if isinstance(result, Exception) else _colour_list(result)


def _load_with_colour(source: str) -> tuple[Image.Image, list[float]] | Exception:
    """Decode and compute the colour on the prefetch worker, beside the next batch's embedding."""
    result = _load(source)
    return result if isinstance(result, Exception) else (result, _colour_list(result))


def _digest(source: str) -> str | Exception:
    try:
        return source_sha256(source)
    except ImageError as exc:
        return exc


def _load(source: str) -> Image.Image | Exception:
    try:
        return load_image(source)
    except ImageError as exc:
        return exc


def _prefetched_batches(
    items: list[tuple[CatalogImage, str]], batch_size: int, load: Callable[[str], Any] | None = None
) -> Iterable[tuple[list[tuple[CatalogImage, str]], list[Any]]]:
    """Decode the next batch on worker threads while the current one is embedded."""
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=IO_WORKERS) as pool:

        def submit(batch: list[tuple[CatalogImage, str]]) -> list[Future]:
            return [pool.submit(load or _load, image.source) for image, _ in batch]

        pending = submit(batches[0])
        for i, batch in enumerate(batches):
            current = pending
            if i + 1 < len(batches):
                pending = submit(batches[i + 1])
            yield batch, [f.result() for f in current]
