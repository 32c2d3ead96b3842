"""Fine-tune the vision tower of an open_clip model on a product catalog.

``python -m visual_search finetune CATALOG --model SPEC --out DIR`` (or :func:`finetune`).

What is trained
    The image tower only (``model.visual``: patch embedding, transformer, projection). The text tower
    and ``logit_scale`` are frozen: text embeddings stay exactly those of the base model, so text
    search and photo+text search keep working, and product texts are embedded once, up front.
    ``logit_scale`` only sharpens the training softmax; it changes no embedding used for search, and
    with catalog-sized data a learnable temperature mostly drifts, so it stays at the base value.

Objective
    Symmetric InfoNCE (CLIP loss) over (product image, product text) pairs in each batch; the text is
    built from title, category, brand and description (:func:`product_text`). Several images of one
    product in a batch are all positives for that product's text (no false negatives).

Optimisation
    AdamW (betas 0.9/0.98, eps 1e-6; no weight decay on biases, norms, 1-d params), small learning rate
    (default 1e-5) and weight decay 0.1, linear warmup (``warmup`` fraction of the optimizer steps) then
    cosine decay to 0, gradient clipping at norm 1. ``accum_steps`` accumulates gradients over several
    batches (note: the contrastive negatives are still those of one batch). On CUDA (chosen by
    visual_search.device.pick_device, no code change needed) the forward pass runs under
    ``torch.autocast`` fp16 with a GradScaler; CPU stays float32.

Data
    Train/validation split by product (never the same product on both sides), deterministic for a seed
    and independent of the catalog's row order (:func:`split_products`). Training images get the
    shopper-photo augmentation of visual_search.training.augment (background change, random resized crop, flip,
    colour jitter); every sample's randomness is derived from (seed, epoch, sample), so a run is
    reproducible with any number of DataLoader workers and a resumed run continues exactly.

Validation and model selection (after every epoch, and once before training for the base model)
    * image->image: each validation image becomes a synthetic shopper photo (augment.shopper_photo,
      fixed for the run); the gallery is the clean images of every catalog product (train products
      are distractors); products are ranked by their best image.
    * image->text: each clean validation image ranks the texts of all catalog products.
    Both report Recall@10 and MRR. **Selection metric: image->image Recall@10** (ties broken by
    image->image MRR, then image->text Recall@10): photo search is what the fine-tune is for, and the
    frozen text tower makes image->text a guard that image/text alignment survives.

Files in ``DIR``
    epoch_N.pt  model state_dict after epoch N (open_clip-loadable: ``--model ARCH@DIR/epoch_N.pt``)
    best.pt     state_dict of the best epoch by the selection metric (what to use)
    last.pt     everything to resume: model, optimizer, scheduler, grad scaler, epoch, RNG states,
                best metric, split, settings, history (``--resume`` continues from it)
    run.json    settings, split sizes, per-epoch metrics, the ``--model`` spec to use
    Checkpoints are written atomically (temp file + rename): an interrupted run never leaves a torn file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from visual_search.catalog import Catalog, Product, read_catalog
from visual_search.core.errors import ImageError, ModelUnavailableError, VisualSearchError
from visual_search.device import uses_half_precision
from visual_search.encoders import OpenClipEncoder, create_encoder
from visual_search.training.augment import shopper_photo, train_augment

__all__ = [
    "SELECTION_METRIC",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "ValMetrics",
    "contrastive_loss",
    "fine_tuned_spec",
    "finetune",
    "freeze_text_tower",
    "product_text",
    "split_products",
]

SELECTION_METRIC = "val image->image Recall@10 (synthetic shopper photos of held-out products)"
CHECKPOINT_FORMAT = "visual_search.finetune/1"
LOAD_MAX_SIDE = 640  # training/validation images are decoded at most this big (augmentation crops anyway)
SHOPPER_SIDE = 384  # side of the synthetic validation shopper photos
MAX_VAL_GALLERY = 5000  # validation gallery cap (val images always kept; train images sampled)
MAX_VAL_QUERIES = 2000
VERIFY_ATOL = 2e-3  # reloaded best.pt vs trained weights, embeddings (fp16 on CUDA needs slack)

# Settings that shape the training trajectory: a resumed run must use the saved ones.
_RUN_FIELDS = (
    "model",
    "seed",
    "val_fraction",
    "batch_size",
    "accum_steps",
    "lr",
    "weight_decay",
    "warmup",
    "background_p",
)


class FinetuneError(VisualSearchError):
    """Fine-tuning cannot start or continue (bad settings, nothing to resume, catalog too small)."""


# --------------------------------------------------------------------------------------------------
# Settings and results


@dataclass
class FinetuneConfig:
    """Everything ``finetune`` needs; the CLI flags map one to one."""

    catalog: str | Path
    model: str
    out_dir: str | Path
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-5
    weight_decay: float = 0.1
    val_fraction: float = 0.2
    seed: int = 0
    accum_steps: int = 1
    warmup: float = 0.1  # fraction of all optimizer steps spent warming up linearly
    background_p: float = 0.5  # probability of the background-change augmentation
    resume: bool = False
    device: str | None = None
    workers: int = 0
    keep_epochs: int | None = None  # keep only the newest N epoch_N.pt (None: keep all)

    def validate(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append("--epochs must be at least 1")
        if self.batch_size < 2:
            problems.append("--batch-size must be at least 2 (the contrastive loss needs negatives)")
        if self.accum_steps < 1:
            problems.append("--accum-steps must be at least 1")
        if not 0 <= self.val_fraction < 1:
            problems.append("--val-fraction must be in [0, 1)")
        if self.lr <= 0:
            problems.append("--lr must be positive")
        if self.weight_decay < 0:
            problems.append("--weight-decay must be >= 0")
        if not 0 <= self.warmup < 1:
            problems.append("--warmup must be a fraction in [0, 1)")
        if not 0 <= self.background_p <= 1:
            problems.append("--background-p must be in [0, 1]")
        if self.workers < 0:
            problems.append("--workers must be >= 0")
        if self.keep_epochs is not None and self.keep_epochs < 0:
            problems.append("--keep-epochs must be >= 0")
        if problems:
            raise FinetuneError("; ".join(problems))


@dataclass(frozen=True)
class ValMetrics:
    """Validation retrieval quality for one epoch (ranks over catalog products)."""

    i2i_recall_at_10: float
    i2i_mrr: float
    i2t_recall_at_10: float
    i2t_mrr: float
    n_queries: int

    def key(self) -> tuple[float, float, float]:
        """The selection order (bigger is better): see SELECTION_METRIC."""
        return (round(self.i2i_recall_at_10, 6), round(self.i2i_mrr, 6), round(self.i2t_recall_at_10, 6))

    def short(self) -> str:
        return (
            f"img->img R@10 {self.i2i_recall_at_10:.3f} MRR {self.i2i_mrr:.3f} | "
            f"img->text R@10 {self.i2t_recall_at_10:.3f} MRR {self.i2t_mrr:.3f}"
        )


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    lr: float  # learning rate at the end of the epoch
    seconds: float
    val: ValMetrics | None
    best: bool  # this epoch became best.pt


@dataclass
class FinetuneResult:
    spec: str  # the --model spec that loads best.pt (CLI, app, evaluate)
    out_dir: Path
    best_path: Path
    last_path: Path
    best_epoch: int
    best: ValMetrics | None
    baseline: ValMetrics | None  # the base model, before any training
    history: list[EpochStats] = field(default_factory=list)
    train_products: list[str] = field(default_factory=list)
    val_products: list[str] = field(default_factory=list)
    trained_epochs: int = 0  # run this call (0 when a resumed run was already complete)


# --------------------------------------------------------------------------------------------------
# Building blocks (public: tests and notebooks use them)


def product_text(product: Product) -> str:
    """The caption a product image is trained against: title, category, brand, then description.

    The tokenizer truncates (77 tokens for most CLIPs), so the short, decisive fields come first.
    """
    head = [product.title]
    if product.category:
        head.append(product.category)
    if product.brand:
        head.append(f"by {product.brand}")
    text = ", ".join(head)
    if product.description:
        text += ". " + " ".join(product.description.split())
    return text


def split_products(
    product_ids: Collection[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train, validation) product ids: disjoint, deterministic for a seed, independent of order.

    Products are ranked by sha256(seed, id); the first ``round(n * val_fraction)`` (at least one when
    the fraction is positive) go to validation. Adding products to a catalog moves few others.
    """
    ids = sorted(set(product_ids))
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    n_val = 0 if val_fraction == 0 or len(ids) < 2 else max(1, round(len(ids) * val_fraction))
    ranked = sorted(ids, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    val = set(ranked[:n_val])
    return [pid for pid in ids if pid not in val], [pid for pid in ids if pid in val]


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


def fine_tuned_spec(base_spec: str, checkpoint: str | Path) -> str:
    """The ``--model`` spec that loads ``checkpoint`` (a state dict of the base architecture).

    ``ViT-B-32``/``ViT-B-32@laion2b...``/``ViT-B-32@/old.pt`` -> ``ViT-B-32@/abs/checkpoint``;
    ``test:tiny[@...]`` -> ``test:tiny@/abs/checkpoint``. Pretrained tags trained with QuickGELU
    (``ViT-B-32@openai``) map to the ``-quickgelu`` architecture, which is what the weights need.
    ``local-dir:``/``hf-hub:`` bases have no architecture name: :func:`finetune` exports a folder
    for them and returns ``local-dir:`` for it instead.
    """
    import open_clip

    path = Path(checkpoint).expanduser().resolve()
    base = base_spec.strip()
    prefix, sep, rest = base.partition(":")
    if sep and prefix == "test":
        return f"test:tiny@{path}"
    if sep and prefix == "timm":
        raise FinetuneError(f"{base} is an image-only timm model; fine-tuning needs a CLIP model")
    if base.startswith(("local-dir:", "hf-hub:")):
        raise FinetuneError(f"{base} has no architecture name; export a local-dir folder instead")
    name, _, weights = base.partition("@")
    name, weights = name.strip(), weights.strip()
    if weights and not name.endswith("-quickgelu"):
        with contextlib.suppress(Exception):
            tag = weights.lower().replace("-", "_")
            if tag in open_clip.list_pretrained_tags_by_model(name):
                cfg = open_clip.get_pretrained_cfg(name, tag)
                if cfg.get("quick_gelu") and f"{name}-quickgelu" in open_clip.list_models():
                    name = f"{name}-quickgelu"
    return f"{name}@{path}"


# --------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class _Sample:
    source: str
    label: int  # index into the run's product list (train + val, sorted)
    product_id: str


class _TrainSet(torch.utils.data.Dataset):
    """Keys are (epoch, index): each sample's augmentation is a function of (seed, epoch, index)."""

    def __init__(
        self,
        samples: Sequence[_Sample],
        preprocess: Callable[[Image.Image], torch.Tensor],
        size: int,
        seed: int,
        background_p: float,
    ):
        self.samples = list(samples)
        self.preprocess = preprocess
        self.size = size
        self.seed = seed
        self.background_p = background_p

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        from visual_search.images.load import load_image

        epoch, index = key
        sample = self.samples[index]
        rng = random.Random(f"train:{self.seed}:{epoch}:{index}")
        try:
            image = load_image(sample.source, max_side=LOAD_MAX_SIDE)
        except ImageError as exc:
            print(f"warning: skipping {sample.source}: {exc}", file=sys.stderr)
            return None
        image = train_augment(image, rng, self.size, background_p=self.background_p)
        return self.preprocess(image), sample.label


def _collate(items: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
    good = [item for item in items if item is not None]
    if len(good) < 2:
        return None
    return torch.stack([pixels for pixels, _ in good]), torch.tensor([label for _, label in good])


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """Shuffled batches of (epoch, index) keys; a last batch of one sample joins the previous one."""
    order = list(range(n))
    random.Random(f"order:{seed}:{epoch}").shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2].extend(batches.pop())
    return [[(epoch, i) for i in batch] for batch in batches]


def _image_size(encoder: OpenClipEncoder) -> int:
    size = getattr(encoder.model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _load_many(sources: Sequence[str]) -> list[Image.Image | None]:
    from visual_search.images.load import load_image

    def one(source: str) -> Image.Image | None:
        try:
            return load_image(source, max_side=LOAD_MAX_SIDE)
        except ImageError as exc:
            print(f"warning: skipping {source}: {exc}", file=sys.stderr)
            return None

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, sources))


