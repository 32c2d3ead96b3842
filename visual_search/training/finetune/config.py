"""Fine-tuning settings, results and limits (shared by every module of the package)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visual_search.core.errors import VisualSearchError

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
