"""The search engine: index a catalog, search by image / text / both, more-like-this, recommend.

The engine owns one encoder and one vector store. It never imports Gradio (the UI calls it) and
hands out only dataclasses, PIL images and numpy arrays.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import stats
from .catalog import (
    MAX_IMAGES_PER_PRODUCT,
    POINT_NAMESPACE,
    Catalog,
    CatalogImage,
    RowIssue,
    point_id,
    read_catalog,
)
from .core.config import Settings
from .core.errors import (
    ImageError,
    InvalidQueryError,
    ModelMismatchError,
    VisualSearchError,
)
from .core.types import (
    IMAGE_HASH,
    INDEXED_AT,
    PRODUCT_ID,
    EngineStatus,
    Hit,
    IndexPoint,
    ProductResult,
    SearchFilters,
)
from .encoders import Encoder, create_encoder
from .images.background import BackgroundRemoval, BackgroundRemovalUnavailable, BackgroundRemover
from .images.load import load_image, source_sha256
from .query_views import (
    COLOUR_KEY,
    COLOUR_WEIGHT,
    ObjectBox,
    QueryView,
    best_per_product,
    search_vectors,
    search_views,
)
from .query_views import MODES as BACKGROUND_MODES
from .store import VectorStore, open_store

log = logging.getLogger(__name__)

# Hashing and decoding are I/O + C code that release the GIL; URL catalogs need more than the core count.
IO_WORKERS = min(8, (os.cpu_count() or 2) * 2)
ProgressFn = Callable[[int, int], None]
# Largest result list any caller may ask for (the UI and API cap lower); bounds the widening query.
MAX_TOP_K = 1000
# Scores are cosine similarities.
MIN_SCORE, MAX_SCORE = -1.0, 1.0
DEFAULT_TEXT_WEIGHT = 0.5
# How a photo is searched (query_views): "auto" = object-aware views fused, "off" = the whole photo,
# "on" = the background-removed cut-out.
DEFAULT_BACKGROUND = "auto"


@dataclass(frozen=True)
class QueryOptions:
    """Checked search options; built by check_query_options, the one place they are validated."""

    top_k: int
    score_threshold: float | None
    text_weight: float
    background: str = DEFAULT_BACKGROUND
    box_index: int | None = None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise InvalidQueryError(f"{what} must be a number, not {value!r}.")
    try:
        number = float(value)
    except ValueError:
        raise InvalidQueryError(f"{what} must be a number, not {value!r}.") from None
    if not math.isfinite(number):
        raise InvalidQueryError(f"{what} must be a finite number, not {number}.")
    return number


def check_query_options(
    top_k: Any = 12,
    score_threshold: Any = None,
    text_weight: Any = DEFAULT_TEXT_WEIGHT,
    *,
    max_top_k: int = MAX_TOP_K,
    background: Any = None,
    box_index: Any = None,
) -> QueryOptions:
    """Validate top_k (whole, 1..max_top_k), the score threshold (finite, within the cosine range
    -1..1, None for none), the text weight (finite, 0..1, None for the default), the photo's
    background mode (auto/off/on, None for auto) and the object index (whole, >= 0, None for the
    first object).

    Raises InvalidQueryError with a one-line message; the CLI, API and UI show it unchanged, so
    keep the wording stable.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (numbers.Real, str)):
        raise InvalidQueryError(f"top_k must be a whole number, not {top_k!r}.")
    try:
        k_float = float(top_k)
    except ValueError:
        raise InvalidQueryError(f"top_k must be a whole number, not {top_k!r}.") from None
    if not math.isfinite(k_float) or not k_float.is_integer():
        raise InvalidQueryError(f"top_k must be a whole number, not {top_k!r}.")
    k = int(k_float)
    if not 1 <= k <= max_top_k:
        raise InvalidQueryError(f"top_k must be between 1 and {max_top_k}, got {k}.")
    threshold = None
    if score_threshold is not None:
        threshold = _number(score_threshold, "The score threshold")
        if not MIN_SCORE <= threshold <= MAX_SCORE:
            raise InvalidQueryError(
                f"The score threshold must be between {MIN_SCORE:g} and {MAX_SCORE:g} "
                f"(cosine similarity), got {threshold:g}."
            )
    weight = DEFAULT_TEXT_WEIGHT
    if text_weight is not None:
        weight = _number(text_weight, "The text weight")
        if not 0.0 <= weight <= 1.0:
            raise InvalidQueryError(f"The text weight must be between 0 and 1, got {weight:g}.")
    mode = DEFAULT_BACKGROUND
    if background is not None and background != "":
        mode = str(background).strip().lower() if isinstance(background, str) else ""
        if mode not in BACKGROUND_MODES:
            raise InvalidQueryError(
                f"background must be one of {', '.join(BACKGROUND_MODES)}, not {background!r}."
            )
    index = None
    if box_index is not None and box_index != "":
        number = _number(box_index, "The object number")
        if not number.is_integer() or number < 0:
            raise InvalidQueryError(f"The object number must be a whole number from 0, not {box_index!r}.")
        index = int(number)
    return QueryOptions(
        top_k=k, score_threshold=threshold, text_weight=weight, background=mode, box_index=index
    )


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