# --------------------------------------------------------------------------------------------------
# Validation


class _Validator:
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
        loaded = _load_many([source for source, _ in gallery])
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


# --------------------------------------------------------------------------------------------------
# Checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):  # another GPU count than when saved
            torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """random.setstate wants tuples back where torch.load may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _stats_dict(stats: EpochStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)


def _stats_from(data: dict[str, Any]) -> EpochStats:
    val = data.get("val")
    return EpochStats(**{**data, "val": ValMetrics(**val) if val else None})


def _config_record(config: FinetuneConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}


# --------------------------------------------------------------------------------------------------
# The training run


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


def _resolve_resume(config: FinetuneConfig, saved: dict[str, Any], explicit: Collection[str] | None) -> None:
    """Adopt the saved run's settings where the user set none; refuse explicit flags that contradict
    the training trajectory (``epochs`` and ``keep_epochs`` may change: that is how a run is extended)."""
    conflicts = []
    for name in (*_RUN_FIELDS, "epochs", "keep_epochs"):
        if name not in saved:
            continue
        old = saved[name]
        new = getattr(config, name)
        if old == new:
            continue
        if explicit is not None and name not in explicit:
            setattr(config, name, old)
        elif name in _RUN_FIELDS:
            conflicts.append(f"{name}={new!r} (the run used {old!r})")
    if conflicts:
        raise FinetuneError(
            "--resume continues the run with its own settings, but you asked for "
            + ", ".join(conflicts)
            + ". Drop those flags, or start a new run with another --out."
        )


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def finetune(
    config: FinetuneConfig,
    *,
    progress: bool = True,
    explicit: Collection[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Run (or resume) a fine-tune; see the module docstring. Returns where best.pt is and the spec.

    ``explicit``: names of the config fields the user set (the CLI passes them) so that ``resume``
    can take the others from the saved run; None means every field was set on purpose.
    Raises FinetuneError / ModelUnavailableError / CatalogError with messages for people.
    """
    from tqdm import tqdm

    say = log or _say
    config.validate()
    out = Path(config.out_dir).expanduser().resolve()
    last_path, best_path = out / "last.pt", out / "best.pt"

    saved: dict[str, Any] | None = None
    if config.resume:
        if not last_path.is_file():
            raise FinetuneError(f"Nothing to resume in {out}: there is no last.pt. Run without --resume.")
        saved = torch.load(last_path, map_location="cpu", weights_only=True)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise FinetuneError(f"{last_path} is not a checkpoint of this fine-tuner; cannot resume from it.")
        _resolve_resume(config, saved["config"], explicit)
    elif last_path.exists():
        raise FinetuneError(
            f"{out} already holds a fine-tuning run (last.pt). Pass --resume to continue it, or choose another --out."
        )

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

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    encoder = create_encoder(config.model, device=config.device)
    if not isinstance(encoder, OpenClipEncoder):
        raise FinetuneError(
            f"{config.model} is an image-only model; fine-tuning needs a CLIP model with a text tower "
            "(e.g. --model ViT-B-32)."
        )
    model, device = encoder.model, encoder.device
    spec = _output_spec(config.model, best_path, out)
    trainable = freeze_text_tower(model)
    if saved is not None:
        model.load_state_dict(saved["state_dict"])

    by_id = {p.product_id: p for p in catalog.products}
    label_of = {pid: i for i, pid in enumerate(products)}
    all_text = _text_features(encoder, [product_text(by_id[pid]) for pid in products])
    samples = [_Sample(img.source, label_of[pid], pid) for pid in train_ids for img in by_id[pid].images]
    dataset = _TrainSet(samples, encoder.preprocess, _image_size(encoder), config.seed, config.background_p)
    n_batches = len(_epoch_batches(len(samples), config.batch_size, config.seed, 1))
    steps_per_epoch = math.ceil(n_batches / config.accum_steps)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup * total_steps)

    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup_steps))
    use_amp = uses_half_precision(device)
    device_type = torch.device(device).type
    scaler = torch.amp.GradScaler(device_type, enabled=use_amp)
    logit_scale = model.logit_scale.detach().exp().clamp(max=100).float()

    history: list[EpochStats] = []
    baseline: ValMetrics | None = None
    best: ValMetrics | None = None
    best_epoch = 0
    start_epoch = 1
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        # --epochs may have grown: continue on the re-planned schedule, not at the saved run's last lr
        factor = _lr_lambda(total_steps, warmup_steps)(scheduler.last_epoch)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * factor
        scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        history = [_stats_from(h) for h in saved["history"]]
        baseline = ValMetrics(**saved["baseline"]) if saved.get("baseline") else None
        best = ValMetrics(**saved["best"]) if saved.get("best") else None
        best_epoch = int(saved["best_epoch"])
        start_epoch = int(saved["epoch"]) + 1
        say(f"resuming {out} after epoch {saved['epoch']} (best so far: epoch {best_epoch})")

    out.mkdir(parents=True, exist_ok=True)
    say(
        f"fine-tuning the image tower of {encoder.model_id} on {device}"
        f"{' (fp16 autocast)' if use_amp else ''}: {len(train_ids)} training products ({len(samples)} images), "
        f"{len(val_ids)} validation products; {config.epochs} epochs x {steps_per_epoch} steps"
    )
    remaining = start_epoch <= config.epochs
    validator = _Validator(catalog, products, val_ids, config.seed) if val_ids and remaining else None
    if validator is not None and baseline is None:
        baseline = validator(encoder, all_text.cpu().numpy())
        say(f"base model: {baseline.short()} ({validator.n_queries} validation queries)")

    trained = 0
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        batches = _epoch_batches(len(samples), config.batch_size, config.seed, epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=config.workers,
            collate_fn=_collate,
            pin_memory=device_type == "cuda",
        )
        model.train()
        bar = tqdm(
            total=len(batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress
        )
        loss_sum, loss_n = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for b, batch in enumerate(loader):
            group_start = b - b % config.accum_steps
            group_size = min(config.accum_steps, len(batches) - group_start)
            if batch is not None:
                pixels, labels = batch
                pixels = pixels.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device_type=device_type, dtype=torch.float16, enabled=use_amp):
                    features = model.encode_image(pixels)
                loss = contrastive_loss(F.normalize(features.float(), dim=-1), all_text, labels, logit_scale)
                scaler.scale(loss / group_size).backward()
                loss_sum += float(loss.detach())
                loss_n += 1
            if b + 1 == group_start + group_size:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        model.eval()

        metrics = validator(encoder, all_text.cpu().numpy()) if validator is not None else None
        improved = metrics is None or best is None or metrics.key() > best.key()
        if metrics is not None:
            bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.4f}", R10=f"{metrics.i2i_recall_at_10:.3f}")
        bar.close()
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / max(loss_n, 1),
            lr=float(scheduler.get_last_lr()[0]),
            seconds=time.perf_counter() - started,
            val=metrics,
            best=improved,
        )
        history.append(stats)
        if improved:
            best, best_epoch = metrics, epoch

        state = _cpu_state(model)
        _atomic_save(state, out / f"epoch_{epoch}.pt")
        if improved:
            _atomic_save(state, best_path)
        _atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "state_dict": state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best": dataclasses.asdict(best) if best else None,
                "best_epoch": best_epoch,
                "baseline": dataclasses.asdict(baseline) if baseline else None,
                "selection_metric": SELECTION_METRIC,
                "rng": _rng_state(),
                "config": _config_record(config),
                "split": {"train": train_ids, "val": val_ids},
                "history": [_stats_dict(h) for h in history],
            },
            last_path,
        )
        _prune_epochs(out, epoch, config.keep_epochs)
        trained += 1
        val_text = f", val {metrics.short()}" if metrics else ""
        say(
            f"epoch {epoch}/{config.epochs}: loss {stats.train_loss:.4f}{val_text}"
            f"{' -> best.pt' if improved else ''} ({stats.seconds:.0f} s)"
        )

    if not best_path.is_file():
        raise FinetuneError(
            f"{best_path} is missing; the run in {out} looks incomplete. Resume it with --resume."
        )
    if spec.startswith("local-dir:"):
        _export_local_dir(config.model, best_path, out / "best-open_clip")
    _verify(spec, encoder, best_path, validator)
    result = FinetuneResult(
        spec=spec,
        out_dir=out,
        best_path=best_path,
        last_path=last_path,
        best_epoch=best_epoch,
        best=best,
        baseline=baseline,
        history=history,
        train_products=train_ids,
        val_products=val_ids,
        trained_epochs=trained,
    )
    _write_run_json(result, config)
    return result


