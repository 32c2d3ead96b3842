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
    """Cache key: the photo and the view, with the object's box coordinates (not its index, which
    changes with the object order)."""
    base, at, idx = name.partition("@")
    if at and q.boxes and int(idx) < len(q.boxes):
        return f"{q.path}:{base}@{q.boxes[int(idx)].as_tuple()}"
    return f"{q.path}:{name}"


def views_default(names=("cutout", "box"), box_index: int = 0):
    def make(q):
        if q.mask is None or not q.boxes:
            return [("photo", lambda: q.photo)]
        views = qv.make_views(q.photo, q.mask, q.boxes, box_index, names)
        return [(f"{n}@{box_index}", (lambda im=im: im)) for n, im in views.items()]

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
        exp = s.product_ids.index(q.expected)
        if config.fusion == "oracle":
            ranks.append((q.kind, min(rank(row, exp) for row in scores)))
            continue
        fused = config.fusion(names, scores, q)
        ranks.append((q.kind, rank(fused, exp)))
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
            vecs = lab.embed([(_key(q, n), mk) for n, mk in ov])
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
    for q, r_auto, m, _r_or, gt, r_photo in failures[:24]:
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
# Candidate configurations: views by name "kind[+mods]@box" (box = index into q.boxes)


def gray_world(im: Image.Image) -> Image.Image:
    """Divide each channel by its mean (scaled to the overall mean): undoes a colour cast."""
    a = np.asarray(im.convert("RGB"), np.float32)
    means = a.reshape(-1, 3).mean(axis=0)
    gains = means.mean() / np.maximum(means, 1.0)
    return Image.fromarray((a * gains).clip(0, 255).astype(np.uint8), "RGB")


def gray_world_masked(im: Image.Image) -> Image.Image:
    """Gray world over non-white pixels only (a cut-out's white canvas would dilute the cast)."""
    a = np.asarray(im.convert("RGB"), np.float32)
    keep = a.min(axis=2) < 245
    px = a[keep] if keep.sum() > 100 else a.reshape(-1, 3)
    means = px.mean(axis=0)
    gains = means.mean() / np.maximum(means, 1.0)
    out = a * gains
    out[~keep] = 255
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), "RGB")


def square_pad(im: Image.Image, fill=(255, 255, 255)) -> Image.Image:
    side = max(im.size)
    c = Image.new("RGB", (side, side), fill)
    c.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return c


def pad_for_crop(im: Image.Image, share: float = 0.875, fill=(255, 255, 255)) -> Image.Image:
    """Pad so that the encoder's centre crop of ``share`` keeps the whole image."""
    side = round(max(im.size) / share)
    c = Image.new("RGB", (side, side), fill)
    c.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return c


def make_view(q, name: str) -> Image.Image:
    base, _, idx = name.partition("@")
    kind, *mods = base.split("+")
    box_index = int(idx) if idx else 0
    if kind == "photo":
        im = q.photo
    elif kind == "centre":
        im = qv._centre_view(q.photo)
    elif kind == "cleaned":
        im = q.cleaned if q.cleaned is not None else q.photo
    elif kind == "cutout":
        im = qv.make_views(q.photo, q.mask, q.boxes, box_index, ("cutout",))["cutout"]
    elif kind.startswith("box"):
        pad = int(kind[3:] or 10) / 100
        im = qv._box_view(q.photo, q.boxes[box_index], pad)
    elif kind == "union":  # the box around every object
        boxes = q.boxes
        b = qv.Box(
            min(x.x0 for x in boxes),
            min(x.y0 for x in boxes),
            max(x.x1 for x in boxes),
            max(x.y1 for x in boxes),
            0,
            1,
        )
        im = qv._box_view(q.photo, b)
    else:
        raise ValueError(name)
    for mod in mods:
        if mod == "m":
            im = ImageOps.mirror(im)
        elif mod == "gw":
            im = gray_world(im)
        elif mod == "gwm":
            im = gray_world_masked(im)
        elif mod == "sq":
            im = square_pad(im)
        elif mod == "sqg":
            im = square_pad(im, (124, 116, 104))
        elif mod == "pc":
            im = pad_for_crop(im)
        elif mod == "ac":
            im = ImageOps.autocontrast(im, cutoff=1)
        else:
            raise ValueError(mod)
    return im


