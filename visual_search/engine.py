"""The search engine: index a catalog, search by image / text / both, more-like-this, recommend.

The engine owns one encoder and one vector store. It never imports Gradio (the UI calls it) and
hands out only dataclasses, PIL images and numpy arrays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import stats
from .catalog import MAX_IMAGES_PER_PRODUCT, Catalog, point_id
from .core.config import Settings
from .core.errors import ModelMismatchError, VisualSearchError
from .core.io import ProgressFn
from .core.query_options import DEFAULT_BACKGROUND, DEFAULT_TEXT_WEIGHT, check_query_options
from .core.types import PRODUCT_ID, EngineStatus, Hit, ProductResult, SearchFilters
from .encoders import Encoder, create_encoder
from .images.background import BackgroundRemoval, BackgroundRemovalUnavailable, BackgroundRemover
from .images.load import load_image
from .indexing import IndexReport, index_catalog
from .query_views import COLOUR_WEIGHT, ObjectBox, QueryView, best_per_product, search_vectors, search_views
from .store import VectorStore, open_store


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
        # Weight of the colour re-rank set by the operator (VS_COLOUR_WEIGHT; 0 = off), or None:
        # calibrated per model, else the measured default (see the colour_weight property).
        self.colour_weight_setting = None if colour_weight is None else float(colour_weight)
        self.index_lock = threading.Lock()  # one indexing run at a time (indexing.index_catalog)

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

    @property
    def colour_weight(self) -> float:
        """Weight of the colour re-rank of the auto photo query without text: the operator's setting
        (VS_COLOUR_WEIGHT), else the one ``evaluate --calibrate`` chose for this model (a CLIP model's
        scores are spread differently from the EfficientNet ones COLOUR_WEIGHT was measured on), else
        COLOUR_WEIGHT (query_views has the measurements)."""
        if self.colour_weight_setting is not None:
            return self.colour_weight_setting
        calibration = self.threshold_calibration()
        if calibration is not None and calibration.colour_weight is not None:
            return float(calibration.colour_weight)
        return COLOUR_WEIGHT

    @colour_weight.setter
    def colour_weight(self, weight: float | None) -> None:
        self.colour_weight_setting = None if weight is None else float(weight)

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
        """Embed and upsert every catalog image; idempotent and resumable, unchanged images skipped,
        object views and colours included. The implementation and its rules: indexing.index_catalog."""
        return index_catalog(self, catalog, sync=sync, batch_size=batch_size, progress=progress)

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
