"""Read and validate a product catalog (CSV or Parquet) with pandas.

Bad rows are skipped and reported with their row number and reason; the rest is kept. Row numbers
are the line numbers a person sees in a spreadsheet: the header is row 1, the first product row 2.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .core.errors import CatalogError
from .core.types import (
    ATTRS_KEY,
    BRAND,
    CATEGORY,
    DESCRIPTION,
    IMAGE,
    IMAGE_INDEX,
    PRICE,
    PRODUCT_ID,
    TITLE,
    URL,
)

REQUIRED_COLUMNS = (PRODUCT_ID, IMAGE)
KNOWN_COLUMNS = (PRODUCT_ID, IMAGE, TITLE, CATEGORY, BRAND, PRICE, DESCRIPTION, URL)
# Columns that would collide with what the indexer stores itself.
RESERVED_COLUMNS = ("image_index", "image_hash", "indexed_at", ATTRS_KEY)
MAX_IMAGES_PER_PRODUCT = 32
POINT_NAMESPACE = uuid.UUID("6f6b0d2e-6a8c-4f55-9a3c-1f1d0c6f3b21")

_PRICE_JUNK = re.compile(r"[\s$€£¥,]|USD|EUR|GBP", re.IGNORECASE)


def point_id(product_id: str, image_index: int) -> str:
    """Stable across processes and machines, so re-indexing overwrites instead of duplicating."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{product_id}#{image_index}"))


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


@dataclass(frozen=True)
class CatalogImage:
    product_id: str
    image_index: int
    source: str  # absolute path or http(s) URL
    row: int

    @property
    def point_id(self) -> str:
        return point_id(self.product_id, self.image_index)


@dataclass(frozen=True)
class Product:
    product_id: str
    title: str
    category: str | None
    brand: str | None
    price: float | None
    description: str | None
    url: str | None
    attributes: Mapping[str, Any]
    images: tuple[CatalogImage, ...]

    def payload(self, image: CatalogImage) -> dict[str, Any]:
        """What gets stored with each image's vector (everything a result card needs)."""
        return {
            PRODUCT_ID: self.product_id,
            IMAGE_INDEX: image.image_index,
            IMAGE: image.source,
            TITLE: self.title,
            CATEGORY: self.category,
            BRAND: self.brand,
            PRICE: self.price,
            DESCRIPTION: self.description,
            URL: self.url,
            ATTRS_KEY: dict(self.attributes),
        }


@dataclass(frozen=True)
class RowIssue:
    row: int | None
    product_id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "catalog"
        who = f" ({self.product_id})" if self.product_id else ""
        return f"{where}{who}: {self.reason}"


@dataclass
class Catalog:
    path: Path
    products: list[Product]
    issues: list[RowIssue] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[CatalogImage]:
        return [img for p in self.products for img in p.images]

    @property
    def product_ids(self) -> set[str]:
        return {p.product_id for p in self.products}


def _read_frame(path: Path) -> tuple[pd.DataFrame, int]:
    """Return the frame and the offset from a 0-based frame index to a person's row number."""
    if not path.exists():
        raise CatalogError(f"Catalog file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path).astype(object), 1
        if suffix in (".csv", ".txt", ".tsv"):
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                skipinitialspace=True,
                sep="\t" if suffix == ".tsv" else ",",
                encoding_errors="replace",
                on_bad_lines="error",
            )
            return frame, 2
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise CatalogError(f"Cannot read catalog {path.name}: {exc}") from exc
    raise CatalogError(f"Catalog {path.name}: use a .csv or .parquet file (got {suffix or 'no extension'})")


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip()
    return text or None


def parse_price(raw: Any) -> float | None:
    """'12.5', '$1,299.00', 'USD 20' -> float; '' -> None; anything else raises ValueError."""
    text = _clean(raw)
    if text is None:
        return None
    value = float(_PRICE_JUNK.sub("", text))
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(text)
    return round(value, 2)


def _resolve_image(entry: str, base: Path) -> str:
    if is_url(entry):
        return entry
    path = Path(entry).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


_DRIVE = re.compile(r"^[A-Za-z]:")


def _confined_image(entry: str, root: Path) -> str | None:
    """``entry`` as a file inside ``root`` (symlinks resolved), or None when it is not one.

    Absolute paths, ``~``, ``..`` and links leading out are all None, exactly like a missing file,
    so a row issue never tells a file outside the upload that exists from one that does not.
    """
    if is_url(entry):
        return entry
    text = entry.replace("\\", "/")
    if text.startswith(("/", "~")) or _DRIVE.match(text) or "\x00" in text:
        return None
    if any(part == ".." for part in text.split("/")):
        return None
    try:
        candidate = (root / text).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
    except (OSError, ValueError):
        return None
    return str(candidate)


