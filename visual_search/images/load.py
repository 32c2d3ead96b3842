"""Load and sanitize images from anywhere, and optionally cut the product out of its background.

Every photo that reaches the encoder passes through :func:`load_image`, so this module is where
untrusted input (uploads, URLs, catalog files) becomes a small, upright, 8-bit RGB image, or an
:class:`~visual_search.core.errors.ImageError` with a message a person can act on. It deliberately
imports neither gradio, torch nor qdrant: the engine, the CLI and the indexer all use it.

URLs are read only through :mod:`visual_search.images.fetch` (public hosts only unless the process's
default policy says otherwise). Memory is bounded: sizes are checked from the header, JPEGs decode
at reduced scale, big decodes run one at a time and memory goes back to the OS after a wave.

Background removal lives in :mod:`visual_search.images.background`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import hashlib
import io
import math
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visual_search.core.errors import ImageError
from visual_search.images import fetch as _fetch
from visual_search.images.fetch import FetchPolicy
from visual_search.images.messages import cap, mb, reason, short

__all__ = [
    "EMBED_MAX_SIDE",
    "LARGE_DECODE_PIXELS",
    "MAX_BYTES",
    "MAX_DECODE_PIXELS",
    "MAX_PIXELS",
    "bytes_sha256",
    "file_sha256",
    "load_image",
    "release_memory",
    "source_sha256",
    "to_rgb",
]

MAX_PIXELS = 200_000_000
"""Hard refusal above this many pixels (from the header, before decoding), whatever the format."""

MAX_DECODE_PIXELS = 40_000_000
"""Most pixels ever decoded at once. JPEG decodes at 1/2, 1/4 or 1/8 scale to stay under it (a
200 MP JPEG costs 3 MP); formats Pillow cannot reduce while decoding (PNG, WebP, TIFF, ...) are
refused above it from their header, since a 99 MP PNG would take 300-400 MB to decode."""

LARGE_DECODE_PIXELS = 8_000_000
"""Decodes above this many pixels run one at a time: eight concurrent 40 MP decodes would need
1.3 GB at once; one at a time they need 160 MB, and the memory is handed back after the wave."""

MAX_BYTES = 50 * 1024 * 1024
"""Largest file, download or upload we read into memory."""

EMBED_MAX_SIDE = 1024
"""CLIP sees 224-448 px; anything bigger than this only costs memory and time."""

# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that. We refuse above MAX_PIXELS
# ourselves (from the header, before decoding), so Pillow's own guard only has to catch what
# slips past that check.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_WHITE = (255, 255, 255)
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_BOMB_PIXELS_RE = re.compile(r"\((\d+) pixels\)")
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_REDUCIBLE_FORMATS = ("JPEG", "MPO")  # Pillow's draft() scales these while decoding

ImageSource = str | os.PathLike | bytes | Image.Image


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_image(
    source: ImageSource,
    *,
    max_side: int | None = EMBED_MAX_SIDE,
    timeout: float | None = None,
    max_bytes: int = MAX_BYTES,
    policy: FetchPolicy | None = None,
) -> Image.Image:
    """Return ``source`` as an upright RGB image whose longest side is at most ``max_side``.

    ``source`` may be a file path, raw bytes (an upload), an ``http(s)://`` URL or a PIL image
    (which is not modified). Transparent areas become white, 16-bit and float images are scaled
    to 8 bits, EXIF orientation is applied and animations give their first frame.
    ``max_side=None`` keeps the full resolution (up to MAX_DECODE_PIXELS). Anything that cannot be
    used raises :class:`ImageError` naming the source, never a Pillow traceback.

    URLs always go through :func:`visual_search.images.fetch.fetch` under ``policy`` (default: the
    process's default policy, public hosts only unless the app or CLI said otherwise);
    ``timeout`` and ``max_bytes`` tighten that policy's deadline and byte cap.
    """
    if max_side is not None and max_side < 1:
        raise ValueError("max_side must be a positive number of pixels or None")
    if isinstance(source, Image.Image):
        label = "the image"
        _check_pixels(source.size, label)
        return _sanitize(source, label, max_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "the uploaded file"
    elif isinstance(source, str) and _URL_RE.match(source.strip()):
        url = source.strip()
        data, label = _download(url, timeout, max_bytes, policy), short(url)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source)).expanduser()
        data, label = _read_file(path, max_bytes), f"'{path.name}'"
    else:
        raise TypeError(f"load_image() takes a path, URL, bytes or PIL image, not {type(source).__name__}")
    if not data:
        raise ImageError(f"{cap(label)} is empty (0 bytes), so there is no picture to read.")
    if len(data) > max_bytes:
        raise ImageError(f"{cap(label)} is {mb(len(data))}; the limit is {mb(max_bytes)}.")
    return _decode(data, label, max_side)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes; the indexer uses it to skip images that did not change."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """Hex SHA-256 of in-memory bytes, equal to :func:`file_sha256` of a file holding them."""
    return hashlib.sha256(data).hexdigest()


def source_sha256(
    source: str | os.PathLike | bytes,
    *,
    timeout: float | None = None,
    max_bytes: int = MAX_BYTES,
    policy: FetchPolicy | None = None,
) -> str:
    """Content hash of a catalog image source (path, http(s) URL or bytes), for skipping unchanged
    images. URLs are downloaded (same caps as :func:`load_image`): a URL can keep its name and
    change its picture. Raises :class:`ImageError` for missing, unreadable or oversized sources."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes_sha256(bytes(source))
    if isinstance(source, str) and _URL_RE.match(source.strip()):
        return bytes_sha256(_download(source.strip(), timeout, max_bytes, policy))
    path = Path(os.fspath(source)).expanduser()
    _stat_file(path, max_bytes)
    try:
        return file_sha256(path)
    except OSError as e:
        raise ImageError(f"Image file '{path.name}' cannot be read: {e.strerror or e}.") from None


def _stat_file(path: Path, max_bytes: int) -> None:
    """Refuse missing paths, folders and oversized files before reading anything."""
    label = f"'{path.name or path}'"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"Image file {label} was not found.") from None
    except OSError as e:
        raise ImageError(f"Image file {label} cannot be read: {e.strerror or e}.") from None
    if path.is_dir():
        raise ImageError(f"{label} is a folder, not an image file.")
    if size > max_bytes:
        raise ImageError(f"Image file {label} is {mb(size)}; the limit is {mb(max_bytes)}.")


