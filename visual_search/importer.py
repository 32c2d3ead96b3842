"""Catalog import from the app: a CSV/Parquet upload plus an optional zip of its images.

The upload is untrusted, so the zip is checked as a whole before anything is written: no paths that
leave the upload folder (zip-slip), no symbolic links, no encrypted members, a bounded number of
members, bounded total size and no compression bombs. Only image files are extracted.

Each upload gets its own folder (``<dest_root>/<timestamp>-<name>/``) that must be kept: the index
stores the images' absolute paths, and the app shows them from there. An uploaded catalog may only
use images inside its own upload folder (see :func:`import_catalog`).
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
import zipfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import pandas as pd

from .catalog import read_catalog
from .core.errors import CatalogError

if TYPE_CHECKING:
    from .engine import SearchEngine
    from .indexing import IndexReport

log = logging.getLogger(__name__)

CATALOG_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_MEMBERS = 20_000
MAX_TOTAL_BYTES = 2 * 1024**3
MAX_RATIO = 100  # uncompressed / compressed; photos barely compress, bombs reach 1000+
RATIO_CHECK_FROM = 1024**2  # tiny files (a blank PNG) may compress very well; they cannot hurt
_CHUNK = 1024 * 1024
_JUNK = re.compile(r"(^|/)(__MACOSX/|\._[^/]*$|\.DS_Store$|Thumbs\.db$)")


def prepare_upload(csv_path: Path, zip_path: Path | None, dest_root: Path) -> Path:
    """Copy the catalog into a fresh folder, extract the images next to it; return the copied file.

    If every image sits under one top folder and the catalog's paths only match without that folder
    (``x.jpg`` for ``images/x.jpg``), the folder's contents are extracted flat instead.
    Raises CatalogError with a message for the person who uploaded.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CatalogError(f"The catalog file {csv_path.name} was not uploaded completely; try again.")
    suffix = csv_path.suffix.lower()
    if suffix not in CATALOG_SUFFIXES:
        raise CatalogError(
            f"The catalog {csv_path.name} should be a .csv or .parquet file (got {suffix or 'no extension'})."
        )
    members: list[tuple[zipfile.ZipInfo, str]] = []
    archive: zipfile.ZipFile | None = None
    if zip_path is not None:
        archive = _open_zip(Path(zip_path))
    try:
        if archive is not None:
            members = _checked_members(archive, Path(zip_path).name)
        dest = _fresh_folder(Path(dest_root), csv_path.stem)
        try:
            copied = dest / f"{_safe_name(csv_path.stem)}{suffix}"
            shutil.copyfile(csv_path, copied)
            if archive is not None:
                strip = _prefix_to_strip(copied, [name for _, name in members])
                _extract(archive, members, dest, strip)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    finally:
        if archive is not None:
            archive.close()
    return copied


def import_catalog(
    engine: SearchEngine,
    csv_path: Path,
    zip_path: Path | None,
    dest_root: Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    confine: bool = True,
) -> IndexReport:
    """prepare_upload, then index the copied catalog (bad rows come back in the report's issues).

    ``confine`` (the default, for uploads from the app): local images must be files of the upload's
    own zip; absolute paths, ``..`` and links out are reported as "image not found in the zip",
    never read. Image links go through the guarded fetch under the process's default policy
    (public hosts only in the app). ``confine=False`` is for the operator, who may name any file.
    """
    copied = prepare_upload(csv_path, zip_path, dest_root)
    catalog = read_catalog(copied, image_root=copied.parent if confine else None)
    return engine.index_catalog(catalog, progress=progress)


# ---------------------------------------------------------------- zip checks


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise CatalogError(f"The image archive {path.name} was not uploaded completely; try again.")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CatalogError(f"{path.name} is not a readable zip file ({exc}).") from exc