def _prune_epochs(out: Path, epoch: int, keep: int | None) -> None:
    if keep is None:
        return
    for old in range(1, epoch - keep + 1):
        with contextlib.suppress(FileNotFoundError):
            (out / f"epoch_{old}.pt").unlink()


def _output_spec(base: str, best_path: Path, out: Path) -> str:
    if base.strip().startswith(("local-dir:", "hf-hub:")):
        return f"local-dir:{out / 'best-open_clip'}"
    return fine_tuned_spec(base, best_path)


def _export_local_dir(base: str, best_path: Path, folder: Path) -> None:
    """For local-dir/hf-hub bases: a folder open_clip loads as ``local-dir:`` (config + best weights)."""
    base = base.strip()
    config_file: str | None = None
    if base.startswith("local-dir:"):
        config_file = str(Path(base[len("local-dir:") :].strip()).expanduser() / "open_clip_config.json")
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(base[len("hf-hub:") :].strip().strip("/"), "open_clip_config.json")
        config_file = found if isinstance(found, str) else None
    if not config_file or not Path(config_file).is_file():
        raise FinetuneError(f"Cannot find open_clip_config.json for {base} to export the fine-tuned model.")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_file, folder / "open_clip_config.json")
    tmp = folder / ".open_clip_pytorch_model.bin.tmp"
    shutil.copyfile(best_path, tmp)
    os.replace(tmp, folder / "open_clip_pytorch_model.bin")