def _read_file(path: Path, max_bytes: int) -> bytes:
    """Read a whole image file, refusing missing paths, folders and oversized files up front."""
    _stat_file(path, max_bytes)
    label = f"'{path.name or path}'"
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"Image file {label} cannot be read: {e.strerror or e}.") from None


def _download(url: str, timeout: float | None, max_bytes: int, policy: FetchPolicy | None) -> bytes:
    """The guarded fetch (see visual_search.images.fetch): the only way this module reads a URL."""
    return _fetch.fetch(url, _fetch.with_limits(policy, timeout_s=timeout, max_bytes=max_bytes)).data


def _decode(data: bytes, label: str, max_side: int | None) -> Image.Image:
    """Decode bytes lazily: header first (size check), then a reduced-size decode where possible."""
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow refused before we could look (or warnings are errors here): report its count.
        match = _BOMB_PIXELS_RE.search(str(e))
        raise ImageError(_too_many_pixels(int(match.group(1)) if match else None, label)) from None
    except Exception:  # noqa: BLE001 - any Pillow failure on untrusted bytes means "not an image"
        raise ImageError(_not_an_image(data, label)) from None
    in_wave = False
    try:
        with img:
            reducible = img.format in _REDUCIBLE_FORMATS
            _check_pixels(img.size, label, reducible=reducible)
            if img.width * img.height > LARGE_DECODE_PIXELS:
                in_wave = _wave_enter()  # memory goes back to the OS when the wave of big photos ends
            if reducible:
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale: a 48 MP photo then costs 3 MP of work.
                img.draft("RGB", _draft_request(img.size, max_side))
                _check_pixels(img.size, label, reducible=False)
            large = img.width * img.height > LARGE_DECODE_PIXELS
            with _decode_gate if large else contextlib.nullcontext():  # large decodes one at a time
                try:
                    img.load()  # animated GIF/WebP/APNG: Image.open stands on the first frame
                except Exception as e:  # noqa: BLE001 - truncated/corrupt data surfaces here, in any form
                    raise ImageError(
                        f"{cap(label)} is damaged or incomplete and cannot be decoded ({reason(e)}). "
                        "Try saving or downloading it again."
                    ) from None
                return _sanitize(img, label, max_side)
    finally:
        if in_wave:
            _wave_leave()  # after img is closed, so its full-size buffer is already freed