def named(fn):
    """fn(q) -> view names (or None: the query has no object -> whole photo)."""

    def views(q):
        names = fn(q) if q.mask is not None and q.boxes else None
        names = names or ["photo"]
        return [(n, (lambda n=n: make_view(q, n))) for n in names]

    return views


def fuse_embed(lab_getter):
    raise NotImplementedError


def fuse_weighted(weights: dict[str, float]):
    def f(names, scores, q):
        w = np.array([weights.get(n.split("@")[0], 1.0) for n in names], np.float32)
        return (scores * w[:, None]).sum(axis=0) / w.sum()

    return f


def fuse_groups_max(names, scores, q):
    """Mean within a group (same base view name without +m mods), max across groups."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        base = n.split("@")[0].split("+")[0]
        groups.setdefault(base, []).append(i)
    return np.max([scores[ix].mean(axis=0) for ix in groups.values()], axis=0)


def coverage(q) -> float:
    b = q.boxes[0]
    return (b.x1 - b.x0) * (b.y1 - b.y0) / (q.photo.width * q.photo.height)


def edges(q) -> int:
    b = q.boxes[0]
    w, h = q.photo.size
    t = 0.02
    return sum([b.x0 <= t * w, b.y0 <= t * h, b.x1 >= (1 - t) * w, b.y1 >= (1 - t) * h])


def gated_photo(extra=("photo",), min_cov=0.5, base=("cutout@0", "box@0")):
    def fn(q):
        names = list(base)
        if coverage(q) >= min_cov:
            names += list(extra)
        return names

    return fn


CONFIGS: dict[str, Config] = {
    "photo": Config(named(lambda q: ["photo"]), fuse_max),
    "auto": Config(named(lambda q: ["cutout@0", "box@0"]), fuse_max),
    "auto-mean": Config(named(lambda q: ["cutout@0", "box@0"]), fuse_mean),
    "cutout+pc,box": Config(named(lambda q: ["cutout+pc@0", "box@0"]), fuse_max),
    "cutout,box,+m": Config(named(lambda q: ["cutout@0", "box@0", "cutout+m@0", "box+m@0"]), fuse_max),
    "cutout,box,+m groups": Config(
        named(lambda q: ["cutout@0", "box@0", "cutout+m@0", "box+m@0"]), fuse_groups_max
    ),
    "cutout,box,+m mean": Config(named(lambda q: ["cutout@0", "box@0", "cutout+m@0", "box+m@0"]), fuse_mean),
    "cutout,box,box30": Config(named(lambda q: ["cutout@0", "box@0", "box30@0"]), fuse_max),
    "cutout,box,box30 mean": Config(named(lambda q: ["cutout@0", "box@0", "box30@0"]), fuse_mean),
    "cutout,box,gw": Config(named(lambda q: ["cutout@0", "box@0", "box+gw@0"]), fuse_max),
    "cutout,box,cutgwm": Config(named(lambda q: ["cutout@0", "box@0", "cutout+gwm@0"]), fuse_max),
    "cutgwm,boxgw": Config(named(lambda q: ["cutout+gwm@0", "box+gw@0"]), fuse_max),
    "gate photo .5": Config(named(gated_photo()), fuse_max),
    "gate photo .35": Config(named(gated_photo(min_cov=0.35)), fuse_max),
    "gate photo .65": Config(named(gated_photo(min_cov=0.65)), fuse_max),
    "gate photo+gw .5": Config(named(gated_photo(("photo", "photo+gw"))), fuse_max),
    "gate photo .5 mean": Config(named(gated_photo()), fuse_mean),
}


def _topk_stats(scores: np.ndarray, k: int = 50):
    top = np.sort(scores, axis=1)[:, ::-1][:, :k]
    return top.mean(axis=1, keepdims=True), top.std(axis=1, keepdims=True) + 1e-6, top


def fuse_z(how: str = "max", k: int = 50, weights: dict | None = None):
    """Standardise each view's scores over its own top-k list (what the store returns), then fuse."""

    def f(names, scores, q):
        mu, sd, _ = _topk_stats(scores, k)
        z = (scores - mu) / sd
        if weights:
            w = np.array([weights.get(n.split("@")[0], 1.0) for n in names], np.float32)[:, None]
            z = z * w if how == "max" else z * w / w.mean()
        return z.max(axis=0) if how == "max" else z.mean(axis=0)

    return f


