"""Fine-tune an image-only timm backbone (``--model timm:NAME@weights``) by image-to-image contrast.

``python -m visual_search finetune CATALOG --model timm:efficientnet_lite0@/path.pth --out DIR`` lands
here (``run.finetune`` hands over every ``timm:`` model). Same files, resume and best-by-validation as
the CLIP path (checkpoint.save_epoch / open_run / restore, run.json, verified ``--model`` spec).

Objective
    Supervised contrastive loss (SupCon, Khosla et al. 2020) with temperature ``temperature``
    (default 0.1) on the L2-normalised pooled features. A batch holds ``batch_size / views`` training
    products, ``views`` views each: view 0 is a catalog photo with the fine-tuning augmentation
    (augment.train_augment), the others are synthetic shopper photos of the same product
    (augment.shopper_query: handheld, close_up, clutter beside another training product). A product
    with several photos spreads its views over them, so its other photos are positives too.
    Everything of another product in the batch is a negative. This is what photo search needs: a
    shopper photo must land next to the clean catalog photos of its product.

What is trained, and why (CPU-friendly)
    The last ``train_blocks`` stages of the backbone (default 2 of EfficientNet-Lite0's 7) and the
    layers after them (the 1x1 head conv and its norm before pooling); no projection head is added,
    so the checkpoint is a plain state dict of the headless timm model, loadable with
    ``--model timm:NAME@DIR/best.pt``, and the embedding dimension stays the same. The frozen early
    stages hold generic edges and textures; freezing them means autograd keeps no activations for
    them, so a step costs one forward plus a backward over the last stages only (on 2 CPU cores,
    roughly half the cost of full fine-tuning), and a small catalog cannot overfit them.
    BatchNorm layers stay in eval mode (their ImageNet running statistics are kept and used): batches
    of a few dozen images of one catalog give noisy statistics, and search runs the model in eval
    mode anyway. Images keep the model's own input size (224 for EfficientNet-Lite0): a smaller
    training size would shift the scale of what the frozen stages see against search time.

Validation (after every epoch, and once for the base model)
    Each validation-product photo becomes one synthetic shopper photo per query kind (fixed for the
    run, seeds of their own); the gallery is the clean photos of every catalog product; products are
    ranked by their best photo. Selection metric as for CLIP: image->image Recall@10, then MRR.
    There is no text tower, so the image->text fields of ValMetrics are 0.

Default learning rate: :data:`TIMM_DEFAULT_LR` (1e-4) when the CLI user gives none; the CLIP default
(1e-5) is for a few thousand steps on a big tower, not tens of steps on the last stages of a convnet.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from visual_search.catalog import Catalog
from visual_search.core.errors import ImageError
from visual_search.device import uses_half_precision
from visual_search.encoders import TimmEncoder, create_encoder
from visual_search.training.augment import QUERY_KINDS, shopper_query, train_augment
from visual_search.training.finetune.checkpoint import (
    RunRecord,
    restore,
)
from visual_search.training.finetune.config import (
    LOAD_MAX_SIDE,
    MAX_VAL_GALLERY,
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    ValMetrics,
)
from visual_search.training.finetune.data import load_many
from visual_search.training.finetune.loop import Trainer, _lr_lambda, _param_groups, train_one_epoch

__all__ = [
    "TIMM_DEFAULT_LR",
    "TimmFinetuneConfig",
    "finetune_timm",
    "is_timm_spec",
    "supcon_loss",
    "timm_spec",
    "trainable_parameters",
]

TIMM_DEFAULT_LR = 1e-4
TRAIN_PHOTO_SIDE = 256  # shopper views are rendered at this side, then the model's preprocess crops 224
VAL_PHOTO_SIDE = 384
MAX_VAL_SOURCES = 600
_WEIGHT_SUFFIXES = (
    ".pt",
    ".pth",
    ".bin",
    ".safetensors",
    ".ckpt",
)  # validation photos (each makes one query per kind)

# Settings of this path that shape the training trajectory (a resumed run keeps the saved ones).
_TIMM_RUN_FIELDS = ("temperature", "train_blocks", "views")


@dataclass
class TimmFinetuneConfig(FinetuneConfig):
    """FinetuneConfig plus the image-to-image settings (ignored by the CLIP path)."""

    temperature: float = 0.1  # SupCon softmax temperature
    train_blocks: int = 2  # last backbone stages trained (with the head conv); 0 = the whole network
    views: int = 2  # views of each product per batch (1 catalog + views-1 shopper photos)

    def validate(self) -> None:
        super().validate()
        problems = []
        if not 0 < self.temperature <= 10:
            problems.append("--temperature must be in (0, 10]")
        if self.train_blocks < 0:
            problems.append("--train-blocks must be >= 0 (0 trains every layer)")
        if self.views < 2:
            problems.append("--views must be at least 2 (a product needs a positive)")
        elif self.batch_size < 2 * self.views:
            problems.append(f"--batch-size must be at least 2 x --views ({2 * self.views}) for negatives")
        if problems:
            raise FinetuneError("; ".join(problems))


def is_timm_spec(spec: str) -> bool:
    return spec.strip().startswith("timm:")


def timm_spec(base_spec: str, checkpoint: str | Path) -> str:
    """``timm:NAME[@weights|.tag]`` -> ``timm:NAME@/abs/checkpoint`` (the same architecture)."""
    rest = base_spec.strip()[len("timm:") :]
    name, _, weights = rest.partition("@")
    name, weights = name.strip(), weights.strip()
    is_path = any(c in weights for c in "/\\") or weights.endswith(_WEIGHT_SUFFIXES)
    if weights and not is_path:
        name = f"{name}.{weights}"  # timm:name@tag is timm:name.tag
    return f"timm:{name}@{Path(checkpoint).expanduser().resolve()}"


# --------------------------------------------------------------------------------------------------
# Loss and what is trained


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over one batch of L2-normalised ``features`` (B, d).

    For each anchor i with at least one positive (same label, j != i): the mean over its positives p
    of ``-log(exp(s_ip / t) / sum_{a != i} exp(s_ia / t))``; averaged over such anchors. Anchors with
    no positive in the batch do not count (they would only be pushed away, with no target).
    """
    n = features.shape[0]
    sims = features @ features.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    sims = sims.masked_fill(self_mask, float("-inf"))
    log_prob = sims - torch.logsumexp(sims, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    has = counts > 0
    if not bool(has.any()):
        raise FinetuneError("A batch has no two views of one product; the contrastive loss needs positives")
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(dim=1)[has] / counts[has]
    return per_anchor.mean()


def trainable_parameters(model: torch.nn.Module, train_blocks: int) -> list[torch.nn.Parameter]:
    """Freeze all but the last ``train_blocks`` stages and the layers after them (0: train all).

    Stages are the children of ``model.blocks`` or ``model.stages`` (timm EfficientNet/MobileNet,
    ConvNeXt, ViT blocks, ...); modules registered after that container (head conv, final norm) train
    with the last stages, modules before it (stem) stay frozen.
    """
    for param in model.parameters():
        param.requires_grad_(train_blocks == 0)
    if train_blocks == 0:
        return list(model.parameters())
    container_name = next((n for n in ("blocks", "stages", "layers") if hasattr(model, n)), None)
    container = getattr(model, container_name) if container_name else None
    if not isinstance(container, torch.nn.Sequential | torch.nn.ModuleList) or len(container) == 0:
        raise FinetuneError(
            f"Cannot tell the stages of {type(model).__name__} apart; pass --train-blocks 0 to train all layers."
        )
    stages = list(container)
    trained_modules = stages[-min(train_blocks, len(stages)) :]
    after = False
    for name, child in model.named_children():
        if name == container_name:
            after = True
        elif after:
            trained_modules.append(child)
    trainable = []
    for module in trained_modules:
        for param in module.parameters():
            param.requires_grad_(True)
            trainable.append(param)
    return trainable


def _freeze_norms(model: torch.nn.Module) -> None:
    """The whole model in eval mode: BatchNorm keeps (and uses) its running statistics, no dropout."""
    model.eval()


# --------------------------------------------------------------------------------------------------
# Data


class ContrastiveSet(torch.utils.data.Dataset):
    """Keys are (epoch, product slot, view); each item's randomness is a function of (seed, key)."""

    def __init__(
        self,
        products: Sequence[tuple[int, list[str]]],  # (label, image sources) per training product
        preprocess: Callable[[Image.Image], torch.Tensor],
        seed: int,
        background_p: float,
    ):
        self.products = list(products)
        self.preprocess = preprocess
        self.seed = seed
        self.background_p = background_p
        self._cache: dict[str, Image.Image | None] = {}

    def __len__(self) -> int:
        return len(self.products)

    def _image(self, source: str) -> Image.Image | None:
        from visual_search.images.load import load_image

        if source not in self._cache:
            try:
                self._cache[source] = load_image(source, max_side=LOAD_MAX_SIDE)
            except ImageError as exc:
                print(f"warning: skipping {source}: {exc}", file=sys.stderr)
                self._cache[source] = None
        return self._cache[source]

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int] | None:
        epoch, slot, view = key
        label, sources = self.products[slot]
        first = random.Random(f"timm-pick:{self.seed}:{epoch}:{slot}").randrange(len(sources))
        image = self._image(sources[(first + view) % len(sources)])
        if image is None:
            return None
        rng = random.Random(f"timm-train:{self.seed}:{epoch}:{slot}:{view}")
        if view == 0:
            picture = train_augment(image, rng, TRAIN_PHOTO_SIDE, background_p=self.background_p)
        else:
            kind = rng.choice(QUERY_KINDS)
            distractor = None
            if kind == "clutter":
                other = rng.choice([s for i, (_, s) in enumerate(self.products) if i != slot])
                distractor = self._image(rng.choice(other))
                if distractor is None:
                    kind = "handheld"
            picture = shopper_query(kind, image, rng, distractor=distractor, size=TRAIN_PHOTO_SIDE)
        return self.preprocess(picture), label


