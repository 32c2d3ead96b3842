"""The training step: what is trained (the image tower), the loss, the optimiser and its schedule,
one epoch (``train_one_epoch``) and validation (``Validator``), split like open_clip's training code."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visual_search.catalog import Catalog
from visual_search.device import uses_half_precision
from visual_search.encoders import OpenClipEncoder
from visual_search.training.augment import shopper_photo
from visual_search.training.finetune.config import (
    MAX_VAL_GALLERY,
    MAX_VAL_QUERIES,
    SHOPPER_SIDE,
    FinetuneConfig,
    FinetuneError,
    ValMetrics,
)
from visual_search.training.finetune.data import load_many, product_text


def freeze_text_tower(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Freeze everything but ``model.visual`` (text tower, logit_scale/bias); return the trainable
    parameters."""
    visual = getattr(model, "visual", None)
    if visual is None:
        raise FinetuneError("This model has no .visual image tower to fine-tune")
    for param in model.parameters():
        param.requires_grad_(False)
    trainable = []
    for param in visual.parameters():
        param.requires_grad_(True)
        trainable.append(param)
    return trainable


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> torch.Tensor:
    """Symmetric InfoNCE between a batch of images and the texts of their products.

    ``image_features`` (B, d) and ``text_features`` (P, d) are L2-normalised; ``labels`` (B,) index
    ``text_features``. Only the products present in the batch take part; images of the same product
    are all positives for its text (text->image uses a uniform target over them), never negatives.
    With one image per product this is exactly the CLIP loss.
    """
    unique, inverse = torch.unique(labels, return_inverse=True)
    texts = text_features[unique].to(image_features.dtype)
    logits = logit_scale * image_features @ texts.T  # (B, U)
    image_to_text = F.cross_entropy(logits, inverse)
    positives = (inverse[None, :] == torch.arange(len(unique), device=labels.device)[:, None]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    text_to_image = -(targets * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or "bias" in name or ".ln" in name or "norm" in name or ".bn" in name
        (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def _text_features(encoder: OpenClipEncoder, texts: list[str]) -> torch.Tensor:
    """Normalised float32 (len(texts), d) on the encoder's device; the frozen text tower, once."""
    return torch.from_numpy(encoder.embed_texts(texts)).to(encoder.device)


@dataclass
class Trainer:
    """The model and its optimisation state for a run: what ``train_one_epoch`` steps."""

    model: torch.nn.Module
    device: str
    trainable: list[torch.nn.Parameter]
    text_features: torch.Tensor  # every catalog product's text, normalised, frozen
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    logit_scale: torch.Tensor
    accum_steps: int
    total_steps: int
    warmup_steps: int

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])


def make_trainer(
    encoder: OpenClipEncoder,
    config: FinetuneConfig,
    texts: list[str],
    steps_per_epoch: int,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Trainer:
    """Freeze the text tower (then load ``state_dict``, a resumed run's weights), embed the product
    texts once, build AdamW + warmup/cosine schedule and the fp16 grad scaler (CUDA only)."""
    model, device = encoder.model, encoder.device
    trainable = freeze_text_tower(model)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    text_features = _text_features(encoder, texts)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup * total_steps)
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup_steps))
    use_amp = uses_half_precision(device)
    return Trainer(
        model=model,
        device=device,
        trainable=trainable,
        text_features=text_features,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(torch.device(device).type, enabled=use_amp),
        use_amp=use_amp,
        logit_scale=model.logit_scale.detach().exp().clamp(max=100).float(),
        accum_steps=config.accum_steps,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )


def replan_schedule(trainer: Trainer) -> None:
    """After loading a saved scheduler: --epochs may have grown, so continue on the re-planned
    schedule, not at the saved run's last learning rate."""
    scheduler = trainer.scheduler
    factor = _lr_lambda(trainer.total_steps, trainer.warmup_steps)(scheduler.last_epoch)
    for group, base_lr in zip(trainer.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * factor


BatchLoss = Callable[[Trainer, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


def train_one_epoch(
    trainer: Trainer, loader: Any, n_batches: int, bar: Any, batch_loss: BatchLoss | None = None
) -> float:
    """One pass over ``loader`` (``n_batches`` batches, ``None`` for a batch with under 2 good images);
    steps the optimiser every ``accum_steps`` batches (gradient clipping at 1.0). Returns the mean
    training loss. ``batch_loss`` defaults to the CLIP image-text loss; the caller sets train/eval
    modes. Shared by the CLIP and the timm runs."""
    compute = batch_loss or _batch_loss
    loss_sum, loss_n = 0.0, 0
    trainer.optimizer.zero_grad(set_to_none=True)
    for b, batch in enumerate(loader):
        group_start = b - b % trainer.accum_steps
        group_size = min(trainer.accum_steps, n_batches - group_start)
        if batch is not None:
            loss = compute(trainer, batch)
            trainer.scaler.scale(loss / group_size).backward()
            loss_sum += float(loss.detach())
            loss_n += 1
        if b + 1 == group_start + group_size:
            _optimizer_step(trainer)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.4f}", lr=f"{trainer.lr():.2e}")
    return loss_sum / max(loss_n, 1)


def _batch_loss(trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    pixels, labels = batch
    pixels = pixels.to(trainer.device, non_blocking=True)
    labels = labels.to(trainer.device, non_blocking=True)
    with torch.autocast(device_type=trainer.device_type, dtype=torch.float16, enabled=trainer.use_amp):
        features = trainer.model.encode_image(pixels)
    return contrastive_loss(
        F.normalize(features.float(), dim=-1), trainer.text_features, labels, trainer.logit_scale
    )


def _optimizer_step(trainer: Trainer) -> None:
    trainer.scaler.unscale_(trainer.optimizer)
    torch.nn.utils.clip_grad_norm_(trainer.trainable, 1.0)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()


# --------------------------------------------------------------------------------------------------
# Validation


class Validator:
    """Fixed validation queries and gallery for a run; ``__call__(encoder)`` -> ValMetrics."""

    def __init__(self, catalog: Catalog, products: list[str], val_ids: list[str], seed: int):
        self.products = products
        index = {pid: i for i, pid in enumerate(products)}
        by_id = {p.product_id: p for p in catalog.products}
        val_set = set(val_ids)
        val_images = [(img.source, index[img.product_id]) for pid in val_ids for img in by_id[pid].images]
        others = [
            (img.source, index[img.product_id])
            for pid in products
            if pid not in val_set
            for img in by_id[pid].images
        ]
        room = max(0, MAX_VAL_GALLERY - len(val_images))
        if len(others) > room:
            others = random.Random(f"gallery:{seed}").sample(others, room)
        gallery = val_images + others
        loaded = load_many([source for source, _ in gallery])
        self.gallery = [
            (img, label) for img, (_, label) in zip(loaded, gallery, strict=True) if img is not None
        ]
        clean_val = [
            (img, label)
            for img, (_, label) in zip(loaded[: len(val_images)], val_images, strict=True)
            if img is not None
        ]
        if len(clean_val) > MAX_VAL_QUERIES:
            clean_val = random.Random(f"queries:{seed}").sample(clean_val, MAX_VAL_QUERIES)
        self.clean_queries = clean_val
        self.shopper_queries = [
            (shopper_photo(img, random.Random(f"valquery:{seed}:{i}"), size=SHOPPER_SIDE), label)
            for i, (img, label) in enumerate(clean_val)
        ]
        self.texts = [product_text(by_id[pid]) for pid in products]

    @property
    def n_queries(self) -> int:
        return len(self.shopper_queries)

    def __call__(self, encoder: OpenClipEncoder, text_features: np.ndarray) -> ValMetrics:
        was_training = encoder.model.training
        encoder.model.eval()
        try:
            gallery = encoder.embed_images([img for img, _ in self.gallery])
            queries = encoder.embed_images([img for img, _ in self.shopper_queries])
            clean = encoder.embed_images([img for img, _ in self.clean_queries])
        finally:
            encoder.model.train(was_training)
        gallery_labels = np.array([label for _, label in self.gallery])
        labels = np.array([label for _, label in self.clean_queries])
        # image -> image: product score = its best image
        sims = queries @ gallery.T
        product_scores = np.full((len(queries), len(self.products)), -np.inf, dtype=np.float32)
        for j, label in enumerate(gallery_labels):
            np.maximum(product_scores[:, label], sims[:, j], out=product_scores[:, label])
        i2i_ranks = _ranks(product_scores, labels)
        i2t_ranks = _ranks(clean @ text_features.T, labels)
        return ValMetrics(
            i2i_recall_at_10=float((i2i_ranks <= 10).mean()),
            i2i_mrr=float((1.0 / i2i_ranks).mean()),
            i2t_recall_at_10=float((i2t_ranks <= 10).mean()),
            i2t_mrr=float((1.0 / i2t_ranks).mean()),
            n_queries=len(labels),
        )


def _ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of each row's label column (ties count against it)."""
    own = scores[np.arange(len(labels)), labels]
    return (scores >= own[:, None]).sum(axis=1)