def _draft_request(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The size to ask draft() for: at most max_side, and small enough that the decode stays
    under MAX_DECODE_PIXELS (draft picks the strongest power-of-two reduction still >= request)."""
    width, height = size
    divisor = 1
    while divisor < 8 and math.ceil(width / divisor) * math.ceil(height / divisor) > MAX_DECODE_PIXELS:
        divisor *= 2
    request = (math.ceil(width / divisor), math.ceil(height / divisor))
    if max_side is not None:
        fit = _fit(size, max_side)
        request = (min(request[0], fit[0]), min(request[1], fit[1]))
    return request


_decode_gate = threading.Lock()
_wave_lock = threading.Lock()
_wave_size = 0


def _wave_enter() -> bool:
    global _wave_size
    with _wave_lock:
        _wave_size += 1
    return True


def _wave_leave() -> None:
    """The last big photo of a wave hands the freed memory back to the OS."""
    global _wave_size
    with _wave_lock:
        _wave_size -= 1
        last = _wave_size == 0
    if last:
        release_memory()


MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
"""Allocations at least this big get their own mmap (glibc), so freeing one returns it to the OS.

glibc raises its mmap threshold to the size of the largest block freed (up to 32 MB), after which
Pillow's 16 MB image blocks come from the heap and stay there, fragmented between other
allocations. A fixed threshold keeps decoded photos out of the heap; model inference at batch 1
rarely allocates this much at once."""


def _load_libc() -> Any:
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


_libc = _load_libc()
if _libc is not None and hasattr(_libc, "mallopt"):
    _M_MMAP_THRESHOLD = -3
    _libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_memory() -> None:
    """Collect garbage and ask glibc to return free heap pages (large decodes fragment it)."""
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)


def _check_pixels(size: tuple[int, int], label: str, *, reducible: bool = True) -> None:
    """Refuse images that are too large (or have no pixels) using only their header size.

    ``reducible=False``: the image would be decoded at this size, so MAX_DECODE_PIXELS applies.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{cap(label)} has no pixels ({width}x{height}).")
    if not reducible and width * height > MAX_DECODE_PIXELS:
        raise ImageError(_too_many_pixels(width * height, label, size, limit=MAX_DECODE_PIXELS))
    if width * height > MAX_PIXELS:
        raise ImageError(_too_many_pixels(width * height, label, size))


def _too_many_pixels(
    pixels: int | None, label: str, size: tuple[int, int] | None = None, *, limit: int = MAX_PIXELS
) -> str:
    limit_text = f"the limit is {limit // 1_000_000} megapixels"
    if pixels is None:
        return f"{cap(label)} is too large; {limit_text}. Please use a smaller photo."
    dims = f" ({size[0]}x{size[1]})" if size else ""
    return (
        f"{cap(label)} is {pixels / 1e6:.0f} megapixels{dims}; {limit_text}. "
        "Please use a smaller version of the photo."
    )


def _not_an_image(data: bytes, label: str) -> str:
    head = data[:32]
    if b"ftypheic" in head or b"ftypheix" in head or b"ftypmif1" in head or b"ftyphevc" in head:
        return (
            f"{cap(label)} is a HEIC/HEIF photo (the iPhone default), which this app cannot read. "
            "Export it as JPEG or PNG, or set the camera to 'Most Compatible'."
        )
    if b"<svg" in data[:1024].lower():
        return f"{cap(label)} is an SVG drawing; use a PNG, JPEG or WebP picture instead."
    if head.lstrip()[:1] in (b"<", b"{"):
        return f"{cap(label)} is a text/web page, not an image."
    return (
        f"{cap(label)} is not an image this app can read (supported: JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF)."
    )


# ----------------------------------------------------------------------------------------------
# Sanitizing: orientation, colour mode, size
# ----------------------------------------------------------------------------------------------


def _sanitize(img: Image.Image, label: str, max_side: int | None) -> Image.Image:
    """Upright, RGB, at most ``max_side``; always a new image the caller owns, without metadata.

    Shrinking comes first where the mode allows it, so a 100 MP PNG is never copied at full size;
    the EXIF rotation is applied last, to the small image (rotation and ``max_side`` commute).
    """
    source = img
    try:
        orientation = _exif_orientation(img)
        if img.mode in _HIGH_DEPTH_MODES:
            img = _to_8bit(_shrink(img, max_side))
        if img.mode in ("RGB", "L", "RGBA", "LA") and "transparency" not in img.info:
            img = _shrink(img, max_side)
        img = _shrink(to_rgb(img), max_side)
        if orientation in _EXIF_TRANSPOSE:
            img = img.transpose(_EXIF_TRANSPOSE[orientation])
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - exotic modes/plugins: still a human message
        raise ImageError(
            f"{cap(label)} uses a picture format this app cannot convert ({reason(e)})."
        ) from None
    if img is source:
        img = img.copy()
    # Drop EXIF/ICC/etc.: the pixels are now upright sRGB-ish, and a stale orientation tag would
    # make the next exif_transpose (e.g. in a UI library) rotate the image a second time.
    img.info = {}
    return img


_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = upright); broken EXIF blocks are ignored, not fatal."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not lose the photo
        return 1


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any 8-bit mode to RGB, flattening transparency onto white (a product-shot backdrop).

    Transparent pixels hold arbitrary colours (often black); dropping alpha naively would put
    the product on black, which CLIP reads as a different photo.
    """
    if img.mode in _HIGH_DEPTH_MODES:
        img = _to_8bit(img)
    if img.mode == "RGB":
        return img if "transparency" not in img.info else _flatten(img.convert("RGBA"))
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _flatten(img.convert("RGBA"))
    if img.mode == "CMYK":
        return _cmyk_to_rgb(img)
    return img.convert("RGB")


def _flatten(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """Use the embedded ICC profile when there is one (print files); Pillow's formula otherwise."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to the plain conversion
            pass
    return img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit and float greyscale to 0-255 instead of clipping (which gives white)."""
    arr = np.asarray(img).astype(np.float32)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        arr = arr * 255.0
    elif img.mode.startswith("I;16") or (lo >= 0 and hi > 255 and hi <= 65535):
        arr = arr / 257.0
    elif lo < 0 or hi > 65535:
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale so the longest side is at most ``max_side`` (high-quality, never upscales)."""
    if max_side is None or max(img.size) <= max_side:
        return img
    target = _fit(img.size, max_side)
    if img.mode in ("1", "P"):
        img = img.convert("RGBA" if "transparency" in img.info else "L" if img.mode == "1" else "RGB")
    try:
        return img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    except ValueError:  # a mode Pillow cannot filter (e.g. some I;16 variants): go via 32-bit
        return img.convert("I").resize(target, Image.Resampling.LANCZOS)


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))
