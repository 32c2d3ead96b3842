"""``finetune``: fine-tune a model on a catalog, then print the --model spec to use.

CLIP models: the image tower against product texts (visual_search.training.finetune). Image-only timm
backbones (``--model timm:NAME@weights``): image-to-image contrastive training of the last stages
(visual_search.training.finetune.timm_contrastive). This module maps flags onto the config.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from visual_search.core.config import Settings
from visual_search.training.finetune import FinetuneError, finetune
from visual_search.training.finetune.timm_contrastive import TIMM_DEFAULT_LR, TimmFinetuneConfig


def _default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``finetune`` (flags and handler) on the CLI's subparsers."""
    defaults = TimmFinetuneConfig(catalog="", model="", out_dir="")
    p = sub.add_parser(
        "finetune",
        help="fine-tune the model on a catalog (CLIP: image tower vs texts; timm: image-to-image)",
        description="Fine-tune the vision tower of a CLIP model on catalog (image, product text) pairs, "
        "or the last stages of an image-only timm backbone by image-to-image contrast (catalog photos and "
        "synthetic shopper photos of one product are positives). Checkpoints go to DIR (epoch_N.pt, "
        "last.pt, best.pt); the end prints the --model spec to use.",
    )
    p.add_argument(
        "catalog", help="catalog CSV/Parquet (product_id, image, title, category, brand, description)"
    )
    p.add_argument(
        "--model",
        help="base model spec: a CLIP model (ViT-B-32, ViT-B-32@/path/weights.pt) or an image-only timm "
        "backbone (timm:efficientnet_lite0@/path/weights.pth)",
    )
    p.add_argument("--out", required=True, help="output folder for checkpoints")
    p.add_argument(
        "--epochs",
        type=int,
        help=f"total epochs (default {defaults.epochs}); with --resume, a larger value extends the run "
        "(the cosine schedule is re-planned over the new total)",
    )
    p.add_argument("--batch-size", type=int, help=f"images per batch (default {defaults.batch_size})")
    p.add_argument(
        "--lr", type=float, help=f"peak learning rate (default {defaults.lr:g}; {TIMM_DEFAULT_LR:g} for timm)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        help=f"timm only: contrastive softmax temperature (default {defaults.temperature:g})",
    )
    p.add_argument(
        "--train-blocks",
        type=int,
        help=f"timm only: last backbone stages to train, with the head conv (default {defaults.train_blocks}; "
        "0 = every layer)",
    )
    p.add_argument(
        "--views",
        type=int,
        help=f"timm only: views of each product per batch, 1 catalog + N-1 shopper photos (default {defaults.views})",
    )
    p.add_argument(
        "--weight-decay", type=float, help=f"AdamW weight decay (default {defaults.weight_decay:g})"
    )
    p.add_argument(
        "--val-fraction", type=float, help=f"share of products held out (default {defaults.val_fraction:g})"
    )
    p.add_argument(
        "--seed", type=int, help=f"seed for split, order and augmentation (default {defaults.seed})"
    )
    p.add_argument("--accum-steps", type=int, help="batches per optimizer step (default 1)")
    p.add_argument("--warmup", type=float, help=f"warmup fraction of the steps (default {defaults.warmup:g})")
    p.add_argument(
        "--background-p",
        type=float,
        help=f"probability of the background-change augmentation (default {defaults.background_p:g})",
    )
    p.add_argument("--keep-epochs", type=int, help="keep only the newest N epoch_N.pt files (default: all)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="data loading processes (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # cli.main builds Settings from every command's namespace
    p.set_defaults(
        handler=run, data_dir=None, qdrant_url=None, qdrant_api_key=None, collection=None, bg_model=None
    )
    return p


_FLAG_FIELDS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "val_fraction": "val_fraction",
    "seed": "seed",
    "accum_steps": "accum_steps",
    "warmup": "warmup",
    "background_p": "background_p",
    "keep_epochs": "keep_epochs",
    "temperature": "temperature",
    "train_blocks": "train_blocks",
    "views": "views",
}


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """The ``finetune`` subcommand: train, then print the --model spec to use."""
    if not args.model and not args.resume:
        raise FinetuneError("Give the base model to fine-tune, e.g. --model ViT-B-32")
    values = {
        field_: getattr(args, flag)
        for flag, field_ in _FLAG_FIELDS.items()
        if getattr(args, flag) is not None
    }
    explicit = set(values)
    if args.model:
        explicit.add("model")
    timm = (args.model or "").strip().startswith("timm:")
    if timm and "lr" not in values and not args.resume:
        values["lr"] = TIMM_DEFAULT_LR
    config = TimmFinetuneConfig(
        catalog=args.catalog,
        model=args.model or "",
        out_dir=args.out,
        resume=args.resume,
        device=args.device,
        workers=args.workers,
        **values,
    )
    result = finetune(config, progress=not args.no_progress, explicit=explicit)
    if result.trained_epochs == 0:
        print(
            f"Nothing to do: {result.out_dir} has already trained {config.epochs} epochs; raise --epochs to go on."
        )
    if result.best is not None:
        base = f" (base model: {result.baseline.i2i_recall_at_10:.3f})" if result.baseline else ""
        text = (
            ""
            if config.model.strip().startswith("timm:")
            else (f", image->text Recall@10 {result.best.i2t_recall_at_10:.3f}")
        )
        print(
            f"best epoch {result.best_epoch}: validation image->image Recall@10 "
            f"{result.best.i2i_recall_at_10:.3f}{base}, MRR {result.best.i2i_mrr:.3f}{text}"
        )
        if result.baseline is not None and result.best.key() <= result.baseline.key():
            print(
                "warning: the fine-tuned model is not better than the base model on validation; "
                f"consider keeping --model {config.model}."
            )
    print(f"checkpoint: {result.best_path} (verified: loads with the spec below)")
    print("Use the fine-tuned model everywhere (CLI, app, evaluate) with:")
    print(f"  --model {result.spec}")
    print(f"  e.g. VS_MODEL='{result.spec}' python app.py")
    print(
        f"       python -m visual_search index {args.catalog} --model '{result.spec}' --data-dir data-finetuned"
    )
    print(
        f"       python -m visual_search evaluate --catalog {args.catalog} --shopper 32 "
        f"--model '{config.model}' --model '{result.spec}'"
    )
    print("A new checkpoint means a new index: re-index with it (the store refuses to mix models).")
    return 0
