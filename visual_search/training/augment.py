"""Image augmentation shared by fine-tuning and evaluation: make catalog shots look like shopper photos.

Catalog photos are clean (studio background, centred, well lit); shoppers photograph products on a
kitchen table, at an angle, in yellow light, through a phone's JPEG encoder. Everything here is a
pure function of the input image and a :class:`random.Random`, so a seed reproduces it exactly, in any
process and with any number of DataLoader workers.

- :func:`random_background` solid colour, gradient, noise texture, stripes, checkerboard or clutter.
- :func:`foreground_mask` the product's mask when the photo has a plain (studio) background, else None.
- :func:`paste_on_background` the product (cut out when possible) at a random scale and angle on a
  new background: the "background change" used in training and by the synthetic query builder.
- :func:`shopper_photo` a synthetic shopper photo: cluttered background, random scale/angle,
  lighting change, blur, JPEG artefacts (``evaluate.synthetic_queries`` uses it).
- :func:`train_augment` the fine-tuning augmentation: background change, random resized crop, flip,
  colour jitter.
- :func:`shopper_query` the harder evaluation's query kinds (QUERY_KINDS), mirroring how shoppers
  photograph things: ``handheld`` (the item cut out, held over a hand on an indoor background,
  rotated up to 25 degrees), ``close_up`` (a tight off-centre crop of 40-70% of the item with a
  colour cast) and ``clutter`` (the item small, near the centre, beside a different catalog product
  on a busy surface).
"""

from __future__ import annotations

import colorsys
import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from visual_search.images.foreground import foreground_mask

__all__ = [
    "BACKGROUND_KINDS",
    "QUERY_KINDS",
    "foreground_mask",
    "jpeg_artefacts",
    "paste_on_background",
    "random_background",
    "shopper_photo",
    "shopper_query",
    "train_augment",
]

BACKGROUND_KINDS = ("solid", "gradient", "noise", "stripes", "checker", "clutter")


# ----------------------------------------------------------------------------------------------
# Backgrounds


