"""Rebuild the shipped sample catalog from real product photos found in package registries.

Sources (see /work/shared/DESIGN.md, "Real product photos for the sample catalog"):

* npm ``@vendure/create@3.7.3``: ``package/assets/images/*.jpg`` (Unsplash photos) and
  ``package/assets/products.csv`` (space-padded CSV, facets like ``category:Electronics|brand:Apple``).
* PyPI ``saleor==2.10.1`` (wheel): ``saleor/static/placeholders/*.png`` product renders and
  ``saleor/static/populatedb_data.json`` (Django fixture with products, categories, variants, images).

Writes, next to this script: ``catalog.csv``, ``images/*.jpg`` and ``ATTRIBUTION.md``; and
``assets/examples/*.jpg`` + ``README.md`` (synthetic "shopper photos" used as demo queries).

Run from anywhere::

    python sample_catalog/build_sample_catalog.py            # downloads both packages (npm + pip)
    python sample_catalog/build_sample_catalog.py --sources DIR   # reuse a folder holding the .tgz/.whl

Everything is deterministic: same packages in, byte-identical files out.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import itertools
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

VENDURE_PKG = "@vendure/create"
VENDURE_VERSION = "3.7.3"
SALEOR_PKG = "saleor"
SALEOR_VERSION = "2.10.1"

MAX_SIDE = 640
JPEG_QUALITY = 85
DESC_MAX = 300
# Two views count as near-exact duplicates when their 64x64 RGB thumbnails differ by at most this
# mean absolute difference (0-255 scale). Kept tight on purpose: Saleor's juice bottles share one
# render with different label colours and differ by only ~3 at 32x32 (perceptual hashes collide).
NEAR_DUP_MAD = 1.5
COLUMNS = ["product_id", "image", "title", "category", "brand", "price", "description", "url", "source"]

# --- Curation decisions (made by looking at every image; see ATTRIBUTION.md) -----------------

# Saleor's fixture points several products at the same render. Keep the product whose name is
# printed on the label; the others are dropped (every image belongs to exactly one product).
SHARED_IMAGE_OWNER = {
    "saleordemoproduct_fd_juice_06.png": "saleor-orange-juice",  # label "Orange"; also Apple Juice
    "saleordemoproduct_fd_juice_03.png": "saleor-power-juice",  # label "Power"; also Pineapple Juice
    "saleordemoproduct_fd_juice_02.png": "saleor-bean-juice",  # label "Beans"; also Coconut Juice
    "saleordemoproduct_cl_boot06_1.png": "saleor-t-shirt-4",  # same two renders for t-shirt-3
}

# Views that are not a picture of the product as a whole (extreme close-ups of a print or logo).
DROP_VIEWS = {
    "saleordemoproduct_cl_bogo04_2.png": "close-up of the logo patch, no garment visible",
    "saleordemoproduct_cl_boot01_2.png": "close-up of the shirt print, no garment shape",
    "saleordemoproduct_cl_boot06_2.png": "flat artwork of the print only, no garment",
}

# Whole products to leave out (none at present: every Vendure photo shows one clear product).
DROP_PRODUCTS: dict[str, str] = {}

# Files in the packages that are never product photos (documented, never read).
NOT_PRODUCTS = {
    "saleor/static/placeholders/products-list/*.jpg": "category banners (lifestyle/people), no single product",
    "saleor/static/images/placeholder*.png": "'no image' placeholders",
    "saleor/static/images/logo-light.svg": "logo",
}

BRAND_FIXES = {"Nikkon": "Nikon"}  # typo in Vendure's products.csv

# Saleor leaf categories under "Apparel" are folded into one category; the others are kept.
SALEOR_CATEGORY_FOLD = {"Apparel": "Apparel"}

# Demo query photos: (file name, product_id, background, canvas size, rotation in degrees, brightness
# factor, cut-out threshold (colour distance from the studio background; low for flat white renders
# so white soles survive), seed). Picked for four categories and clean studio backgrounds.
EXAMPLES = [
    ("example_camera.jpg", "vendure-instamatic-camera", "wood", (640, 480), 8.0, 0.88, 50.0, 11),
    ("example_cactus.jpg", "vendure-spiky-cactus", "shapes", (480, 640), -7.0, 1.08, 50.0, 12),
    ("example_sneakers.jpg", "saleor-yellow-plimsolls", "fabric", (640, 480), -9.0, 0.92, 20.0, 13),
    ("example_juice.jpg", "saleor-green-juice", "wood_dark", (480, 640), 8.0, 1.12, 50.0, 14),
]


@dataclass
class Product:
    product_id: str
    title: str
    category: str
    brand: str
    price: float
    description: str
    source: str
    sources: list[Path]  # source image files, in view order
    url: str = ""
    images: list[str] = field(default_factory=list)  # written files, relative to the CSV


# --- Fetching ------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch_sources(work: Path, sources: Path | None) -> tuple[Path, Path]:
    """Return (vendure tgz, saleor wheel), downloading them into ``work`` unless given."""
    tgz_name = f"vendure-create-{VENDURE_VERSION}.tgz"
    whl_name = f"saleor-{SALEOR_VERSION}-py3-none-any.whl"
    if sources is not None:
        return sources / tgz_name, sources / whl_name
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm is needed to fetch @vendure/create (or pass --sources DIR)")
    run([npm, "pack", "--silent", f"{VENDURE_PKG}@{VENDURE_VERSION}"], cwd=work)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.8",
            "-d",
            str(work),
            f"{SALEOR_PKG}=={SALEOR_VERSION}",
        ],
        cwd=work,
    )
    return work / tgz_name, work / whl_name


def extract_vendure(tgz: Path, dest: Path) -> Path:
    with tarfile.open(tgz) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith("package/")]
        keep = [
            m
            for m in members
            if m.name.startswith("package/assets/images/")
            or m.name in ("package/assets/products.csv", "package/package.json")
        ]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tf.extractall(dest, members=keep, filter="data")
        else:  # pragma: no cover - older interpreters without extraction filters
            tf.extractall(dest, members=keep)
    return dest / "package"


def extract_saleor(whl: Path, dest: Path) -> Path:
    with zipfile.ZipFile(whl) as zf:
        for name in zf.namelist():
            if (
                name.startswith("saleor/static/placeholders/saleordemoproduct_")
                or name == "saleor/static/populatedb_data.json"
                or name.endswith(".dist-info/LICENSE")
                or name.endswith(".dist-info/METADATA")
            ):
                zf.extract(name, dest)
    return dest


# --- Text helpers ---------------------------------------------------------------------------


def clean_text(text: str, limit: int = DESC_MAX) -> str:
    """Plain text from HTML/markdown-ish input, whitespace collapsed, capped at a word boundary."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", text or ""))
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)  # markdown images
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # markdown links -> their text
    text = re.sub(r"(\*\*|__|`|^#+\s*)", "", text, flags=re.M)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > limit:
        cut = text[: limit - 3]
        if " " in cut:
            cut = cut[: cut.rfind(" ")]
        text = cut.rstrip(" ,;:.-") + "..."
    return text