def _checked_members(archive: zipfile.ZipFile, label: str) -> list[tuple[zipfile.ZipInfo, str]]:
    """Validate every member (images or not) and return the image files with their clean names."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CatalogError(
            f"The zip {label} holds {len(infos):,} entries; at most {MAX_MEMBERS:,} are accepted. "
            "Split the catalog into several uploads."
        )
    total = 0
    images: list[tuple[zipfile.ZipInfo, str]] = []
    for info in infos:
        name = _clean_member_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise CatalogError(f"The zip holds {info.filename}, a symbolic link; refusing it.")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise CatalogError(
                f"The zip holds {info.filename}, which is password-protected; upload it unencrypted."
            )
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise CatalogError(
                f"The zip {label} unpacks to more than {MAX_TOTAL_BYTES // 1024**3} GB; upload the images in "
                "smaller parts or resize them."
            )
        if info.file_size >= RATIO_CHECK_FROM and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise CatalogError(
                f"The zip holds {info.filename}, which unpacks {info.file_size // max(info.compress_size, 1):,} "
                "times larger than it is stored (a zip bomb?); refusing it."
            )
        if _JUNK.search(name) or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            log.info("Import: skipping %s (not an image)", info.filename)
            continue
        images.append((info, name))
    return images


def _clean_member_name(raw: str) -> str:
    """The member's path relative to the upload folder; CatalogError if it would land outside it."""
    name = raw.replace("\\", "/")
    outside = CatalogError(f"The zip holds {raw}, a path outside the upload; refusing it.")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or "\x00" in name:
        raise outside
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise outside
    return "/".join(parts)


# ---------------------------------------------------------------- layout


def _prefix_to_strip(catalog: Path, names: list[str]) -> str:
    """'top/' when all images share one top folder and the catalog's paths match better without it."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or not all("/" in n for n in names):
        return ""
    prefix = next(iter(tops)) + "/"
    entries = list(_relative_image_entries(catalog))
    if not entries:
        return ""
    as_is = set(names)
    flat = {n[len(prefix) :] for n in names}
    hits_as_is = sum(e in as_is for e in entries)
    hits_flat = sum(e in flat for e in entries)
    return prefix if hits_flat > hits_as_is else ""


def _relative_image_entries(catalog: Path) -> Iterable[str]:
    """The catalog's relative image paths, normalised like member names; nothing if it is unreadable
    (read_catalog reports that properly later)."""
    try:
        if catalog.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(catalog)
        else:
            sep = "\t" if catalog.suffix.lower() == ".tsv" else ","
            frame = pd.read_csv(catalog, dtype=str, keep_default_na=False, sep=sep, encoding_errors="replace")
    except Exception as exc:  # any parse failure: leave the layout as it is
        log.info("Import: cannot pre-read %s (%s)", catalog.name, exc)
        return
    columns = {str(c).strip().lower(): c for c in frame.columns}
    if "image" not in columns:
        return
    for cell in frame[columns["image"]]:
        if not isinstance(cell, str):
            continue
        for entry in cell.split("|"):
            entry = entry.strip().replace("\\", "/")
            if not entry or entry.startswith(("http://", "https://", "/", "~")):
                continue
            yield "/".join(p for p in entry.split("/") if p not in ("", "."))


# ---------------------------------------------------------------- extraction


def _extract(
    archive: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, str]], dest: Path, strip: str
) -> None:
    root = dest.resolve()
    written = 0
    for info, name in members:
        relative = name[len(strip) :] if strip and name.startswith(strip) else name
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or target == root:
            raise CatalogError(f"The zip holds {info.filename}, a path outside the upload; refusing it.")
        target.parent.mkdir(parents=True, exist_ok=True)
        limit = info.file_size
        size = 0
        try:
            with archive.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(_CHUNK):
                    size += len(chunk)
                    written += len(chunk)
                    if size > limit or written > MAX_TOTAL_BYTES:  # header lied about the size
                        raise CatalogError(
                            f"The zip holds {info.filename}, which unpacks larger than it declares; refusing it."
                        )
                    out.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise CatalogError(f"Cannot extract {info.filename} from the zip ({exc}).") from exc


def _safe_name(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:60]
    return cleaned or "catalog"


def _fresh_folder(dest_root: Path, stem: str) -> Path:
    """A new folder per upload, so two uploads (or two tabs) never mix their images."""
    dest_root.mkdir(parents=True, exist_ok=True)
    base = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{_safe_name(stem)}"
    for attempt in range(1000):
        folder = dest_root / (base if attempt == 0 else f"{base}-{attempt + 1}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise CatalogError(f"Cannot create an upload folder under {dest_root}; too many uploads at once.")
