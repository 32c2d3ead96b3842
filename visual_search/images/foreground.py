"""Studio-background product masks: the product's pixels when a photo has a plain background.

Lives with the image helpers (not in training/augment.py, which re-exports it) because the engine
needs it at index time for each catalog image's colour histogram (images/colour.py), and the engine
layers never import training.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["foreground_mask"]

_MASK_WORK_SIDE = 384  # masks are computed on a copy this small, then scaled up (soft edges anyway)


def foreground_mask(
    image: Image.Image, *, tolerance: float = 16.0, frame_tolerance: float = 28.0
) -> Image.Image | None:
    """Soft mask (mode L, 255 = product) when ``image`` has a plain studio background, else None.

    The background colour is the median of a thin frame around the border; the photo counts as a
    studio shot when nearly all of that frame is within ``frame_tolerance`` of it. Background pixels
    are those within ``tolerance`` (max channel difference, 0-255). The product is every pixel not
    connected to the border through background-coloured pixels, so white parts inside a product (a
    white logo on a shirt) stay. Full-bleed scene photos give None: callers then paste the whole
    photo as a rectangle, which is still a photo of the product held in front of something else.
    """
    from scipy import ndimage

    rgb = image.convert("RGB")
    work = rgb.copy()
    work.thumbnail((_MASK_WORK_SIDE, _MASK_WORK_SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(work, np.float32)
    h, w = pixels.shape[:2]
    if h < 8 or w < 8:
        return None
    edge = max(2, min(h, w) // 50)
    frame = np.concatenate(
        [
            pixels[:edge].reshape(-1, 3),
            pixels[-edge:].reshape(-1, 3),
            pixels[:, :edge].reshape(-1, 3),
            pixels[:, -edge:].reshape(-1, 3),
        ]
    )
    background = np.median(frame, axis=0)
    if (np.abs(frame - background).max(axis=1) <= frame_tolerance).mean() < 0.92:
        return None  # not a plain background
    is_background = np.abs(pixels - background).max(axis=2) <= tolerance
    labels, _ = ndimage.label(is_background)
    border_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border_labels[border_labels > 0])
    product = ndimage.binary_opening(~outside, iterations=1)
    share = product.mean()
    if share < 0.02 or share > 0.98:  # nothing found, or nothing but product: no usable cut-out
        return None
    mask = Image.fromarray((product * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(1.0))
    return mask.resize(rgb.size, Image.Resampling.BILINEAR)