def draftjs_text(value: object) -> str:
    """Text of a Draft.js / Editor.js JSON description (dict or JSON string)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if not isinstance(value, dict):
        return ""
    parts = []
    for block in value.get("blocks", []):
        text = block.get("text") or (block.get("data") or {}).get("text") or ""
        if text:
            parts.append(text)
    return " ".join(parts)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- Readers --------------------------------------------------------------------------------


def read_vendure(pkg: Path) -> list[Product]:
    with (pkg / "assets" / "products.csv").open(newline="", encoding="utf-8") as f:
        rows = [
            {(k or "").strip(): (v or "").strip() for k, v in r.items()}
            for r in csv.DictReader(f, skipinitialspace=True)
        ]
    products: list[Product] = []
    prices: list[list[float]] = []
    for row in rows:
        if row["name"]:  # a product row; following rows with an empty name are its extra variants
            facets = [f.split(":", 1) for f in row["facets"].split("|") if ":" in f]
            categories = [v.strip() for k, v in facets if k.strip() == "category"]
            brand = next((v.strip() for k, v in facets if k.strip() == "brand"), "")
            images = [pkg / "assets" / "images" / a.strip() for a in row["assets"].split("|") if a.strip()]
            products.append(
                Product(
                    product_id=f"vendure-{slug(row['slug'])}",
                    title=row["name"],
                    category=categories[0] if categories else "",
                    brand=BRAND_FIXES.get(brand, brand),
                    price=0.0,
                    description=clean_text(row["description"]),
                    source="vendure",
                    sources=images,
                )
            )
            prices.append([])
        if row["price"] and prices:
            prices[-1].append(float(row["price"]))
    for product, variant_prices in zip(products, prices, strict=True):
        product.price = min(variant_prices)  # the "from" price over all variants
    return products


def read_saleor(root: Path) -> list[Product]:
    static = root / "saleor" / "static"
    data = json.loads((static / "populatedb_data.json").read_text(encoding="utf-8"))
    by_model: dict[str, list[dict]] = {}
    for obj in data:
        by_model.setdefault(obj["model"], []).append(obj)
    categories = {c["pk"]: c["fields"] for c in by_model["product.category"]}

    def category_name(pk: int) -> str:
        fields = categories[pk]
        top = fields
        while top["parent"] is not None:
            top = categories[top["parent"]]
        return SALEOR_CATEGORY_FOLD.get(top["name"], fields["name"])

    images: dict[int, list[tuple[int, int, Path]]] = {}
    for img in by_model["product.productimage"]:
        f = img["fields"]
        name = Path(f["image"]).name
        name = re.sub(r"_[A-Za-z0-9]{7}(\.png)$", r"\1", name)  # Django's random 7-char suffix
        images.setdefault(f["product"], []).append(
            (f["sort_order"], img["pk"], static / "placeholders" / name)
        )
    variant_prices: dict[int, list[float]] = {}
    for v in by_model["product.productvariant"]:
        override = v["fields"]["price_override_amount"]
        if override is not None:
            variant_prices.setdefault(v["fields"]["product"], []).append(float(override))

    products = []
    for obj in by_model["product.product"]:
        f = obj["fields"]
        if f.get("currency", "USD") != "USD":
            raise ValueError(f"unexpected currency {f['currency']} for {f['slug']}")
        text = (
            draftjs_text(f.get("description_json")) or f.get("description") or f.get("seo_description") or ""
        )
        base = float(f["price_amount"])
        products.append(
            Product(
                product_id=f"saleor-{slug(f['slug'])}",
                title=f["name"].strip(),
                category=category_name(f["category"]),
                brand="",
                price=min([base, *variant_prices.get(obj["pk"], [])]),
                description=clean_text(text),
                source="saleor",
                sources=[p for _, _, p in sorted(images.get(obj["pk"], []))],
            )
        )
    return products


# --- Images ---------------------------------------------------------------------------------


def load_rgb(path: Path) -> Image.Image:
    """Open, apply EXIF orientation, flatten any transparency onto white, resize to MAX_SIDE."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im.alpha_composite(rgba)
        im = im.convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return im