def read_catalog(path: str | Path, *, image_root: str | Path | None = None) -> Catalog:
    """Parse and validate; never raises for a bad row, only for an unusable file.

    ``image_root`` confines local images to that folder (a catalog uploaded through the app may only
    use the files of its own zip); http(s) links stay allowed and are fetched by the guarded fetch.
    Without it (the operator's CLI) paths may point anywhere, relative to the catalog's folder.
    """
    path = Path(path).resolve()
    root = Path(image_root).resolve() if image_root is not None else None
    frame, row_offset = _read_frame(path)
    extra = _check_columns(frame, path)
    issues: list[RowIssue] = []
    products: dict[str, Product] = {}
    for index, record in enumerate(frame.to_dict(orient="records")):
        row = index + row_offset
        product = _row_product(record, row, extra, products, path.parent, root, issues)
        if product is not None:
            products[product.product_id] = product
    if frame.empty:
        issues.append(RowIssue(None, None, "the catalog has no rows"))
    return Catalog(path=path, products=list(products.values()), issues=issues, extra_columns=extra)


def _check_columns(frame: pd.DataFrame, path: Path) -> list[str]:
    """Normalise the column names; refuse a catalog without the required ones or using reserved ones.
    Returns the extra (attribute) columns."""
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CatalogError(
            f"Catalog {path.name} lacks the column(s) {', '.join(missing)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)} (found: {', '.join(frame.columns) or 'none'})"
        )
    clashes = [c for c in frame.columns if c in RESERVED_COLUMNS]
    if clashes:
        raise CatalogError(
            f"Catalog {path.name}: rename the column(s) {', '.join(clashes)}; the indexer uses them"
        )
    return [c for c in frame.columns if c not in KNOWN_COLUMNS]


def _row_product(
    record: dict[str, Any],
    row: int,
    extra: list[str],
    products: dict[str, Product],
    folder: Path,
    root: Path | None,
    issues: list[RowIssue],
) -> Product | None:
    """The product after this row (a new one, or a known one with more images), or None when the row
    is skipped (its reason appended to ``issues``)."""
    pid = _clean(record.get(PRODUCT_ID))
    if pid is None:
        issues.append(RowIssue(row, None, "missing product_id"))
        return None
    raw_images = _clean(record.get(IMAGE))
    if raw_images is None:
        issues.append(RowIssue(row, pid, "missing image"))
        return None
    try:
        price = parse_price(record.get(PRICE))
    except ValueError:
        issues.append(RowIssue(row, pid, f"price {_clean(record.get(PRICE))!r} is not a non-negative number"))
        return None
    sources = _image_sources(raw_images, row, pid, folder, root, issues)
    if not sources:
        return None
    fields = {
        TITLE: _clean(record.get(TITLE)) or pid,
        CATEGORY: _clean(record.get(CATEGORY)),
        BRAND: _clean(record.get(BRAND)),
        PRICE: price,
        DESCRIPTION: _clean(record.get(DESCRIPTION)),
        URL: _clean(record.get(URL)),
    }
    attributes = {c: v for c in extra if (v := _clean(record.get(c))) is not None}
    known = products.get(pid)
    if known is None:
        images = tuple(CatalogImage(pid, i, s, row) for i, s in enumerate(sources))
        product = Product(product_id=pid, attributes=attributes, images=images, **fields)
    else:
        conflicts = [
            name
            for name, value in fields.items()
            if _clean(record.get(name)) is not None and value != getattr(known, name)
        ]
        if conflicts:
            issues.append(
                RowIssue(row, pid, f"duplicate product_id with different {', '.join(conflicts)}; row skipped")
            )
            return None
        seen = {img.source for img in known.images}
        start = len(known.images)
        images = known.images + tuple(
            CatalogImage(pid, start + i, s, row) for i, s in enumerate(s for s in sources if s not in seen)
        )
        product = Product(
            **{**known.__dict__, "images": images, "attributes": {**attributes, **known.attributes}}
        )
    if len(product.images) > MAX_IMAGES_PER_PRODUCT:
        issues.append(
            RowIssue(row, pid, f"more than {MAX_IMAGES_PER_PRODUCT} images; the extra ones are ignored")
        )
        product = Product(**{**product.__dict__, "images": product.images[:MAX_IMAGES_PER_PRODUCT]})
    return product


def _image_sources(
    raw_images: str, row: int, pid: str, folder: Path, root: Path | None, issues: list[RowIssue]
) -> list[str]:
    """The row's ``|``-separated images that exist (inside ``root`` when confined), else an issue each."""
    sources: list[str] = []
    for entry in (e.strip() for e in raw_images.split("|")):
        if not entry:
            continue
        if root is not None:
            confined = _confined_image(entry, root)
            if confined is None:
                issues.append(RowIssue(row, pid, f"image not found in the zip: {entry}"))
                continue
            source = confined
        else:
            source = _resolve_image(entry, folder)
            if not is_url(source) and not Path(source).is_file():
                issues.append(RowIssue(row, pid, f"image file not found: {entry}"))
                continue
        sources.append(source)
    return sources
