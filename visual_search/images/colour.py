"""A small colour descriptor of a product's pixels, for the colour re-rank of the auto photo query.

ImageNet-style features barely separate colour, so the auto pipeline's misses are mostly
look-alike products of another colour ranked a few hundredths above the right one (bench/
colour_lab.py, bench/RESULTS.md "Colour re-rank experiment"). The descriptor kept there:

- a 128 px thumbnail (colour needs no detail; ~2 ms per query, a few ms per catalog image);
- white-patch normalisation with gains from the WHOLE frame (each channel's 99th percentile to
  255), so a colour cast is undone while a red shirt on a neutral background stays red;
- an HSV histogram of the product's pixels: 12 hue x 3 saturation bins for chromatic pixels (each
  hue vote split between the two nearest hue bins, around the circle) plus 4 value bins for
  grey / black / white ones (hue means nothing there): 40 floats, L1-normalised;
- compared by the Bhattacharyya coefficient (0 = disjoint, 1 = identical).

No gradio, no torch: the engine computes it at index time, query_views at query time.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .foreground import foreground_mask

__all__ = [
    "COLOUR_BINS",
    "WORK_SIDE",
    "bhattacharyya",
    "catalog_colour",
    "colour_histogram",
    "hsv_histogram",
    "stored_colour",
    "thumbnail",
    "white_patch",
]

WORK_SIDE = 128  # histograms are computed on a thumbnail this size
MIN_PIXELS = 50  # fewer masked pixels than this: the mask is not trusted, the whole image counts
H_BINS, S_BINS, GREY_BINS = 12, 3, 4
COLOUR_BINS = H_BINS * S_BINS + GREY_BINS  # 40


def thumbnail(image: Image.Image, side: int = WORK_SIDE) -> Image.Image:
    """``image`` as RGB with its longer side at most ``side`` (bilinear, as in the lab)."""
    scale = min(1.0, side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    rgb = image.convert("RGB")
    return rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BILINEAR)


def white_patch(rgb: np.ndarray) -> np.ndarray:
    """Undo a colour cast: each channel's 99th percentile over the whole frame is scaled to 255
    (float RGB 0-255, H x W x 3 or N x 3)."""
    flat = rgb.reshape(-1, 3)
    tops = np.percentile(flat, 99, axis=0)
    gains = 255.0 / np.maximum(tops, 1.0)
    return (rgb * gains).clip(0, 255)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in [0, 1), saturation and value in [0, 1] of N x 3 float RGB 0-255."""
    x = rgb / 255.0
    mx, mn = x.max(axis=1), x.min(axis=1)
    delta = mx - mn
    s = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    d = np.maximum(delta, 1e-6)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6.0
    return h % 1.0, s, mx


def hsv_histogram(pixels: np.ndarray) -> np.ndarray:
    """Hue x saturation bins for chromatic pixels, value bins for grey / black / white ones (N x 3
    float RGB 0-255 -> float32 (40,), L1-normalised; all zeros for no pixels).

    Hue votes are split linearly between the two nearest bin centres, around the circle: a hard
    bin edge sat on pure red (hue 0 = 1), so two reds a few degrees apart could share no bin, and
    a slight colour cast moved whole masses of pixels across an edge (soft votes: lab R@1 +1-2
    queries on 5 of 7 sets, R@10 +1 on 4, bench/RESULTS.md "Colour re-rank: depth 30, soft hue")."""
    h, s, v = _hsv(np.asarray(pixels, np.float32).reshape(-1, 3))
    chromatic = (s >= 0.2) & (v >= 0.2)
    si = np.minimum(((s - 0.2) / 0.8 * S_BINS).astype(int), S_BINS - 1)[chromatic]
    pos = h[chromatic] * H_BINS - 0.5  # bin centres sit at k + 0.5
    low = np.floor(pos)
    upper = (pos - low).astype(np.float64)
    low_bin = low.astype(int) % H_BINS
    high_bin = (low_bin + 1) % H_BINS
    out = np.zeros(COLOUR_BINS, np.float64)
    np.add.at(out, low_bin * S_BINS + si, 1.0 - upper)
    np.add.at(out, high_bin * S_BINS + si, upper)
    vi = np.minimum((v[~chromatic] * GREY_BINS).astype(int), GREY_BINS - 1)
    out[H_BINS * S_BINS :] += np.bincount(vi, minlength=GREY_BINS)
    return (out / max(float(out.sum()), 1.0)).astype(np.float32)


def colour_histogram(image: Image.Image, mask: Image.Image | None = None) -> np.ndarray:
    """The colour descriptor (float32, 40) of ``image``'s pixels under ``mask`` (L, >= 128 = the
    product), after white-patch normalisation of the whole frame. No mask, or one covering fewer
    than MIN_PIXELS of the thumbnail: the whole image counts."""
    small = thumbnail(image)
    rgb = white_patch(np.asarray(small, np.float32))
    if mask is not None:
        m = np.asarray(mask.convert("L").resize(small.size, Image.Resampling.BILINEAR)) >= 128
        if int(m.sum()) >= MIN_PIXELS:
            return hsv_histogram(rgb[m])
    return hsv_histogram(rgb.reshape(-1, 3))


def catalog_colour(image: Image.Image) -> np.ndarray:
    """A catalog image's descriptor: its product pixels under :func:`foreground_mask` (studio
    background), or the whole image when there is none (a scene photo). The mask is computed on
    the 128 px thumbnail, not the full image, so indexing stays cheap."""
    small = thumbnail(image)
    return colour_histogram(small, foreground_mask(small))


def bhattacharyya(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya coefficient of two L1-normalised histograms: 1 identical, 0 disjoint."""
    x = np.clip(np.asarray(a, np.float64), 0.0, None)
    y = np.clip(np.asarray(b, np.float64), 0.0, None)
    if x.shape != y.shape:
        return 0.0
    return float(np.sqrt(x * y).sum())


def stored_colour(value: object) -> np.ndarray | None:
    """A histogram as a payload stores it (a list of COLOUR_BINS finite floats), or None when it is
    missing (an index from before colours) or malformed. The index backfills what this rejects; the
    re-rank gives such a product no bonus."""
    if not isinstance(value, (list, tuple)) or len(value) != COLOUR_BINS:
        return None
    try:
        arr = np.asarray(value, np.float32)
    except (TypeError, ValueError):
        return None
    return arr if bool(np.isfinite(arr).all()) else None