def fuse_penalty(delta: float, penalised=("photo", "photo+gw")):
    def f(names, scores, q):
        pen = np.array([delta if n in penalised else 0.0 for n in names], np.float32)[:, None]
        return (scores - pen).max(axis=0)

    return f


def fuse_oracle(names, scores, q):  # not a pipeline: the best any single view did (ceiling)
    return scores  # handled in run_config


ALL3 = named(lambda q: ["cutout@0", "box@0", "photo"])
ALL3GW = named(lambda q: ["cutout@0", "box@0", "photo+gw"])
CONFIGS.update(
    {
        "c,b zmax": Config(named(lambda q: ["cutout@0", "box@0"]), fuse_z("max")),
        "c,b zmean": Config(named(lambda q: ["cutout@0", "box@0"]), fuse_z("mean")),
        "c,b,p max": Config(ALL3, fuse_max),
        "c,b,p zmax": Config(ALL3, fuse_z("max")),
        "c,b,p zmean": Config(ALL3, fuse_z("mean")),
        "c,b,p zmax k20": Config(ALL3, fuse_z("max", 20)),
        "c,b,p zmean k20": Config(ALL3, fuse_z("mean", 20)),
        "c,b,p pen.02": Config(ALL3, fuse_penalty(0.02)),
        "c,b,p pen.05": Config(ALL3, fuse_penalty(0.05)),
        "c,b,pgw zmax": Config(ALL3GW, fuse_z("max")),
        "c,b,pgw zmean": Config(ALL3GW, fuse_z("mean")),
        "c,b,p,b30 zmean": Config(named(lambda q: ["cutout@0", "box@0", "photo", "box30@0"]), fuse_z("mean")),
        "oracle c,b,p": Config(ALL3, "oracle"),
        "oracle c,b,p,gw,b30,m": Config(
            named(lambda q: ["cutout@0", "box@0", "photo", "box+gw@0", "photo+gw", "box30@0", "cutout+m@0"]),
            "oracle",
        ),
    }
)


def pick(q, power: float = 4.0, area_power: float = 1.0) -> int:
    return max(
        range(len(q.boxes)), key=lambda i: q.boxes[i].area ** area_power * q.boxes[i].centrality ** power
    )


def picked(views, **kw):
    return named(lambda q: [v.replace("@0", f"@{pick(q, **kw)}") for v in views])


CB = ["cutout@0", "box@0"]
CONFIGS.update(
    {
        "P4 c,b max": Config(picked(CB), fuse_max),
        "P4 c,b zmax": Config(picked(CB), fuse_z("max")),
        "P4 c,b mean": Config(picked(CB), fuse_mean),
        "P3 c,b max": Config(picked(CB, power=3), fuse_max),
        "P2 c,b max": Config(picked(CB, power=2), fuse_max),
        "P4 c,b,+m groups": Config(picked(["cutout@0", "box@0", "cutout+m@0", "box+m@0"]), fuse_groups_max),
        "P4 c,b,bgw max": Config(picked(["cutout@0", "box@0", "box+gw@0"]), fuse_max),
        "P4 c,b,bgw zmax": Config(picked(["cutout@0", "box@0", "box+gw@0"]), fuse_z("max")),
        "P4 c,b,b30 max": Config(picked(["cutout@0", "box@0", "box30@0"]), fuse_max),
        "P4 c,b,p pen.05": Config(picked(["cutout@0", "box@0", "photo"]), fuse_penalty(0.05)),
        "P4 c,b,p pen.03": Config(picked(["cutout@0", "box@0", "photo"]), fuse_penalty(0.03)),
        "P4 c,b,p zmax": Config(picked(["cutout@0", "box@0", "photo"]), fuse_z("max")),
        "P4 oracle c,b,p,gw,b30,m": Config(
            picked(["cutout@0", "box@0", "photo", "box+gw@0", "photo+gw", "box30@0", "cutout+m@0"]), "oracle"
        ),
    }
)