def thumb(im: Image.Image) -> np.ndarray:
    return np.asarray(im.resize((64, 64), Image.Resampling.BOX), dtype=np.float32)


def jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def build_images(products: list[Product], images_dir: Path, drops: list[str]) -> list[Product]:
    """Resize/flatten/dedupe all views; write JPEGs; return the products that keep >= 1 image."""
    # Owner of each source file: explicit choice, else the first product that uses it.
    owner: dict[str, str] = dict(SHARED_IMAGE_OWNER)
    for p in products:
        for src in p.sources:
            owner.setdefault(src.name, p.product_id)

    seen: dict[str, str] = {}  # pixel sha256 -> "product_id view"
    thumbs: list[tuple[np.ndarray, str]] = []  # (64x64 thumbnail, "product_id (file)")
    kept: list[Product] = []
    for p in products:
        if p.product_id in DROP_PRODUCTS:
            drops.append(f"`{p.product_id}`: {DROP_PRODUCTS[p.product_id]}")
            continue
        views: list[Image.Image] = []
        for src in p.sources:
            if not src.is_file():
                drops.append(f"`{p.product_id}` view `{src.name}`: file missing from the package")
                continue
            if src.name in DROP_VIEWS:
                drops.append(f"`{p.product_id}` view `{src.name}`: {DROP_VIEWS[src.name]}")
                continue
            if owner[src.name] != p.product_id:
                drops.append(f"`{p.product_id}` view `{src.name}`: same image as `{owner[src.name]}`")
                continue
            im = load_rgb(src)
            digest = hashlib.sha256(im.tobytes()).hexdigest()
            label = f"{p.product_id} ({src.name})"
            if digest in seen:
                drops.append(f"`{p.product_id}` view `{src.name}`: pixel-identical to {seen[digest]}")
                continue
            t = thumb(im)
            near = next((lbl for other, lbl in thumbs if np.abs(t - other).mean() <= NEAR_DUP_MAD), None)
            if near is not None:
                drops.append(f"`{p.product_id}` view `{src.name}`: near-duplicate of {near}")
                continue
            seen[digest] = label
            thumbs.append((t, label))
            views.append(im)
        if not views:
            drops.append(f"`{p.product_id}` (product): no image of its own left, dropped")
            continue
        for i, im in enumerate(views, start=1):
            # ids are [a-z0-9-] slugs, so "_2" can never collide with another product's file
            name = f"{p.product_id}.jpg" if i == 1 else f"{p.product_id}_{i}.jpg"
            if (images_dir / name).exists():
                raise RuntimeError(f"image file name collision: {name}")
            (images_dir / name).write_bytes(jpeg_bytes(im))
            p.images.append(f"images/{name}")
        kept.append(p)
    return kept