@dataclass(frozen=True)
class SearchResponse:
    """Results plus everything the UI shows to explain them."""

    results: list[ProductResult]
    mode: str  # "image", "text", "image+text", "more-like-this", "recommend"
    filters: SearchFilters
    top_k: int
    score_threshold: float | None
    text_weight: float | None = None
    background: BackgroundRemoval | None = None
    notes: list[str] = field(default_factory=list)
    embed_ms: float = 0.0
    search_ms: float = 0.0
    total_ms: float = 0.0
    # The photo/text query's embedding (search() only): pass it to recommend(query_vector=...) to
    # refine this search with likes and dislikes.
    query_vector: np.ndarray | None = field(default=None, repr=False, compare=False)
    # Photo searches through search_photo(): the background mode used (auto/off/on), every view
    # that was searched (the preview), the objects found (chips), which one the views show, and
    # how the views' results were combined ("max", or "single" for one view).
    pipeline: str | None = None
    views: list[QueryView] = field(default_factory=list, repr=False, compare=False)
    objects: list[ObjectBox] = field(default_factory=list)
    box_index: int | None = None
    fusion: str | None = None
    prepare_ms: float = 0.0  # photo decoding, background removal and making the views


class SearchEngine:
    """One per process: loading the model is the expensive part, searches are thread-safe."""

    data_dir: Path | None = None  # where calibration.json lives (set by from_settings)

    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        bg_model: str = "u2netp",
        bg_runtime: str | None = None,
        *,
        object_views: bool = False,
        colour_weight: float | None = None,
    ) -> None:
        self.encoder = encoder
        self.store = store
        # bg_runtime: the app's runtime setting; device.pick_background_runtime maps it at first use.
        self.background_remover = BackgroundRemover(
            bg_model, runtime=bg_runtime, device=str(getattr(encoder, "device", "cpu"))
        )
        # Index a second point per catalog image holding its cut-out. OFF by default: measured R@1
        # of the auto photo query +0.010 / +0.052 on two SYNTHETIC sets and R@10 -0.095 on held-out
        # photos, for 2x the points and a u2netp pass per image (bench/bench_object_views.py).
        # Search needs nothing: grouping per product already keeps one result per product.
        self.object_views = object_views
        # Weight of the colour re-rank of the auto photo query without text (query_views.COLOUR_WEIGHT
        # has the measurements); 0 turns it off (VS_COLOUR_WEIGHT=0).
        self.colour_weight = COLOUR_WEIGHT if colour_weight is None else float(colour_weight)
        self._index_lock = threading.Lock()

    def check_index_model(self) -> None:
        """Refuse to query an index built with another model: vectors from two models live in
        unrelated spaces, so the results would be noise even when the dimensions agree."""
        stored_model, stored_dim = self.store.index_model()
        model, dim = self.encoder.model_id, self.encoder.dim
        if stored_model is not None and stored_model != model:
            raise ModelMismatchError(
                f"This index was built with model {stored_model} (dim {stored_dim}); this run uses {model} "
                f"(dim {dim}). Search with --model {stored_model}, or index into another --data-dir."
            )
        if stored_model is None and stored_dim is not None and stored_dim != dim:
            raise ModelMismatchError(
                f"This index holds {stored_dim}-d vectors from an unknown model; this run uses {model} "
                f"(dim {dim}). Re-index it with --model {model}, or pass another --data-dir."
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> SearchEngine:
        store = open_store(
            settings.data_dir,
            settings.qdrant_url,
            settings.qdrant_api_key,
            settings.collection,
            remote=settings.remote,
            indexing_threads=settings.indexing_threads,
        )
        try:
            encoder = create_encoder(settings.model, device=settings.device, runtime=settings.runtime)
        except BaseException:
            store.close()  # release the data-dir lock at once, not whenever the store is collected
            raise
        engine = cls(
            encoder,
            store,
            bg_model=settings.bg_model,
            bg_runtime=settings.runtime,
            colour_weight=settings.colour_weight,
        )
        engine.data_dir = Path(settings.data_dir)
        return engine

    def default_threshold(self) -> float:
        """The score threshold for this model: calibrated by ``evaluate --calibrate`` (stored beside
        the index, per model id), else the built-in per-model default (evaluation.calibration)."""
        from visual_search.evaluation.calibration import default_threshold

        return default_threshold(self.encoder.model_id, self.data_dir)

    def threshold_calibration(self) -> Any:
        """The stored Calibration for this model (threshold, precision, recall), or None."""
        from visual_search.evaluation.calibration import load_calibration

        return load_calibration(self.data_dir, self.encoder.model_id)

    # ---------------------------------------------------------------- indexing

    def index_catalog(
        self,
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
        with self._index_lock:
            self.store.ensure_collection(self.encoder.dim, self.encoder.model_id, catalog.extra_columns)
            existing = {hit.id: hit.payload for hit in self.store.scroll()}
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
                payload = self._payload(products, image, digest, now)
                if _has_colour(stored):
                    payload[COLOUR_KEY] = colours[image.point_id] = stored[COLOUR_KEY]
                if _details(stored) != _details(payload) or COLOUR_KEY not in payload:
                    payload_only.append((image, payload))
                else:
                    unchanged += 1
                if self.object_views and (stored is not None and stored.get(IMAGE_HASH) == digest):
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
                vectors = self.store.get_vectors(ids)
                self.store.upsert(
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
                    vectors = self.encoder.embed_images([img for _, _, img in good], batch_size=batch_size)
                    self.store.upsert(
                        [
                            IndexPoint(
                                image.point_id,
                                vec,
                                {
                                    **self._payload(products, image, digest, now),
                                    COLOUR_KEY: colours[image.point_id],
                                },
                            )
                            for (image, digest, _), vec in zip(good, vectors, strict=True)
                        ]
                    )
                    embedded += len(good)
                    if self.object_views and not notes:
                        object_count += self._index_object_views(
                            good, products, now, batch_size, notes, colours
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
                    object_count += self._index_object_views(good, products, now, batch_size, notes, colours)

            removed = self._sync(catalog, existing) if sync else 0
            if embedded or removed or object_count:
                self.store.optimize()
            if self.store.exclusive:  # save the catalog view with the index for later readers
                try:
                    stats.catalog_view(self.store)
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
        self,
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
                removal = self.background_remover.remove(photo)
            except BackgroundRemovalUnavailable as exc:
                notes.append(f"No object views: {exc}")
                return 0
            except ImageError:
                continue
            if removal.bbox is not None:
                cutouts.append((image, digest, removal.cleaned))
        if not cutouts:
            return 0
        vectors = self.encoder.embed_images([img for _, _, img in cutouts], batch_size=batch_size)
        colours = colours or {}
        self.store.upsert(
            [
                IndexPoint(
                    object_point_id(image.product_id, image.image_index),
                    vec,
                    {
                        **self._payload(products, image, digest, now),
                        **({COLOUR_KEY: colours[image.point_id]} if image.point_id in colours else {}),
                        VIEW: OBJECT_VIEW,
                    },
                )
                for (image, digest, _), vec in zip(cutouts, vectors, strict=True)
            ]
        )
        return len(cutouts)

    @staticmethod
    def _payload(products: dict, image: CatalogImage, digest: str, now: str) -> dict[str, Any]:
        payload = products[image.product_id].payload(image)
        payload[IMAGE_HASH] = digest
        payload[INDEXED_AT] = now
        return payload

    def _sync(self, catalog: Catalog, existing: dict[str, dict[str, Any]]) -> int:
        """Delete points of products (or images) that are no longer in the catalog (and object
        points when object views are off)."""
        wanted = {img.point_id for img in catalog.images}
        if self.object_views:
            wanted |= {object_point_id(img.product_id, img.image_index) for img in catalog.images}
        stale = [pid for pid in existing if pid not in wanted]
        if stale:
            self.store.delete(stale)
        return len(stale)

    # ---------------------------------------------------------------- search

    def embed_query(
        self, image: Image.Image | None, text: str | None, text_weight: float = 0.5
    ) -> tuple[np.ndarray, str]:
        """One query vector: the weighted sum of the normalised image and text embeddings."""
        text = (text or "").strip() or None
        if image is None and text is None:
            raise VisualSearchError("Give a photo, a text, or both to search.")
        if text is not None:
            self.encoder.require_text()
        if image is not None and text is not None:
            weight = check_query_options(1, None, text_weight).text_weight
            vec = (1.0 - weight) * self.encoder.embed_images([image])[0] + weight * self.encoder.embed_texts(
                [text]
            )[0]
            return _normalise(vec), "image+text"
        if image is not None:
            return self.encoder.embed_images([image])[0], "image"
        return self.encoder.embed_texts([text])[0], "text"

    def search(
        self,
        image: Image.Image | str | Path | bytes | None = None,
        text: str | None = None,
        *,
        text_weight: float = 0.5,
        filters: SearchFilters | None = None,
        top_k: int = 12,
        score_threshold: float | None = None,
        remove_background: bool = False,
        background: str | None = None,
        box_index: int | None = None,
    ) -> SearchResponse:
        """Search by photo, text, or both. Raises VisualSearchError subclasses with human messages
        (InvalidQueryError for bad options, ModelMismatchError for an index of another model).

        With ``background`` (auto/off/on) a photo goes through :meth:`search_photo` (the
        object-aware pipeline); without it, the photo is embedded whole, or its cut-out with
        ``remove_background`` (the behaviour before the pipeline, kept for existing callers).
        """
        if background is not None and image is not None:
            return self.search_photo(
                image,
                background=background,
                box_index=box_index,
                text=text,
                text_weight=text_weight,
                filters=filters,
                top_k=top_k,
                score_threshold=score_threshold,
            )
        started = time.perf_counter()
        options = check_query_options(top_k, score_threshold, text_weight)
        top_k, score_threshold, text_weight = options.top_k, options.score_threshold, options.text_weight
        filters = filters or SearchFilters()
        self.check_index_model()
        notes: list[str] = []
        background: BackgroundRemoval | None = None
        photo = None if image is None else load_image(image)
        if photo is not None and remove_background:
            try:
                background = self.background_remover.remove(photo)
                photo = background.cleaned
                if background.note:
                    notes.append(background.note)
            except BackgroundRemovalUnavailable as exc:
                notes.append(str(exc))
        embed_start = time.perf_counter()
        vector, mode = self.embed_query(photo, text, text_weight)
        embed_ms = (time.perf_counter() - embed_start) * 1000
        search_start = time.perf_counter()
        results = self._grouped(
            lambda limit: self.store.search(vector, limit, filters, score_threshold), top_k, exclude=()
        )
        return SearchResponse(
            results=results,
            mode=mode,
            filters=filters,
            top_k=top_k,
            score_threshold=score_threshold,
            text_weight=text_weight if mode == "image+text" else None,
            background=background,
            notes=notes,
            embed_ms=embed_ms,
            search_ms=(time.perf_counter() - search_start) * 1000,
            total_ms=(time.perf_counter() - started) * 1000,
            query_vector=vector,
        )

    def search_photo(
        self,
        image: Image.Image | str | Path | bytes,
        *,
        background: str = DEFAULT_BACKGROUND,
        box_index: int | None = None,
        text: str | None = None,
        text_weight: float = DEFAULT_TEXT_WEIGHT,
        filters: SearchFilters | None = None,
        top_k: int = 12,
        score_threshold: float | None = None,
    ) -> SearchResponse:
        """Search a shopper's photo through the object-aware pipeline (visual_search.query_views).

        ``background``: ``auto`` (default: the chosen object's cut-out and its box, one batched
        forward, best score per product), ``off`` (the whole photo) or ``on`` (the cut-out on
        white). ``box_index`` picks the object (0 = the most central sizeable one; see
        ``response.objects``). With ``text`` the text embedding is blended into every view's vector
        with ``text_weight`` before fusion. The response carries the views searched and the
        objects found, for the preview and the chips.
        """
        started = time.perf_counter()
        options = check_query_options(
            top_k, score_threshold, text_weight, background=background, box_index=box_index
        )
        filters = filters or SearchFilters()
        self.check_index_model()
        text = (text or "").strip() or None
        text_start = time.perf_counter()
        text_vector = self.encoder.embed_texts([text])[0] if text is not None else None
        text_ms = (time.perf_counter() - text_start) * 1000 if text is not None else 0.0
        found = search_views(
            self,
            image,
            options.background,
            top_k=options.top_k,
            filters=filters,
            score_threshold=options.score_threshold,
            box_index=options.box_index,
            text_vector=text_vector,
            text_weight=options.text_weight,
        )
        return SearchResponse(
            results=found.results,
            mode="image+text" if text is not None else "image",
            filters=filters,
            top_k=options.top_k,
            score_threshold=options.score_threshold,
            text_weight=options.text_weight if text is not None else None,
            background=found.background,
            notes=list(found.notes),
            embed_ms=found.embed_ms + text_ms,
            search_ms=found.search_ms,
            total_ms=(time.perf_counter() - started) * 1000,
            query_vector=found.query_vector(),
            pipeline=options.background,
            views=found.query_views(),
            objects=found.object_boxes(),
            box_index=found.box_index if found.boxes else None,
            fusion=found.fusion,
            prepare_ms=found.prepare_ms,
        )

    def search_vectors(
        self,
        vectors: np.ndarray,
        depth: int,
        filters: SearchFilters | None = None,
        score_threshold: float | None = None,
    ) -> list[dict[str, Hit]]:
        """For each query vector (one per view), the best hit of each of its ``depth`` nearest
        products (product id -> hit). The store answers one vector per call (Edge has no batch
        query); the point limit widens until ``depth`` products came back or the store ran out."""
        rows = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        return search_vectors(self.store, list(rows), depth, filters, score_threshold)

    def search_by_text(self, text: str, **kwargs: Any) -> SearchResponse:
        return self.search(text=text, **kwargs)

    def more_like_this(
        self,
        product_id: str,
        *,
        filters: SearchFilters | None = None,
        top_k: int = 12,
        score_threshold: float | None = None,
    ) -> SearchResponse:
        """Products that look like a catalog product (all its images as positive examples)."""
        return self.recommend([product_id], [], filters=filters, top_k=top_k, score_threshold=score_threshold)

    def recommend(
        self,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        *,
        query_vector: np.ndarray | Sequence[float] | None = None,
        filters: SearchFilters | None = None,
        top_k: int = 12,
        score_threshold: float | None = None,
    ) -> SearchResponse:
        """Qdrant recommend: towards liked products, away from disliked ones (product ids).

        ``query_vector`` (a SearchResponse.query_vector) refines that search: it is one more
        positive example, so dislikes alone mean "away from these, still near my query".
        """
        started = time.perf_counter()
        options = check_query_options(top_k, score_threshold)
        top_k, score_threshold = options.top_k, options.score_threshold
        filters = filters or SearchFilters()
        self.check_index_model()
        extra: list[np.ndarray] = []
        if query_vector is not None:
            extra = [np.asarray(query_vector, dtype=np.float32).reshape(-1)]
            if extra[0].shape[0] != self.encoder.dim:
                raise VisualSearchError(
                    f"The query vector has {extra[0].shape[0]} dimensions; model {self.encoder.model_id} "
                    f"makes {self.encoder.dim}. Search again."
                )
            if not np.isfinite(extra[0]).all() or not extra[0].any():
                raise VisualSearchError("The query vector is empty or invalid; search again.")
        if not positive and not extra:
            raise VisualSearchError("Like at least one product to get recommendations.")
        pos_points = self._point_ids(positive)
        neg_points = self._point_ids(negative)
        results = self._grouped(
            lambda limit: self.store.recommend(
                pos_points, neg_points, limit, filters, score_threshold, extra_positive=extra
            ),
            top_k,
            exclude=set(positive) | set(negative),
        )
        elapsed = (time.perf_counter() - started) * 1000
        more_like_this = len(positive) == 1 and not negative and not extra
        return SearchResponse(
            results=results,
            mode="more-like-this" if more_like_this else "recommend",
            filters=filters,
            top_k=top_k,
            score_threshold=score_threshold,
            search_ms=elapsed,
            total_ms=elapsed,
        )

    def _point_ids(self, product_ids: Sequence[str]) -> list[str]:
        candidates = [point_id(pid, i) for pid in product_ids for i in range(MAX_IMAGES_PER_PRODUCT)]
        found = self.store.get_vectors(candidates) if candidates else {}
        missing = [
            pid
            for pid in product_ids
            if not any(point_id(pid, i) in found for i in range(MAX_IMAGES_PER_PRODUCT))
        ]
        if missing:
            raise VisualSearchError(f"Product(s) not in the index: {', '.join(missing)}")
        return [c for c in candidates if c in found]

    @staticmethod
    def _grouped(
        query: Callable[[int], list[Hit]], top_k: int, exclude: Iterable[str]
    ) -> list[ProductResult]:
        """Best image per product, never the same product twice; widen the query until top_k products."""
        excluded = set(exclude)
        limit = max(top_k * 4, 16)
        while True:
            hits = query(limit)
            best = best_per_product(hits, tuple(excluded))
            if len(best) >= top_k or len(hits) < limit or limit >= 4096:
                ranked = sorted(best.values(), key=lambda h: h.score, reverse=True)[:top_k]
                return [ProductResult.from_hit(h) for h in ranked]
            limit *= 4

    # ---------------------------------------------------------------- status

    def status(self) -> EngineStatus:
        """Model, device and index counts from the summary saved at index time or payload-index
        counts (stats.py), never a scan: ``info`` answers at once on a 1M-point index."""
        products, last = stats.index_status(self.store)
        return EngineStatus(
            model_id=self.encoder.model_id,
            device=self.encoder.device,
            supports_text=self.encoder.supports_text,
            store=self.store.info(),
            products=products,
            last_indexed=last,
            runtime=getattr(self.encoder, "runtime", "torch"),
        )

    def close(self) -> None:
        self.store.close()


def _normalise(vec: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    return (vec / norm).astype(np.float32) if norm > 0 else vec.astype(np.float32)


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


# ---------------------------------------------------------------- object views in the index

VIEW = "view"  # payload key of an object point
OBJECT_VIEW = "object"


def object_point_id(product_id: str, image_index: int) -> str:
    """The object point of a catalog image: stable like point_id, never equal to it."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{product_id}#{image_index}#object"))


# ---------------------------------------------------------------- images by product id


def product_image(engine: SearchEngine, product_id: str, index: int = 0) -> Path | None:
    """The local file of a product's ``index``-th indexed image, or None (unknown, or a URL).

    Lets the UI serve catalog images by product id instead of by path. Reads one point: its vector
    by id, then the nearest points to that vector (the point itself scores 1.0), never a full scroll.
    """
    from .core.types import IMAGE

    wanted = point_id(str(product_id), int(index))
    vector = engine.store.get_vectors([wanted]).get(wanted)
    if vector is None:
        return None
    for limit in (16, 256):  # exact duplicates of the image could crowd it out of a short list
        for hit in engine.store.search(vector, limit):
            if hit.id == wanted and str(hit.payload.get(PRODUCT_ID)) == str(product_id):
                source = str(hit.payload.get(IMAGE) or "")
                if not source or source.startswith(("http://", "https://")):
                    return None
                path = Path(source)
                return path if path.is_file() else None
    return None