# -- object detection variants: boxes from a thresholded / opened mask -------------------------
_BOX_CACHE: dict = {}


def detector(threshold: int = 128, open_px: int = 0):
    from PIL import ImageFilter

    def boxes_for(q):
        key = (str(q.path), threshold, open_px)
        if key not in _BOX_CACHE:
            m = q.mask
            if open_px:
                m = m.filter(ImageFilter.MinFilter(open_px)).filter(ImageFilter.MaxFilter(open_px))
            _BOX_CACHE[key] = qv.detect_objects(m, threshold=threshold)
        return _BOX_CACHE[key]

    return boxes_for


def with_detector(det, views=("cutout@0", "box@0")):
    import dataclasses

    def make(q):
        if q.mask is None:
            return [("photo", lambda: q.photo)]
        boxes = det(q)
        if not boxes:
            return [("photo", lambda: q.photo)]
        q2 = dataclasses.replace(q, boxes=boxes)
        return [(n, (lambda n=n, q2=q2: make_view(q2, n))) for n in views], q2

    def views_fn(q):
        out = make(q)
        if isinstance(out, tuple):
            pairs, q2 = out
            return [(_key(q2, n), m) for n, m in pairs]
        return [(_key(q, n), m) for n, m in out]

    return views_fn


def run_keyed(lab, s, views_fn, fusion) -> list:
    ranks = []
    for q in s.queries:
        pairs = views_fn(q)
        vecs = lab.embed(pairs)
        scores = product_scores_for(lab, s, vecs)
        ranks.append((q.kind, rank(scores.max(axis=0), s.product_ids.index(q.expected))))
    return ranks


DETECTORS = {
    "t128": detector(),
    "t200": detector(200),
    "t128 open5": detector(128, 5),
    "t128 open9": detector(128, 9),
    "t128 open15": detector(128, 15),
    "t200 open9": detector(200, 9),
}


def soft_view(q, box_index: int = 0, keep: float = 0.5) -> Image.Image:
    """The object's box with its background faded ``keep`` of the way to white (between cut-out and box)."""
    box = q.boxes[box_index]
    others = [b for i, b in enumerate(q.boxes) if i != box_index]
    mask = qv._object_mask(q.mask, box, others)
    alpha = mask.point(lambda v: round(255 * (1 - keep) + v * keep))
    faded = Image.composite(q.photo, Image.new("RGB", q.photo.size, (255, 255, 255)), alpha)
    return qv._box_view(faded, box)


def _soft_views(extra: tuple[str, ...], keep: float):
    def views(q):
        if q.mask is None or not q.boxes:
            return [(_key(q, "photo"), lambda: q.photo)]
        out = [(_key(q, n), (lambda n=n: make_view(q, n))) for n in extra]
        out.append((f"{_key(q, 'box@0')}:soft{keep}", lambda: soft_view(q, 0, keep)))
        return out

    return views


SOFT = {
    "cutout+soft.5": _soft_views(("cutout@0",), 0.5),
    "cutout+box+soft.5": _soft_views(("cutout@0", "box@0"), 0.5),
    "cutout+soft.7": _soft_views(("cutout@0",), 0.7),
    "box+soft.7": _soft_views(("box@0",), 0.7),
}