# --- Synthetic shopper photos ---------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in [0, 1] of shape (h, w), from a small random grid upscaled bicubically."""
    grid = Image.fromarray((rng.random((cells[1], cells[0])) * 255).astype(np.uint8))
    return np.asarray(grid.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def background(style: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if style in ("wood", "wood_dark"):
        light, dark = (
            (np.array([186, 138, 92]), np.array([128, 82, 46]))
            if style == "wood"
            else (np.array([118, 80, 52]), np.array([66, 40, 24]))
        )
        arr = np.zeros((h, w, 3), dtype=np.float32)
        n_planks = 3
        edges = np.linspace(0, h, n_planks + 1).astype(int)
        for top, bottom in itertools.pairwise(edges):
            ph = bottom - top
            warp = smooth_noise(rng, (w, ph), (3, 4)) * 5.0 + smooth_noise(rng, (w, ph), (12, 6)) * 0.8
            rings = np.sin(yy[:ph] * (0.16 + 0.04 * rng.random()) + warp * np.pi) * 0.5 + 0.5
            fibres = smooth_noise(rng, (w, ph), (max(2, w // 50), max(2, ph // 2)))
            t = 0.45 * rings**2 + 0.4 * fibres + 0.15 * rng.random() + rng.normal(0, 0.025, (ph, w))
            arr[top:bottom] = dark + (light - dark) * np.clip(t, 0, 1)[..., None]
            arr[top : top + 2] *= 0.5  # seam between planks
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if style == "fabric":
        base = np.array([92, 104, 122], dtype=np.float32)
        weave = (np.sin(xx * 1.9) * np.sin(yy * 1.9)) * 10
        arr = base + weave[..., None] + (smooth_noise(rng, size, (6, 5))[..., None] - 0.5) * 40
        arr += rng.normal(0, 6, (h, w, 1))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    # "shapes": a soft diagonal gradient with scattered blurred clutter
    a, b = np.array([205, 196, 184], dtype=np.float32), np.array([120, 134, 140], dtype=np.float32)
    t = ((xx / w + yy / h) / 2)[..., None]
    img = Image.fromarray(np.clip(a + (b - a) * t, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(14):
        x0, y0 = int(rng.integers(-40, w)), int(rng.integers(-40, h))
        sw, sh = int(rng.integers(30, 160)), int(rng.integers(30, 160))
        color = tuple(int(c) for c in rng.integers(60, 230, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + sw, y0 + sh], fill=color)
        else:
            draw.rectangle([x0, y0, x0 + sw, y0 + sh], fill=color)
    img = img.filter(ImageFilter.GaussianBlur(3))
    noise = rng.normal(0, 5, (h, w, 1))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def largest_component(mask: Image.Image) -> Image.Image:
    """Keep the biggest 255-valued connected region of a binary L mask (drops stray specks)."""
    work = mask.copy()
    best, best_size, label = 0, 0, 1
    arr = np.asarray(work)
    while (arr == 255).any() and label < 250:
        y, x = np.unravel_index(np.argmax(arr == 255), arr.shape)
        ImageDraw.floodfill(work, (int(x), int(y)), label)
        arr = np.asarray(work)
        size = int((arr == label).sum())
        if size > best_size:
            best, best_size = label, size
        label += 1
    return Image.fromarray(np.where(arr == best, 255, 0).astype(np.uint8))


def product_cutout(im: Image.Image, threshold: float = 50.0) -> Image.Image:
    """RGBA of the product, cut out of a plain (flat or gradient) studio background.

    The background is modelled as a plane per channel fitted to the border pixels; pixels far from
    it are product, holes are filled (anything not reachable from the border through background).
    Busy backgrounds (the plane does not fit the border) keep the whole photo.
    """
    arr = np.asarray(im, dtype=np.float32)
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    border = np.zeros((h, w), dtype=bool)
    border[:4], border[-4:], border[:, :4], border[:, -4:] = True, True, True, True
    design = np.stack([xx, yy, np.ones_like(xx)], axis=-1)
    coef, *_ = np.linalg.lstsq(design[border], arr[border], rcond=None)
    bg = design @ coef
    residual = float(np.abs(arr[border] - bg[border]).mean())
    if residual > 10:
        return im.convert("RGBA")
    fg = (np.abs(arr - bg).max(axis=2) > threshold).astype(np.uint8) * 255
    mask = Image.fromarray(fg).filter(ImageFilter.MaxFilter(7)).filter(ImageFilter.MinFilter(7))
    mask = ImageOps.expand(mask, border=1, fill=0)  # a frame so one flood fill reaches all background
    ImageDraw.floodfill(mask, (0, 0), 128)
    solid = Image.fromarray(np.where(np.asarray(mask) == 128, 0, 255).astype(np.uint8)).crop(
        (1, 1, w + 1, h + 1)
    )
    solid = largest_component(solid.filter(ImageFilter.MinFilter(5)).filter(ImageFilter.MaxFilter(5)))
    alpha = solid.filter(ImageFilter.GaussianBlur(1.2))
    out = im.convert("RGBA")
    out.putalpha(alpha)
    return out.crop(solid.getbbox() or (0, 0, w, h))


def shopper_photo(
    src: Path, style: str, size: tuple[int, int], angle: float, brightness: float, threshold: float, seed: int
) -> Image.Image:
    rng = np.random.default_rng(seed)
    canvas = background(style, size, rng).convert("RGBA")
    obj = product_cutout(load_rgb(src), threshold)
    scale = 0.6 * min(size) / max(obj.size) * (1.0 if obj.size[0] <= obj.size[1] * 1.4 else 1.25)
    obj = obj.resize(
        (max(1, round(obj.size[0] * scale)), max(1, round(obj.size[1] * scale))), Image.Resampling.LANCZOS
    )
    obj = obj.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    x = (size[0] - obj.size[0]) // 2 + int(rng.integers(-size[0] // 12, size[0] // 12 + 1))
    y = (size[1] - obj.size[1]) // 2 + int(rng.integers(-size[1] // 14, size[1] // 14 + 1))
    shadow = Image.new("RGBA", obj.size, (0, 0, 0, 0))
    shadow.putalpha(obj.getchannel("A").point(lambda a: a * 0.45))
    canvas.alpha_composite(shadow.filter(ImageFilter.GaussianBlur(9)), (x + 10, y + 12))
    canvas.alpha_composite(obj, (x, y))
    photo = ImageEnhance.Brightness(canvas.convert("RGB")).enhance(brightness)
    # phone-camera look: warm cast, vignette, sensor noise, a touch of blur
    arr = np.asarray(photo, dtype=np.float32) * np.array([1.04, 1.0, 0.95], dtype=np.float32)
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    arr *= (1 - 0.22 * np.clip(r2, 0, 2) / 2)[..., None]
    arr += rng.normal(0, 3.5, arr.shape)
    photo = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return photo


def build_examples(
    products: dict[str, Product], catalog_dir: Path, examples_dir: Path
) -> list[tuple[str, str]]:
    examples_dir.mkdir(parents=True, exist_ok=True)
    for old in examples_dir.glob("example_*.jpg"):
        old.unlink()
    made = []
    for name, pid, style, size, angle, brightness, threshold, seed in EXAMPLES:
        product = products[pid]  # KeyError here means a curation change removed a demo product
        src = catalog_dir / product.images[0]
        shopper_photo(src, style, size, angle, brightness, threshold, seed).save(
            examples_dir / name, "JPEG", quality=88
        )
        made.append((name, pid))
    lines = [
        "# Example queries",
        "",
        "Synthetic shopper photos made by `sample_catalog/build_sample_catalog.py` from catalog images",
        "(product pasted at ~60% scale, rotated, on a textured background, brightness changed):",
        "",
    ]
    lines += [
        f"- `{name}` -> `{pid}` ({products[pid].title}, {products[pid].category})" for name, pid in made
    ]
    (examples_dir / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return made


# --- Outputs --------------------------------------------------------------------------------


def write_catalog(products: list[Product], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for p in products:
            writer.writerow(
                [
                    p.product_id,
                    "|".join(p.images),
                    p.title,
                    p.category,
                    p.brand,
                    f"{p.price:.2f}",
                    p.description,
                    p.url,
                    p.source,
                ]
            )


def photographer(file_name: str) -> tuple[str, str]:
    """'derick-david-409858-unsplash.jpg' -> ('Derick David', '409858')."""
    m = re.match(r"(.+)-(\d+)-unsplash\.jpg$", file_name)
    if not m:
        return file_name, ""
    return " ".join(w.capitalize() for w in m.group(1).split("-")), m.group(2)


def write_attribution(
    products: list[Product],
    vendure_license: str,
    saleor_license: str,
    drops: list[str],
    examples: list[tuple[str, str]],
    path: Path,
) -> None:
    vendure = [p for p in products if p.source == "vendure"]
    saleor = [p for p in products if p.source == "saleor"]
    n_images = sum(len(p.images) for p in products)
    lines = [
        "# Sample catalog: sources, licenses, changes",
        "",
        f"{len(products)} products, {n_images} images, rebuilt by `python sample_catalog/build_sample_catalog.py`.",
        "",
        "## Sources",
        "",
        f"- **npm `{VENDURE_PKG}@{VENDURE_VERSION}`** ({len(vendure)} products): "
        "`package/assets/images/*.jpg` and `package/assets/products.csv` (name, description, price, facets).",
        f"  The package declares `{vendure_license}` (package.json); it ships no LICENSE or photo-credit file.",
        "  The photos are Unsplash photos (file names `<photographer>-<photo number>-unsplash.jpg`), used",
        "  under the [Unsplash License](https://unsplash.com/license) (free to use, copy, modify, also",
        "  commercially, no permission needed; attribution appreciated, not required; not to be sold",
        "  unaltered or used to build a competing photo service). Product names, descriptions, prices and",
        f"  facets are Vendure's demo data from that package (declared `{vendure_license}`).",
        f"- **PyPI `{SALEOR_PKG}=={SALEOR_VERSION}`** wheel ({len(saleor)} products): "
        "`saleor/static/placeholders/saleordemoproduct_*.png` renders and `saleor/static/populatedb_data.json`",
        f"  (name, Draft.js description, category, USD price). Wheel metadata: `License: {saleor_license}`;",
        '  its LICENSE file: BSD 3-Clause, Copyright (c) 2010-2019, Mirumee Software, and "Unless stated',
        "  otherwise, artwork included in this distribution is licensed under the Creative Commons",
        '  Attribution 4.0 International License" ([CC BY 4.0](https://creativecommons.org/licenses/by/4.0/)).',
        "  Product renders (c) Mirumee Software / Saleor, CC BY 4.0; modified as described below.",
        "",
        "## What was changed",
        "",
        f"- Every image resized so its longest side is at most {MAX_SIDE} px (Lanczos) and re-encoded as JPEG",
        f"  quality {JPEG_QUALITY}; Saleor PNG renders with transparency flattened onto white first.",
        "- Files renamed to `<product_id>.jpg` (extra views `<product_id>_2.jpg`, ...).",
        f"- Descriptions: HTML/markdown/Draft.js turned into plain text, capped at {DESC_MAX} characters.",
        "- Price: the lowest variant price (USD). Category: Vendure's top-level category facet; Saleor's",
        '  leaf category, with T-shirts / Polo Shirts / Hoodies / Footwear folded into "Apparel".',
        '  Brand: Vendure\'s brand facet (typo "Nikkon" corrected to "Nikon"); Saleor has no brand data.',
        "- Product ids: `vendure-<slug>` / `saleor-<slug>` from the source slugs.",
        "- Duplicate check on the resized pixels of every kept view: SHA-256 (exact) and mean absolute",
        f"  difference of 64x64 thumbnails <= {NEAR_DUP_MAD} (near-exact). Saleor's fixture reuses some renders",
        "  for several products; the product named on the label keeps the image, the others are dropped.",
        "- Not used at all (not product photos):",
    ]
    lines += [f"  - `{pattern}`: {why}" for pattern, why in NOT_PRODUCTS.items()]
    lines += ["- Dropped views/products (every image belongs to exactly one product; no duplicates):"]
    lines += [f"  - {d}" for d in drops] or ["  - none"]
    lines += [
        "- `assets/examples/`: synthetic shopper photos composed from these catalog images "
        "(same licenses apply):",
    ]
    lines += [f"  - `{name}` from `{pid}`" for name, pid in examples]
    lines += [
        "",
        "## Photo credits (Unsplash)",
        "",
        "| product_id | photographer | Unsplash photo no. |",
        "|---|---|---|",
    ]
    for p in vendure:
        who, number = photographer(p.sources[0].name)
        lines.append(f"| {p.product_id} | {who} | {number} |")
    lines.append("")
    lines.append("Photographer names are derived from the file names (Unsplash's download naming).")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=Path, help="folder holding the .tgz and .whl (skip downloading)")
    ap.add_argument("--catalog-dir", type=Path, default=HERE)
    ap.add_argument("--examples-dir", type=Path, default=REPO / "assets" / "examples")
    args = ap.parse_args(argv)

    catalog_dir: Path = args.catalog_dir.resolve()
    images_dir = catalog_dir / "images"
    with tempfile.TemporaryDirectory(prefix="sample_catalog_") as tmp_name:
        tmp = Path(tmp_name)
        tgz, whl = fetch_sources(tmp, args.sources.resolve() if args.sources else None)
        vendure_pkg = extract_vendure(tgz, tmp / "vendure")
        saleor_root = extract_saleor(whl, tmp / "saleor")
        vendure_license = json.loads((vendure_pkg / "package.json").read_text())["license"]
        metadata = next((saleor_root).glob("*.dist-info/METADATA")).read_text(encoding="utf-8")
        saleor_license = re.search(r"^License: (.+)$", metadata, re.M).group(1).strip()

        products = read_vendure(vendure_pkg) + read_saleor(saleor_root)
        ids = [p.product_id for p in products]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate product ids in the sources")

        if images_dir.exists():
            shutil.rmtree(images_dir)
        images_dir.mkdir(parents=True)
        drops: list[str] = []
        kept = build_images(products, images_dir, drops)
        write_catalog(kept, catalog_dir / "catalog.csv")
        examples = build_examples({p.product_id: p for p in kept}, catalog_dir, args.examples_dir)
        write_attribution(
            kept, vendure_license, saleor_license, drops, examples, catalog_dir / "ATTRIBUTION.md"
        )

    n_images = sum(len(p.images) for p in kept)
    size = sum(f.stat().st_size for f in images_dir.iterdir())
    print(f"{len(kept)} products, {n_images} images, {size / 1e6:.2f} MB in {images_dir}")
    for d in drops:
        print("dropped:", d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
