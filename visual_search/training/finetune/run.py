"""``finetune(config)``: the whole run, from settings to a verified ``--model`` spec.

setup (resume, catalog split, model, optimiser) -> per epoch: ``train_one_epoch``, validate, checkpoint
-> export, verify, run.json. The pieces live in data, loop and checkpoint.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visual_search.catalog import Catalog, read_catalog
from visual_search.encoders import OpenClipEncoder, create_encoder
from visual_search.training.finetune.checkpoint import (
    RunRecord,
    export_local_dir,
    open_run,
    output_spec,
    prune_epochs,
    restore,
    save_epoch,
    verify,
    write_run_json,
)
from visual_search.training.finetune.config import (
    EpochStats,
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    ValMetrics,
)
from visual_search.training.finetune.data import (
    Sample,
    TrainSet,
    collate,
    epoch_batches,
    image_size,
    product_text,
    split_products,
)
from visual_search.training.finetune.loop import Trainer, Validator, make_trainer, train_one_epoch

Say = Callable[[str], None]


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def finetune(
    config: FinetuneConfig,
    *,
    progress: bool = True,
    explicit: Collection[str] | None = None,
    log: Say | None = None,
) -> FinetuneResult:
    """Run (or resume) a fine-tune; see the package docstring. Returns where best.pt is and the spec.

    ``explicit``: names of the config fields the user set (the CLI passes them) so that ``resume``
    can take the others from the saved run; None means every field was set on purpose.
    Raises FinetuneError / ModelUnavailableError / CatalogError with messages for people.
    """
    say = log or _say
    config.validate()
    out = Path(config.out_dir).expanduser().resolve()
    saved = open_run(config, out, explicit)
    catalog, products, (train_ids, val_ids) = _catalog_split(config, saved, say)
    if config.model.strip().startswith("timm:"):  # image-only backbone: image-to-image contrast
        from visual_search.training.finetune.timm_contrastive import finetune_timm

        split = (train_ids, val_ids)
        return finetune_timm(
            config, out, saved, catalog, products, split, progress=progress, explicit=explicit, say=say
        )

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    encoder = _open_clip_encoder(config)
    spec = output_spec(config.model, out / "best.pt", out)
    by_id = {p.product_id: p for p in catalog.products}
    label_of = {pid: i for i, pid in enumerate(products)}
    samples = [Sample(img.source, label_of[pid], pid) for pid in train_ids for img in by_id[pid].images]
    dataset = TrainSet(samples, encoder.preprocess, image_size(encoder), config.seed, config.background_p)
    n_batches = len(epoch_batches(len(samples), config.batch_size, config.seed, 1))
    steps_per_epoch = math.ceil(n_batches / config.accum_steps)
    trainer = make_trainer(
        encoder,
        config,
        [product_text(by_id[pid]) for pid in products],
        steps_per_epoch,
        state_dict=saved["state_dict"] if saved is not None else None,
    )
    record = RunRecord()
    if saved is not None:
        record = restore(trainer, saved)
        say(f"resuming {out} after epoch {record.epoch} (best so far: epoch {record.best_epoch})")

    out.mkdir(parents=True, exist_ok=True)
    say(
        f"fine-tuning the image tower of {encoder.model_id} on {encoder.device}"
        f"{' (fp16 autocast)' if trainer.use_amp else ''}: {len(train_ids)} training products "
        f"({len(samples)} images), {len(val_ids)} validation products; "
        f"{config.epochs} epochs x {steps_per_epoch} steps"
    )
    remaining = record.epoch + 1 <= config.epochs
    validator = Validator(catalog, products, val_ids, config.seed) if val_ids and remaining else None
    if validator is not None and record.baseline is None:
        record.baseline = validator(encoder, trainer.text_features.cpu().numpy())
        say(f"base model: {record.baseline.short()} ({validator.n_queries} validation queries)")

    trained = 0
    for epoch in range(record.epoch + 1, config.epochs + 1):
        stats = _run_epoch(epoch, trainer, dataset, encoder, validator, config, record, progress)
        close_epoch(out, trainer, record, config, (train_ids, val_ids), stats, say, ValMetrics.short)
        trained += 1
    return finish_run(config, out, spec, encoder, validator, record, (train_ids, val_ids), trained)


def _catalog_split(
    config: FinetuneConfig, saved: dict[str, Any] | None, say: Say
) -> tuple[Catalog, list[str], tuple[list[str], list[str]]]:
    """The catalog, its sorted product ids and the (train, validation) split; a resumed run's split
    must still hold."""
    catalog = read_catalog(config.catalog)
    for issue in catalog.issues:
        say(f"catalog: skipped {issue}")
    products = sorted(catalog.product_ids)
    train_ids, val_ids = split_products(products, config.val_fraction, config.seed)
    if saved is not None and (saved["split"]["train"], saved["split"]["val"]) != (train_ids, val_ids):
        old = set(saved["split"]["train"]) | set(saved["split"]["val"])
        raise FinetuneError(
            f"The catalog changed since this run started ({len(set(products) - old)} products added, "
            f"{len(old - set(products))} removed), so its train/validation split no longer holds. "
            "Start a new run with another --out."
        )
    if len(train_ids) < 2:
        raise FinetuneError(
            f"Fine-tuning needs at least 2 training products; the catalog has {len(products)} "
            f"and {len(val_ids)} are held out for validation."
        )
    return catalog, products, (train_ids, val_ids)


def _open_clip_encoder(config: FinetuneConfig) -> OpenClipEncoder:
    encoder = create_encoder(config.model, device=config.device)
    if not isinstance(encoder, OpenClipEncoder):
        raise FinetuneError(
            f"{config.model} is an image-only model; fine-tuning needs a CLIP model with a text tower "
            "(e.g. --model ViT-B-32)."
        )
    return encoder


def _run_epoch(
    epoch: int,
    trainer: Trainer,
    dataset: TrainSet,
    encoder: OpenClipEncoder,
    validator: Validator | None,
    config: FinetuneConfig,
    record: RunRecord,
    progress: bool,
) -> EpochStats:
    """Train one epoch, validate, and record it (``record.best`` moves when validation improved)."""
    from tqdm import tqdm

    started = time.perf_counter()
    batches = epoch_batches(len(dataset), config.batch_size, config.seed, epoch)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=config.workers,
        collate_fn=collate,
        pin_memory=trainer.device_type == "cuda",
    )
    bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress)
    try:
        trainer.model.train()
        loss = train_one_epoch(trainer, loader, len(batches), bar)
        trainer.model.eval()
        metrics = validator(encoder, trainer.text_features.cpu().numpy()) if validator is not None else None
        if metrics is not None:
            bar.set_postfix(loss=f"{loss:.4f}", R10=f"{metrics.i2i_recall_at_10:.3f}")
    finally:
        bar.close()
    return record.add(epoch, loss, trainer.lr(), time.perf_counter() - started, metrics)


def close_epoch(
    out: Path,
    trainer: Trainer,
    record: RunRecord,
    config: FinetuneConfig,
    split: tuple[list[str], list[str]],
    stats: EpochStats,
    say: Say,
    describe: Callable[[ValMetrics], str],
) -> None:
    """Checkpoint the epoch (epoch_N.pt, best.pt when it improved, last.pt), prune, and say how it went."""
    save_epoch(out, trainer, record, config, split, stats.best)
    prune_epochs(out, stats.epoch, config.keep_epochs)
    val_text = f", val {describe(stats.val)}" if stats.val else ""
    say(
        f"epoch {stats.epoch}/{config.epochs}: loss {stats.train_loss:.4f}{val_text}"
        f"{' -> best.pt' if stats.best else ''} ({stats.seconds:.0f} s)"
    )


def finish_run(
    config: FinetuneConfig,
    out: Path,
    spec: str,
    encoder: Any,
    validator: Any,
    record: RunRecord,
    split: tuple[list[str], list[str]],
    trained: int,
) -> FinetuneResult:
    """Export (local-dir bases), verify that ``spec`` loads best.pt, write run.json. The encoder and
    validator are the CLIP ones, or the timm ones (timm_contrastive)."""
    best_path = out / "best.pt"
    if not best_path.is_file():
        raise FinetuneError(
            f"{best_path} is missing; the run in {out} looks incomplete. Resume it with --resume."
        )
    if spec.startswith("local-dir:"):
        export_local_dir(config.model, best_path, out / "best-open_clip")
    verify(spec, encoder, best_path, validator)
    result = FinetuneResult(
        spec=spec,
        out_dir=out,
        best_path=best_path,
        last_path=out / "last.pt",
        best_epoch=record.best_epoch,
        best=record.best,
        baseline=record.baseline,
        history=record.history,
        train_products=split[0],
        val_products=split[1],
        trained_epochs=trained,
    )
    write_run_json(result, config)
    return result
