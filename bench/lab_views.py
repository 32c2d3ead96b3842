"""Experiments for bench/quality_lab.py: candidate view sets and fusions, and the failure analysis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from visual_search import query_views as qv

Maker = Callable[[], Image.Image]


@dataclass
class Config:
    views: Callable  # (query) -> list[(name, maker)]
    fusion: Callable  # (names, scores (n_views, n_products), query) -> fused (n_products,)


def _key(q, name: str) -> str:
    return f"{q.path}:{name}"


def views_default(names=("cutout", "box"), box_index: int = 0):
    def make(q):
        if q.mask is None or not q.boxes:
            return [("photo", lambda: q.photo)]
        views = qv.make_views(q.photo, q.mask, q.boxes, box_index, names)
        return [(n, (lambda im=im: im)) for n, im in views.items()]

    return make


def fuse_max(names, scores, q):
    return scores.max(axis=0)


def fuse_mean(names, scores, q):
    return scores.mean(axis=0)


def run_config(lab, s, config: Config) -> list[tuple[str, int]]:
    ranks = []
    for q in s.queries:
        views = config.views(q)
        names = [n for n, _ in views]
        vecs = lab.embed([(_key(q, n), make) for n, make in views])
        scores = product_scores_for(lab, s, vecs)
        fused = config.fusion(names, scores, q)
        ranks.append((q.kind, rank(fused, s.product_ids.index(q.expected))))
    return ranks


def product_scores_for(lab, s, vecs):
    from quality_lab import product_scores

    return product_scores(lab, s, vecs)


def rank(scores: np.ndarray, expected_index: int) -> int:
    return int((scores > scores[expected_index]).sum()) + 1


# ----------------------------------------------------------------------------------------------
# Analysis


def _match(q) -> int | None:
    """Index of the detected box that is the item (best IoU with the ground truth, >= 0.3)."""
    from quality_lab import iou

    if q.item_box is None or not q.boxes:
        return None
    scores = [iou(b.as_tuple(), q.item_box) for b in q.boxes]
    best = int(np.argmax(scores))
    return best if scores[best] >= 0.3 else None


def _gt_box_view(q) -> Image.Image:
    x0, y0, x1, y1 = q.item_box
    box = qv.Box(x0, y0, x1, y1, 0.0, 1.0)
    return qv._box_view(q.photo, box)


def analyse(lab, s) -> None:
    print(f"\n=== {s.label}: auto failures ===")
    rows = []
    failures = []
    for q in s.queries:
        exp = s.product_ids.index(q.expected)
        auto = views_default()(q)
        vecs = lab.embed([(_key(q, n), m) for n, m in auto])
        r_auto = rank(product_scores_for(lab, s, vecs).max(axis=0), exp)
        m = _match(q)
        r_oracle = None
        if m is not None and m != 0:
            ov = views_default(box_index=m)(q)
            vecs = lab.embed([(_key(q, f"{n}@{m}"), mk) for n, mk in ov])
            r_oracle = rank(product_scores_for(lab, s, vecs).max(axis=0), exp)
        gt = None
        if q.item_box is not None:
            v = lab.embed([(_key(q, "gtbox"), lambda q=q: _gt_box_view(q))])
            gt = rank(product_scores_for(lab, s, v)[0], exp)
        photo = lab.embed([(_key(q, "photo"), lambda q=q: q.photo)])
        r_photo = rank(product_scores_for(lab, s, photo)[0], exp)
        rows.append((q.kind, r_auto, len(q.boxes), m, r_oracle, gt, r_photo))
        if r_auto > 1:
            failures.append((q, r_auto, m, r_oracle, gt, r_photo))
    for kind in sorted({r[0] for r in rows}):
        kr = [r for r in rows if r[0] == kind]
        fails = [r for r in kr if r[1] > 1]
        no_obj = sum(r[2] == 0 for r in fails)
        wrong = sum(r[3] is not None and r[3] != 0 for r in fails)
        missed = sum(r[2] > 0 and r[3] is None for r in fails)
        fixed_by_oracle = sum(r[4] == 1 for r in fails)
        gt1 = sum(r[5] == 1 for r in kr)
        print(
            f"{kind:9s} n={len(kr)} auto R@1 {np.mean([r[1] == 1 for r in kr]):.3f}  fails {len(fails)}: "
            f"no object {no_obj}, wrong object picked {wrong} (oracle pick fixes {fixed_by_oracle}), "
            f"item not among boxes {missed}, right object {len(fails) - no_obj - wrong - missed}; "
            f"gt-box view R@1 {gt1 / len(kr):.3f}; whole photo R@1 "
            f"{np.mean([r[6] == 1 for r in kr]):.3f}; multi-object {sum(r[2] > 1 for r in kr)}"
        )
    out = Path(f"/tmp/lab-fail-{s.label.replace(' ', '')}.png")
    cells = []
    for q, r_auto, m, r_or, gt, r_photo in failures[:24]:
        img = q.photo.copy()
        from PIL import ImageDraw

        d = ImageDraw.Draw(img)
        for i, b in enumerate(q.boxes):
            d.rectangle(b.as_tuple(), outline=(255, 0, 0) if i == 0 else (0, 0, 255), width=4)
        if q.item_box:
            d.rectangle(q.item_box, outline=(0, 255, 0), width=2)
        cells.append((img, f"{q.kind[:5]} r{r_auto} m{m} gt{gt} ph{r_photo}"))
        views = views_default()(q)
        cells.append((views[-1][1](), "box view"))
        cat = lab.catalog.products[[p.product_id for p in lab.catalog.products].index(q.expected)]
        cells.append(
            (
                Image.open(cat.images[0].source) if not cat.images[0].source.startswith("http") else img,
                q.expected,
            )
        )
    from quality_lab import grid

    grid(cells, out, cols=6)
    print(f"grid: {out}")


# ----------------------------------------------------------------------------------------------
# Candidate configurations

CONFIGS: dict[str, Config] = {
    "photo": Config(lambda q: [("photo", lambda: q.photo)], fuse_max),
    "auto(cutout+box,max)": Config(views_default(), fuse_max),
    "auto(cutout+box,mean)": Config(views_default(), fuse_mean),
}


def _mirror(im: Image.Image) -> Image.Image:
    return ImageOps.mirror(im)
