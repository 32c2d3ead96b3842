"""Query sets: your own CSV, held-out catalog photos, or synthetic shopper photos (deterministic per seed)."""

from __future__ import annotations

import csv
import dataclasses
import random
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visual_search.catalog import Catalog, is_url, read_catalog
from visual_search.core.errors import ImageError, VisualSearchError
from visual_search.core.types import CATEGORY, IMAGE, IMAGE_INDEX, PRODUCT_ID, SearchFilters
from visual_search.training.augment import QUERY_KINDS, shopper_photo, shopper_query

SYNTHETIC_SIDE = 512


@dataclass(frozen=True)
class Query:
    """One evaluation query: a photo, a text or both, the product id(s) that should come back, filters."""

    expected: tuple[str, ...]
    image: str | None = None
    text: str | None = None
    filters: SearchFilters = field(default_factory=SearchFilters)
    category: str | None = None  # for the per-category breakdown; None: the expected product's category
    query_id: str = ""


@dataclass
class QuerySet:
    """Queries plus what they are, for the report ("synthetic" is always shown as such)."""

    queries: list[Query]
    name: str  # e.g. "synthetic", "holdout", "queries.csv"
    description: str
    synthetic: bool = False
    folder: Path | None = None  # where generated query images live

    def __iter__(self) -> Iterator[Query]:
        return iter(self.queries)

    def __len__(self) -> int:
        return len(self.queries)


def _split_ids(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split("|") if part.strip())


def _float_or_none(value: str | None, what: str, row: int) -> float | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise VisualSearchError(f"Query file row {row}: {what} {text!r} is not a number") from None


