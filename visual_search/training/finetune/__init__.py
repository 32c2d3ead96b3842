"""Fine-tune the vision tower of an open_clip model on a product catalog.

``python -m visual_search finetune CATALOG --model SPEC --out DIR`` (or :func:`finetune`).

Modules: ``config`` (settings, results), ``data`` (captions, split, augmented training set),
``loop`` (loss, optimiser and schedule, ``train_one_epoch``, validation), ``checkpoint`` (files, resume,
export, the verified spec), ``run`` (:func:`finetune`). The command line is ``visual_search.cli.finetune``.

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
    Files are written atomically (temp file + rename): an interrupted run never leaves a torn file.
"""

from visual_search.training.finetune.checkpoint import fine_tuned_spec
from visual_search.training.finetune.config import (
    CHECKPOINT_FORMAT,
    SELECTION_METRIC,
    EpochStats,
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    ValMetrics,
)
from visual_search.training.finetune.data import product_text, split_products
from visual_search.training.finetune.loop import contrastive_loss, freeze_text_tower
from visual_search.training.finetune.run import finetune

__all__ = [
    "CHECKPOINT_FORMAT",
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