def _colour(rng: random.Random, *, light: float | None = None) -> tuple[int, int, int]:
    """A random, plausible surface colour (muted more often than saturated)."""
    hue = rng.random()
    sat = rng.choice((rng.uniform(0.0, 0.25), rng.uniform(0.2, 0.8)))
    val = light if light is not None else rng.uniform(0.25, 0.95)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def random_background(size: tuple[int, int], rng: random.Random, kind: str | None = None) -> Image.Image:
    """An RGB background of ``size``: one of BACKGROUND_KINDS (random when ``kind`` is None)."""
    width, height = size
    kind = kind or rng.choice(BACKGROUND_KINDS)
    if kind not in BACKGROUND_KINDS:
        raise ValueError(f"unknown background kind {kind!r}; use one of {', '.join(BACKGROUND_KINDS)}")
    if kind == "solid":
        return Image.new("RGB", size, _colour(rng))
    if kind == "gradient":
        a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        pixels = a * (1 - t[..., None]) + b * t[..., None]
        return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    if kind == "noise":  # fabric / wood / concrete-ish: smoothed noise around a base colour
        noise_rng = np.random.default_rng(rng.getrandbits(32))
        cell = rng.choice((2, 4, 8, 16))
        shape = (max(1, height // cell), max(1, width // cell), 1)
        small = noise_rng.normal(0, rng.uniform(8, 30), shape) + noise_rng.normal(0, 4, shape[:2] + (3,))
        grain = Image.fromarray((small + 128).clip(0, 255).astype(np.uint8), "RGB").resize(
            size, Image.Resampling.BICUBIC
        )
        base = np.array(_colour(rng), np.float32)
        pixels = base + np.asarray(grain, np.float32) - 128
        return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    if kind == "stripes":
        img = Image.new("RGB", size, _colour(rng))
        draw = ImageDraw.Draw(img)
        other = _colour(rng)
        step = rng.randint(max(4, width // 30), max(8, width // 6))
        thick = rng.randint(2, max(3, step // 2))
        diagonal = rng.random() < 0.5
        for x in range(-height, width + height, step):
            offset = height if diagonal else 0
            draw.line([(x, 0), (x + offset, height)], fill=other, width=thick)
        return img
    if kind == "checker":
        img = Image.new("RGB", size, _colour(rng))
        draw = ImageDraw.Draw(img)
        other = _colour(rng)
        cell = rng.randint(max(6, width // 24), max(12, width // 5))
        for y in range(0, height, cell):
            for x in range((y // cell) % 2 * cell, width, 2 * cell):
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=other)
        return img
    # clutter: a textured surface with random objects lying around (shapes in random colours)
    img = random_background(size, rng, rng.choice(("solid", "gradient", "noise")))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 18)):
        w = rng.randint(width // 12, width // 3)
        h = rng.randint(height // 12, height // 3)
        x, y = rng.randint(-w // 2, width - w // 2), rng.randint(-h // 2, height - h // 2)
        box = [x, y, x + w, y + h]
        fill = _colour(rng)
        shape = rng.choice(("rect", "ellipse", "polygon", "line"))
        if shape == "rect":
            draw.rectangle(box, fill=fill)
        elif shape == "ellipse":
            draw.ellipse(box, fill=fill)
        elif shape == "polygon":
            draw.polygon(
                [(rng.randint(x, x + w), rng.randint(y, y + h)) for _ in range(rng.randint(3, 6))], fill=fill
            )
        else:
            draw.line([(x, y), (x + w, y + h)], fill=fill, width=rng.randint(2, 8))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5)))


# ----------------------------------------------------------------------------------------------
# Cut-out


# ----------------------------------------------------------------------------------------------
# Compositing


def paste_on_background(
    image: Image.Image,
    rng: random.Random,
    *,
    size: tuple[int, int] | None = None,
    scale: tuple[float, float] = (0.45, 0.9),
    max_angle: float = 0.0,
    background: Image.Image | str | None = None,
    mask: Image.Image | None = None,
) -> Image.Image:
    """The product on a new background: cut out when the photo has a plain background (else the
    whole photo), scaled so its longer side is ``scale`` of the canvas, rotated by up to
    ``max_angle`` degrees either way, at a random position that keeps it inside the canvas.

    ``size`` is the canvas (default: the image's size); ``background`` an image, a kind from
    BACKGROUND_KINDS or None for a random kind; ``mask`` a precomputed :func:`foreground_mask`.
    """
    rgb = image.convert("RGB")
    canvas_size = size or rgb.size
    if isinstance(background, Image.Image):
        canvas = background.convert("RGB").resize(canvas_size, Image.Resampling.BILINEAR)
    else:
        canvas = random_background(canvas_size, rng, background)
    if mask is None:
        mask = foreground_mask(rgb)
    if mask is None:
        mask = Image.new("L", rgb.size, 255)
    bbox = mask.getbbox() or (0, 0, *rgb.size)
    product = rgb.crop(bbox).convert("RGBA")
    product.putalpha(mask.crop(bbox))

    target = rng.uniform(*scale) * min(canvas_size)
    factor = target / max(product.size)
    new_size = (max(1, round(product.width * factor)), max(1, round(product.height * factor)))
    product = product.resize(new_size, Image.Resampling.BICUBIC)
    if max_angle:
        product = product.rotate(rng.uniform(-max_angle, max_angle), Image.Resampling.BICUBIC, expand=True)
    if product.width > canvas_size[0] or product.height > canvas_size[1]:  # rotation grew it: fit again
        product.thumbnail(canvas_size, Image.Resampling.BICUBIC)
    x = rng.randint(0, canvas_size[0] - product.width)
    y = rng.randint(0, canvas_size[1] - product.height)
    canvas.paste(product, (x, y), product)
    return canvas


def jpeg_artefacts(image: Image.Image, quality: int) -> Image.Image:
    """Round-trip through JPEG at ``quality`` (1-95): blocking and ringing like a phone upload."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _lighting(image: Image.Image, rng: random.Random) -> Image.Image:
    """Exposure, contrast and white-balance shift (warm indoor light or cool daylight)."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.2))
    pixels = np.asarray(image, np.float32)
    warmth = rng.uniform(-0.12, 0.12)
    gains = np.array([1 + warmth, 1.0, 1 - warmth], np.float32)
    if rng.random() < 0.5:  # uneven light: a vignette-like falloff from a random point
        h, w = pixels.shape[:2]
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dist = np.hypot((yy - cy) / h, (xx - cx) / w)
        pixels = pixels * (1 - rng.uniform(0.1, 0.35) * np.clip(dist, 0, 1))[..., None]
    return Image.fromarray((pixels * gains).clip(0, 255).astype(np.uint8), "RGB")


def shopper_photo(image: Image.Image, rng: random.Random, *, size: int = 512) -> Image.Image:
    """A synthetic shopper photo of a catalog image: the product at a random scale (35-80% of the
    frame) and angle (up to 25 degrees) on a cluttered or textured background, a lighting change,
    sometimes a little blur, then JPEG artefacts (quality 30-75). ``size`` is the square output side."""
    kind = rng.choice(("clutter", "clutter", "noise", "gradient", "stripes", "checker"))
    photo = paste_on_background(
        image, rng, size=(size, size), scale=(0.35, 0.8), max_angle=25, background=kind
    )
    photo = _lighting(photo, rng)
    if rng.random() < 0.4:
        photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.4)))
    return jpeg_artefacts(photo, rng.randint(30, 75))


def _colour_jitter(image: Image.Image, rng: random.Random, strength: float = 0.3) -> Image.Image:
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(1 - strength, 1 + strength)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(1 - strength, 1 + strength)),
        lambda im: ImageEnhance.Color(im).enhance(rng.uniform(1 - strength, 1 + strength)),
    ]
    rng.shuffle(ops)
    for op in ops:
        image = op(image)
    shift = rng.uniform(-0.03, 0.03)  # small hue rotation: a red bag must stay red
    if abs(shift) > 1e-3:
        h, s, v = image.convert("HSV").split()
        h = h.point(lambda p: int(p + shift * 255) % 256)
        image = Image.merge("HSV", (h, s, v)).convert("RGB")
    return image


def _random_resized_crop(
    image: Image.Image,
    rng: random.Random,
    out_size: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """torchvision's RandomResizedCrop, driven by ``rng``: a crop of ``scale`` of the area with an
    aspect ratio in ``ratio``, resized to a square of ``out_size``; falls back to a centre crop."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        w = round((target * aspect) ** 0.5)
        h = round((target / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.resize((out_size, out_size), Image.Resampling.BICUBIC, box=(x, y, x + w, y + h))
    side = min(width, height)
    x, y = (width - side) // 2, (height - side) // 2
    return image.resize((out_size, out_size), Image.Resampling.BICUBIC, box=(x, y, x + side, y + side))


def train_augment(
    image: Image.Image,
    rng: random.Random,
    out_size: int,
    *,
    background_p: float = 0.5,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    flip_p: float = 0.5,
    jitter: float = 0.3,
) -> Image.Image:
    """Fine-tuning augmentation of one catalog image -> RGB square of ``out_size``: with probability
    ``background_p`` the product is moved onto a random background (scale 60-95%, up to 15 degrees),
    then a random resized crop (``crop_scale`` of the area), a horizontal flip and colour jitter."""
    image = image.convert("RGB")
    if background_p and rng.random() < background_p:
        image = paste_on_background(image, rng, scale=(0.6, 0.95), max_angle=15)
    image = _random_resized_crop(image, rng, out_size, scale=crop_scale)
    if rng.random() < flip_p:
        image = ImageOps.mirror(image)
    if jitter:
        image = _colour_jitter(image, rng, jitter)
    return image


# ----------------------------------------------------------------------------------------------
# Harder evaluation: shopper query kinds

QUERY_KINDS = ("handheld", "close_up", "clutter")
_SKIN_TONES = (
    (241, 194, 167),
    (224, 172, 138),
    (198, 134, 99),
    (161, 102, 67),
    (112, 72, 46),
    (234, 192, 160),
)


def _skin(rng: random.Random) -> tuple[int, int, int]:
    tone = np.array(rng.choice(_SKIN_TONES), np.float32) * rng.uniform(0.85, 1.1)
    return tuple(int(v) for v in tone.clip(0, 255))  # type: ignore[return-value]


def _draw_hand(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], height: int, skin: tuple[int, int, int]
) -> float:
    """A palm under the lower half of ``box``, the wrist leaving the frame at the bottom, fingers
    rising behind the item; returns the x of the thumb side (drawn later, over the item)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, y0 + 0.7 * h
    palm_w, palm_h = 0.75 * w, 0.5 * h
    draw.ellipse([cx - palm_w / 2, cy - palm_h / 2, cx + palm_w / 2, cy + palm_h / 2], fill=skin)
    draw.rectangle([cx - palm_w / 3, cy, cx + palm_w / 3, height], fill=skin)
    finger_w = palm_w / 4.5
    for i in range(4):
        fx = cx - palm_w / 2 + finger_w * (i + 0.6) * 1.05
        draw.rounded_rectangle(
            [fx - finger_w / 2.4, y0 + 0.1 * h, fx + finger_w / 2.4, cy], finger_w / 2.4, fill=skin
        )
    return finger_w


def _colour_cast(image: Image.Image, rng: random.Random) -> Image.Image:
    """A strong white-balance error (tungsten, shade, fluorescent green) plus a lighting change."""
    gains = rng.choice(((1.18, 1.0, 0.78), (0.82, 0.97, 1.2), (0.92, 1.12, 0.9), (1.1, 0.95, 1.08)))
    jitter = [g * rng.uniform(0.95, 1.05) for g in gains]
    pixels = np.asarray(image.convert("RGB"), np.float32) * np.array(jitter, np.float32)
    return _lighting(Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB"), rng)


def _record(info: dict | None, **values: object) -> None:
    """Analysis metadata for the caller (where the item ended up); never affects the photo."""
    if info is not None:
        info.update(values)


def _alpha_box(item: Image.Image, x: int, y: int, size: int | None = None) -> tuple[int, int, int, int]:
    """The visible pixels' box of an RGBA ``item`` pasted at (x, y), clipped to a ``size`` canvas."""
    x0, y0, x1, y1 = item.getchannel("A").point(lambda v: 255 if v >= 128 else 0).getbbox() or (
        0,
        0,
        *item.size,
    )
    box = (x + x0, y + y0, x + x1, y + y1)
    if size is None:
        return box
    return (max(0, box[0]), max(0, box[1]), min(size, box[2]), min(size, box[3]))


def _finish(photo: Image.Image, rng: random.Random) -> Image.Image:
    if rng.random() < 0.4:
        photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    return jpeg_artefacts(photo, rng.randint(40, 80))


def _item_rgba(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """The product cut out to its box (RGBA; the whole photo when there is no studio mask)."""
    rgb = image.convert("RGB")
    if mask is None:
        mask = foreground_mask(rgb)
    if mask is None:
        mask = Image.new("L", rgb.size, 255)
    bbox = mask.getbbox() or (0, 0, *rgb.size)
    item = rgb.crop(bbox).convert("RGBA")
    item.putalpha(mask.crop(bbox))
    return item


def _scaled(item: Image.Image, side: float, rng: random.Random, max_angle: float) -> Image.Image:
    factor = side / max(item.size)
    item = item.resize(
        (max(1, round(item.width * factor)), max(1, round(item.height * factor))), Image.Resampling.BICUBIC
    )
    if max_angle:
        item = item.rotate(rng.uniform(-max_angle, max_angle), Image.Resampling.BICUBIC, expand=True)
    return item


def handheld_photo(
    image: Image.Image, rng: random.Random, *, size: int = 512, info: dict | None = None
) -> Image.Image:
    """The item cut out (studio mask; whole photo otherwise) at 45-80% of the frame, rotated up to
    25 degrees either way, held in a hand (palm behind it, thumb over its edge) over an indoor
    surface; relit, JPEG-compressed. ``info`` (analysis only) gets ``item_box``."""
    canvas = random_background((size, size), rng, rng.choice(("noise", "gradient", "noise", "stripes")))
    item = _scaled(_item_rgba(image, None), rng.uniform(0.45, 0.8) * size, rng, 25)
    if item.width > size or item.height > size:  # rotation grew it: fit again
        item.thumbnail((size, size), Image.Resampling.BICUBIC)
    x, y = rng.randint(0, size - item.width), rng.randint(0, size - item.height)
    skin = _skin(rng)
    draw = ImageDraw.Draw(canvas)
    finger_w = _draw_hand(draw, (x, y, x + item.width, y + item.height), size, skin)
    canvas.paste(item, (x, y), item)
    _record(info, item_box=_alpha_box(item, x, y))
    thumb_x = x if rng.random() < 0.5 else x + item.width
    thumb_y = y + rng.uniform(0.45, 0.75) * item.height
    draw.ellipse(
        [thumb_x - finger_w / 2, thumb_y - finger_w, thumb_x + finger_w / 2, thumb_y + finger_w], fill=skin
    )
    return _finish(_lighting(canvas, rng), rng)


def close_up_photo(
    image: Image.Image, rng: random.Random, *, size: int = 512, info: dict | None = None
) -> Image.Image:
    """A tight, off-centre crop covering 40-70% of the item's box (the whole photo's when there is
    no studio mask), aspect 0.8-1.25, scaled to ``size``, with a colour cast; JPEG-compressed.
    ``info`` (analysis only) gets ``item_box`` (the whole frame) and ``crop_share``."""
    rgb = image.convert("RGB")
    mask = foreground_mask(rgb)
    solid = mask.point(lambda v: 255 if v >= 128 else 0) if mask is not None else None  # not the soft halo
    x0, y0, x1, y1 = (solid.getbbox() if solid is not None else None) or (0, 0, *rgb.size)
    bw, bh = x1 - x0, y1 - y0
    share = rng.uniform(0.4, 0.7)
    aspect = rng.uniform(0.8, 1.25)
    w = min(bw, max(8, round((share * bw * bh * aspect) ** 0.5)))
    h = min(bh, max(8, round(share * bw * bh / max(w, 1))))

    def off_centre(slack: int) -> int:  # towards one end of the free range, not the middle
        t = rng.uniform(0.0, 0.3) if rng.random() < 0.5 else rng.uniform(0.7, 1.0)
        return round(t * max(slack, 0))

    cx, cy = x0 + off_centre(bw - w), y0 + off_centre(bh - h)
    crop = rgb.crop((cx, cy, cx + w, cy + h))
    factor = size / max(crop.size)
    crop = crop.resize(
        (max(1, round(crop.width * factor)), max(1, round(crop.height * factor))), Image.Resampling.BICUBIC
    )
    _record(info, item_box=(0, 0, *crop.size), crop_share=w * h / max(1, bw * bh))
    return _finish(_colour_cast(crop, rng), rng)


def clutter_photo(
    image: Image.Image,
    distractor: Image.Image,
    rng: random.Random,
    *,
    size: int = 512,
    info: dict | None = None,
) -> Image.Image:
    """The item small (25-40% of the frame) near the centre, a DIFFERENT product (``distractor``,
    70-120% of the item's size) right beside it, on a busy cluttered surface; relit, JPEG-compressed.

    The item is the one nearer the centre: a shopper aims the phone at what they want. ``info``
    (analysis only) gets ``item_box`` and ``distractor_box``.
    """
    canvas = random_background((size, size), rng, "clutter")
    item = _scaled(_item_rgba(image, None), rng.uniform(0.25, 0.4) * size, rng, 15)
    other = _scaled(_item_rgba(distractor, None), max(item.size) * rng.uniform(0.7, 1.2), rng, 20)
    ix = round(size / 2 + rng.uniform(-0.1, 0.1) * size - item.width / 2)
    iy = round(size / 2 + rng.uniform(-0.1, 0.1) * size - item.height / 2)
    gap = rng.randint(4, max(5, size // 25))
    left = rng.random() < 0.5
    ox = ix - gap - other.width if left else ix + item.width + gap
    # keep at least 60% of the distractor's width inside the frame
    ox = min(max(ox, -round(0.4 * other.width)), size - round(0.6 * other.width))
    oy = round(iy + item.height / 2 - other.height / 2 + rng.uniform(-0.15, 0.15) * size)
    oy = min(max(oy, 0), max(0, size - other.height))
    canvas.paste(other, (ox, oy), other)
    canvas.paste(item, (ix, iy), item)
    _record(info, item_box=_alpha_box(item, ix, iy), distractor_box=_alpha_box(other, ox, oy, size))
    return _finish(_lighting(canvas, rng), rng)


def shopper_query(
    kind: str,
    image: Image.Image,
    rng: random.Random,
    *,
    distractor: Image.Image | None = None,
    size: int = 512,
    info: dict | None = None,
) -> Image.Image:
    """One query photo of ``kind`` (QUERY_KINDS); ``clutter`` needs a ``distractor`` product photo.

    ``info``, when given, receives analysis metadata (where the item is: ``item_box`` as x0, y0, x1,
    y1 in the photo's pixels, x1/y1 exclusive); it never changes the photo."""
    if kind == "handheld":
        return handheld_photo(image, rng, size=size, info=info)
    if kind == "close_up":
        return close_up_photo(image, rng, size=size, info=info)
    if kind == "clutter":
        if distractor is None:
            raise ValueError("the clutter kind needs a distractor product photo")
        return clutter_photo(image, distractor, rng, size=size, info=info)
    raise ValueError(f"unknown query kind {kind!r}; use one of {', '.join(QUERY_KINDS)}")