def load_queries(path: str | Path) -> QuerySet:
    """Read a query CSV (see the module docstring). Raises VisualSearchError naming the bad row."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise VisualSearchError(f"Query file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "expected" not in columns or not ({"query_image", "query_text"} & set(columns)):
            raise VisualSearchError(
                f"Query file {path.name} needs the columns expected and query_image and/or query_text "
                f"(found: {', '.join(columns) or 'none'})"
            )
        queries = []
        for row_number, raw in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
            expected = _split_ids(row.get("expected"))
            image = row.get("query_image") or None
            text = row.get("query_text") or None
            if not expected:
                raise VisualSearchError(f"Query file row {row_number}: 'expected' is empty")
            if image is None and text is None:
                raise VisualSearchError(f"Query file row {row_number}: give query_image, query_text or both")
            if image is not None and not is_url(image) and not Path(image).expanduser().is_absolute():
                image = str((path.parent / image).resolve())
            filters = SearchFilters(
                categories=_split_ids(row.get("category")),
                brands=_split_ids(row.get("brand")),
                min_price=_float_or_none(row.get("min_price"), "min_price", row_number),
                max_price=_float_or_none(row.get("max_price"), "max_price", row_number),
            )
            queries.append(Query(expected, image, text, filters, query_id=f"row {row_number}"))
    if not queries:
        raise VisualSearchError(f"Query file {path.name} has no queries")
    return QuerySet(queries, path.name, f"{len(queries)} queries from {path.name}")


@dataclass(frozen=True)
class SourceImage:
    """One catalog photo a synthetic or held-out query is made from."""

    product_id: str
    image_index: int
    source: str
    category: str | None


def _items_from(source: Any) -> list[SourceImage]:
    """(product, image) items from a Catalog, a catalog path, a SearchEngine (its live index) or items."""
    if isinstance(source, (str, Path)):
        source = read_catalog(source)
    if isinstance(source, Catalog):
        return [
            SourceImage(p.product_id, img.image_index, img.source, p.category)
            for p in source.products
            for img in p.images
        ]
    store = getattr(source, "store", None)
    if store is not None:  # a SearchEngine: what is in its index right now
        items = []
        for hit in store.scroll():
            p = hit.payload
            if p.get(PRODUCT_ID) is None or not p.get(IMAGE):
                continue
            items.append(
                SourceImage(str(p[PRODUCT_ID]), int(p.get(IMAGE_INDEX) or 0), str(p[IMAGE]), p.get(CATEGORY))
            )
        return items
    return [item if isinstance(item, SourceImage) else SourceImage(*item) for item in source]


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:limit] or "x"


def _write_query_csv(folder: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """``queries.csv`` beside the generated photos, reusable with ``--queries``."""
    with (folder / "queries.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def synthetic_queries(source: Any, n: int = 50, out_dir: str | Path | None = None, seed: int = 0) -> QuerySet:
    """N SYNTHETIC shopper photos of catalog products, saved as JPEG under ``out_dir``.

    ``source``: a Catalog, a catalog path, or a SearchEngine (uses the products in its index).
    Products are visited in a seeded order, one image each, before any product gets a second query.
    Deterministic: the same source, ``n`` and ``seed`` give byte-identical files. ``out_dir`` None
    makes a temporary folder (the caller deletes it). Also writes ``queries.csv`` there, reusable
    with ``--queries``.
    """
    from visual_search.images.load import load_image

    if n < 1:
        raise VisualSearchError("--synthetic needs at least 1 query")
    items = sorted(_items_from(source), key=lambda i: (i.product_id, i.image_index))
    if not items:
        raise VisualSearchError("No products to build synthetic queries from (empty catalog or index)")
    by_product: dict[str, list[SourceImage]] = {}
    for item in items:
        by_product.setdefault(item.product_id, []).append(item)
    order = sorted(by_product)
    random.Random(f"synthetic-order:{seed}").shuffle(order)
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="vs-synthetic-"))
    folder.mkdir(parents=True, exist_ok=True)

    queries: list[Query] = []
    rows = []
    attempts = 0
    i = 0
    while len(queries) < n and attempts < n + len(items):
        pid = order[i % len(order)]
        images = by_product[pid]
        item = images[(i // len(order)) % len(images)]
        i += 1
        attempts += 1
        try:
            photo = load_image(item.source)
        except ImageError:
            continue  # unreadable catalog image: the index skipped it as well
        k = len(queries)
        image = shopper_photo(photo, random.Random(f"synthetic:{seed}:{k}:{pid}"), size=SYNTHETIC_SIDE)
        name = f"{k:04d}_{slug(pid)}.jpg"
        image.save(folder / name, "JPEG", quality=95)
        queries.append(Query((pid,), str(folder / name), category=item.category, query_id=name))
        rows.append({"query_image": name, "expected": pid, "source_image": item.source})
    _write_query_csv(folder, rows, ["query_image", "expected", "source_image"])
    if not queries:
        raise VisualSearchError("None of the catalog images could be read to build synthetic queries")
    return QuerySet(
        queries,
        "synthetic",
        f"{len(queries)} SYNTHETIC shopper photos (catalog images pasted at random scale/angle on cluttered "
        f"backgrounds, relit, JPEG-compressed; seed {seed}). Derived from indexed images, so easier than "
        "real shopper photos: compare models with them, do not read them as real-world accuracy.",
        synthetic=True,
        folder=folder,
    )


def shopper_queries(
    source: Any,
    n: int = 32,
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    kinds: Sequence[str] = QUERY_KINDS,
    distractors: Any = None,
    description: str = "",
) -> QuerySet:
    """``n`` SYNTHETIC shopper photos per kind (augment.QUERY_KINDS: handheld, close_up, clutter),
    saved as JPEG under ``out_dir/<kind>/``; each query's category is its kind, so the report's
    per-category breakdown is per kind.

    ``source``: the photos to build queries from (Catalog, path, engine or items, as for
    :func:`synthetic_queries`); ``distractors``: where clutter's second product comes from (default
    ``source``), always a product other than the query's. Products are visited in a seeded order,
    one image each, before any gets a second. Deterministic for (source, n, seed). Writes a
    ``queries.csv`` with a ``kind`` column, reusable with ``--queries``, and an ``item_box`` column
    (where the item is in the photo, "x0 y0 x1 y1" pixels; for analysis, the evaluation ignores it).
    """
    from visual_search.images.load import load_image

    if n < 1:
        raise VisualSearchError("--shopper needs at least 1 query per kind")
    unknown = [k for k in kinds if k not in QUERY_KINDS]
    if unknown or not kinds:
        raise VisualSearchError(
            f"Unknown query kind(s) {', '.join(unknown) or '(none)'}; use {', '.join(QUERY_KINDS)}"
        )
    items = sorted(_items_from(source), key=lambda i: (i.product_id, i.image_index))
    if not items:
        raise VisualSearchError("No products to build shopper queries from (empty catalog or index)")
    pool = (
        items
        if distractors is None
        else sorted(_items_from(distractors), key=lambda i: (i.product_id, i.image_index))
    )
    by_product: dict[str, list[SourceImage]] = {}
    for item in items:
        by_product.setdefault(item.product_id, []).append(item)
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="vs-shopper-"))
    cache: dict[str, Any] = {}

    def photo(item: SourceImage) -> Any:
        if item.source not in cache:
            cache[item.source] = load_image(item.source)
        return cache[item.source]

    queries: list[Query] = []
    rows: list[dict[str, str]] = []
    for kind in kinds:
        made = _shopper_kind(kind, n, seed, by_product, pool, photo, folder)
        queries += [query for query, _ in made]
        rows += [row for _, row in made]
    _write_query_csv(folder, rows, ["query_image", "expected", "kind", "source_image", "item_box"])
    if not queries:
        raise VisualSearchError("None of the catalog images could be read to build shopper queries")
    return QuerySet(
        queries,
        "shopper",
        f"{len(queries)} SYNTHETIC shopper photos, {n} per kind ({', '.join(kinds)}; seed {seed}): handheld = "
        "the item cut out, rotated up to 25 degrees, held over a hand; close_up = a tight off-centre crop of "
        "40-70% of the item with a colour cast; clutter = the item small near the centre beside a different "
        f"catalog product on a busy surface. {description}".strip(),
        synthetic=True,
        folder=folder,
    )


def _shopper_kind(
    kind: str,
    n: int,
    seed: int,
    by_product: dict[str, list[SourceImage]],
    pool: list[SourceImage],
    photo: Callable[[SourceImage], Any],
    folder: Path,
) -> list[tuple[Query, dict[str, str]]]:
    """Up to ``n`` photos of one kind: products in a seeded order, one image each before any gets a
    second; unreadable images are skipped (bounded attempts)."""
    (folder / kind).mkdir(parents=True, exist_ok=True)
    order = sorted(by_product)
    random.Random(f"shopper-order:{seed}:{kind}").shuffle(order)
    n_items = sum(len(images) for images in by_product.values())
    made: list[tuple[Query, dict[str, str]]] = []
    attempts = i = 0
    while len(made) < n and attempts < n + n_items:
        pid = order[i % len(order)]
        images = by_product[pid]
        item = images[(i // len(order)) % len(images)]
        i += 1
        attempts += 1
        rng = random.Random(f"shopper:{seed}:{kind}:{len(made)}:{pid}")
        others = [d for d in pool if d.product_id != pid]
        try:
            image = photo(item)
            other = None
            if kind == "clutter":
                if not others:
                    raise VisualSearchError("The clutter kind needs at least two products")
                other = photo(rng.choice(others))
        except ImageError:
            continue  # unreadable catalog image: the index skipped it as well
        info: dict[str, Any] = {}
        picture = shopper_query(kind, image, rng, distractor=other, size=SYNTHETIC_SIDE, info=info)
        name = f"{kind}/{len(made):04d}_{slug(pid)}.jpg"
        picture.save(folder / name, "JPEG", quality=95)
        row = {
            "query_image": name,
            "expected": pid,
            "kind": kind,
            "source_image": item.source,
            "item_box": " ".join(str(v) for v in info.get("item_box", ())),  # analysis only
        }
        made.append((Query((pid,), str(folder / name), category=kind, query_id=name), row))
    return made


def holdout_queries(catalog: Catalog | str | Path, seed: int = 0) -> tuple[Catalog, QuerySet]:
    """(catalog to index, queries): one image of every product with >= 2 images is held out of the
    index and becomes that product's query. Which image: seeded, per product."""
    if not isinstance(catalog, Catalog):
        catalog = read_catalog(catalog)
    products = []
    queries = []
    for product in catalog.products:
        if len(product.images) < 2:
            products.append(product)
            continue
        k = random.Random(f"holdout:{seed}:{product.product_id}").randrange(len(product.images))
        held = product.images[k]
        products.append(dataclasses.replace(product, images=product.images[:k] + product.images[k + 1 :]))
        queries.append(
            Query(
                (product.product_id,), held.source, category=product.category, query_id=Path(held.source).name
            )
        )
    if not queries:
        raise VisualSearchError(
            "--holdout needs products with at least 2 images (one is held out as the query); this catalog "
            "has none. Use --synthetic N instead."
        )
    index_catalog = Catalog(catalog.path, products, [], list(catalog.extra_columns))
    return index_catalog, QuerySet(
        queries,
        "holdout",
        f"{len(queries)} held-out catalog photos (one image of each product with 2+ images, left out of "
        f"the index; seed {seed}). Real photos, but studio shots, and only multi-image products.",
    )