def _verify(spec: str, trained: OpenClipEncoder, best_path: Path, validator: _Validator | None) -> None:
    """Load ``spec`` the way the app will and check it reproduces best.pt's image embeddings."""
    trained.model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    trained.model.eval()
    probes = [img for img, _ in (validator.gallery[:2] if validator else [])] or [
        Image.new("RGB", (96, 96), (200, 40, 40)),
        Image.new("RGB", (96, 96), (40, 40, 200)),
    ]
    try:
        loaded = create_encoder(spec, device=trained.device)
    except ModelUnavailableError as exc:
        raise FinetuneError(f"The fine-tuned checkpoint does not load with --model {spec}: {exc}") from exc
    diff = float(np.abs(loaded.embed_images(probes) - trained.embed_images(probes)).max())
    if diff > VERIFY_ATOL:
        raise FinetuneError(
            f"--model {spec} loads, but its image embeddings differ from the trained model's by {diff:.4f}; "
            "the spec's architecture does not match the weights."
        )
    del loaded


def _write_run_json(result: FinetuneResult, config: FinetuneConfig) -> None:
    data = {
        "spec": result.spec,
        "best_path": str(result.best_path),
        "best_epoch": result.best_epoch,
        "selection_metric": SELECTION_METRIC,
        "best": dataclasses.asdict(result.best) if result.best else None,
        "baseline": dataclasses.asdict(result.baseline) if result.baseline else None,
        "history": [_stats_dict(h) for h in result.history],
        "config": _config_record(config),
        "train_products": len(result.train_products),
        "val_products": result.val_products,
    }
    tmp = result.out_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, result.out_dir / "run.json")