def epoch_groups(n_products: int, per_batch: int, views: int, seed: int, epoch: int) -> list[list[tuple]]:
    """Shuffled batches of (epoch, product, view) keys, ``per_batch`` products x ``views`` each; a last
    batch of one product joins the previous one (a batch needs negatives)."""
    order = list(range(n_products))
    random.Random(f"timm-order:{seed}:{epoch}").shuffle(order)
    groups = [order[i : i + per_batch] for i in range(0, n_products, per_batch)]
    if len(groups) > 1 and len(groups[-1]) < 2:
        groups[-2].extend(groups.pop())
    return [[(epoch, p, v) for p in group for v in range(views)] for group in groups]


def _collate(items: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
    good = [item for item in items if item is not None]
    labels = [label for _, label in good]
    if len(good) < 2 or len(set(labels)) == len(labels):
        return None  # no positive pair left
    return torch.stack([pixels for pixels, _ in good]), torch.tensor(labels)


# --------------------------------------------------------------------------------------------------
# Validation


class ImageValidator:
    """Fixed synthetic shopper queries of the validation products against the clean catalog photos."""

    def __init__(self, catalog: Catalog, products: list[str], val_ids: list[str], seed: int):
        index = {pid: i for i, pid in enumerate(products)}
        by_id = {p.product_id: p for p in catalog.products}
        val_set = set(val_ids)
        val_images = [(img.source, index[pid]) for pid in val_ids for img in by_id[pid].images]
        others = [
            (img.source, index[pid]) for pid in products if pid not in val_set for img in by_id[pid].images
        ]
        room = max(0, MAX_VAL_GALLERY - len(val_images))
        if len(others) > room:
            others = random.Random(f"gallery:{seed}").sample(others, room)
        gallery = val_images + others
        loaded = load_many([source for source, _ in gallery])
        self.products = products
        self.gallery = [(img, lab) for img, (_, lab) in zip(loaded, gallery, strict=True) if img is not None]
        val_labels = {index[pid] for pid in val_ids}
        sources = [(img, lab) for img, lab in self.gallery if lab in val_labels]
        if len(sources) > MAX_VAL_SOURCES:
            sources = random.Random(f"timm-val-sources:{seed}").sample(sources, MAX_VAL_SOURCES)
        self.queries: list[tuple[Image.Image, int]] = []
        for i, (img, label) in enumerate(sources):
            for kind in QUERY_KINDS:
                rng = random.Random(f"timm-val:{seed}:{kind}:{i}")
                distractor = None
                if kind == "clutter":
                    pool = [g for g, lab in self.gallery if lab != label]
                    if not pool:
                        continue
                    distractor = rng.choice(pool)
                self.queries.append(
                    (shopper_query(kind, img, rng, distractor=distractor, size=VAL_PHOTO_SIDE), label)
                )

    @property
    def n_queries(self) -> int:
        return len(self.queries)

    def __call__(self, encoder: Any, text_features: Any = None) -> ValMetrics:
        was_training = encoder.model.training
        encoder.model.eval()
        try:
            gallery = encoder.embed_images([img for img, _ in self.gallery])
            queries = encoder.embed_images([img for img, _ in self.queries])
        finally:
            encoder.model.train(was_training)
        labels = np.array([label for _, label in self.queries])
        sims = queries @ gallery.T
        scores = np.full((len(queries), len(self.products)), -np.inf, dtype=np.float32)
        for j, (_, label) in enumerate(self.gallery):
            np.maximum(scores[:, label], sims[:, j], out=scores[:, label])
        own = scores[np.arange(len(labels)), labels]
        ranks = (scores >= own[:, None]).sum(axis=1)
        return ValMetrics(
            i2i_recall_at_10=float((ranks <= 10).mean()),
            i2i_mrr=float((1.0 / ranks).mean()),
            i2t_recall_at_10=0.0,
            i2t_mrr=0.0,
            n_queries=len(labels),
        )


def short(metrics: ValMetrics) -> str:
    return f"img->img R@10 {metrics.i2i_recall_at_10:.3f} MRR {metrics.i2i_mrr:.3f}"


# --------------------------------------------------------------------------------------------------
# The run


def _resolve_timm_resume(
    config: TimmFinetuneConfig, saved: dict[str, Any], explicit: Collection[str] | None
) -> None:
    conflicts = []
    for name in _TIMM_RUN_FIELDS:
        if name not in saved or saved[name] == getattr(config, name):
            continue
        if explicit is not None and name not in explicit:
            setattr(config, name, saved[name])
        else:
            conflicts.append(f"{name}={getattr(config, name)!r} (the run used {saved[name]!r})")
    if conflicts:
        raise FinetuneError(
            "--resume continues the run with its own settings, but you asked for "
            + ", ".join(conflicts)
            + ". Drop those flags, or start a new run with another --out."
        )


def _as_timm_config(config: FinetuneConfig) -> TimmFinetuneConfig:
    if isinstance(config, TimmFinetuneConfig):
        return config
    fields = {f: getattr(config, f) for f in FinetuneConfig.__dataclass_fields__}
    return TimmFinetuneConfig(**fields)


def _timm_encoder(config: FinetuneConfig) -> TimmEncoder:
    encoder = create_encoder(config.model, device=config.device)
    if not isinstance(encoder, TimmEncoder):
        raise FinetuneError(f"{config.model} is not a timm image model")
    return encoder


def _timm_trainer(
    encoder: TimmEncoder,
    config: TimmFinetuneConfig,
    trainable: list[torch.nn.Parameter],
    steps_per_epoch: int,
) -> Trainer:
    """AdamW over the trainable stages, warmup + cosine schedule, fp16 scaler on CUDA (no text tower)."""
    model, device = encoder.model, encoder.device
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup * total_steps)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    use_amp = uses_half_precision(device)
    return Trainer(
        model=model,
        device=device,
        trainable=trainable,
        text_features=torch.zeros(0),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup_steps)),
        scaler=torch.amp.GradScaler(torch.device(device).type, enabled=use_amp),
        use_amp=use_amp,
        logit_scale=torch.tensor(1.0 / config.temperature),
        accum_steps=config.accum_steps,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )


def finetune_timm(
    config: FinetuneConfig,
    out: Path,
    saved: dict[str, Any] | None,
    catalog: Catalog,
    products: list[str],
    split: tuple[list[str], list[str]],
    *,
    progress: bool,
    explicit: Collection[str] | None,
    say: Callable[[str], None],
) -> FinetuneResult:
    """The timm run, after run.finetune has opened the run and split the catalog (see module doc)."""
    from tqdm import tqdm

    from visual_search.training.finetune.run import close_epoch, finish_run

    config = _as_timm_config(config)
    if saved is not None:
        _resolve_timm_resume(config, saved["config"], explicit)
    config.validate()
    train_ids, val_ids = split
    encoder = _timm_encoder(config)
    model, device = encoder.model, encoder.device
    trainable = trainable_parameters(model, config.train_blocks)
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
    spec = timm_spec(config.model, out / "best.pt")

    by_id = {p.product_id: p for p in catalog.products}
    label_of = {pid: i for i, pid in enumerate(products)}
    dataset = ContrastiveSet(
        [(label_of[pid], [img.source for img in by_id[pid].images]) for pid in train_ids],
        encoder.preprocess,
        config.seed,
        config.background_p,
    )
    per_batch = max(2, config.batch_size // config.views)
    n_batches = len(epoch_groups(len(dataset), per_batch, config.views, config.seed, 1))
    steps_per_epoch = math.ceil(n_batches / config.accum_steps)
    trainer = _timm_trainer(encoder, config, trainable, steps_per_epoch)
    record = RunRecord()
    if saved is not None:
        record = restore(trainer, saved)
        say(f"resuming {out} after epoch {record.epoch} (best so far: epoch {record.best_epoch})")

    out.mkdir(parents=True, exist_ok=True)
    n_trainable = sum(p.numel() for p in trainable)
    say(
        f"fine-tuning {encoder.model_id} (image-to-image, SupCon t={config.temperature:g}; last "
        f"{config.train_blocks or 'all'} stages + head, {n_trainable / 1e6:.2f}M parameters) on {device}: "
        f"{len(train_ids)} training products x {config.views} views, {len(val_ids)} validation products; "
        f"{config.epochs} epochs x {steps_per_epoch} steps"
    )
    remaining = record.epoch + 1 <= config.epochs
    validator = ImageValidator(catalog, products, val_ids, config.seed) if val_ids and remaining else None
    if validator is not None and record.baseline is None:
        record.baseline = validator(encoder)
        say(f"base model: {short(record.baseline)} ({validator.n_queries} validation queries)")

    trained = 0
    for epoch in range(record.epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        batches = epoch_groups(len(dataset), per_batch, config.views, config.seed, epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=config.workers, collate_fn=_collate
        )
        bar = tqdm(
            total=len(batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress
        )
        try:
            loss = _train_one_epoch(trainer, loader, len(batches), bar, config.temperature)
            metrics = validator(encoder) if validator is not None else None
        finally:
            bar.close()
        stats = record.add(epoch, loss, trainer.lr(), time.perf_counter() - started, metrics)
        close_epoch(out, trainer, record, config, split, stats, say, short)
        trained += 1
    return finish_run(config, out, spec, encoder, validator, record, split, trained)


def _train_one_epoch(trainer: Trainer, loader: Any, n_batches: int, bar: Any, temperature: float) -> float:
    """One pass with the SupCon loss (norm layers kept frozen); the loop is loop.train_one_epoch."""
    _freeze_norms(trainer.model)

    def batch_loss(trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        pixels, labels = batch
        pixels = pixels.to(trainer.device, non_blocking=True)
        labels = labels.to(trainer.device, non_blocking=True)
        with torch.autocast(device_type=trainer.device_type, dtype=torch.float16, enabled=trainer.use_amp):
            features = trainer.model(pixels)
        return supcon_loss(F.normalize(features.float(), dim=-1), labels, temperature)

    return train_one_epoch(trainer, loader, n_batches, bar, batch_loss)
