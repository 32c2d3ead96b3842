"""Files of a run: checkpoints (epoch_N.pt, best.pt, last.pt with everything to resume), run.json,
the exported ``local-dir:`` folder and the ``--model`` spec that loads the result (verified).

Every file is written atomically (core.io): an interrupted run never leaves a torn file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from visual_search.core.errors import ModelUnavailableError
from visual_search.core.io import atomic_copy, atomic_path, atomic_write_text
from visual_search.encoders import OpenClipEncoder, create_encoder
from visual_search.training.finetune.config import (
    _RUN_FIELDS,
    CHECKPOINT_FORMAT,
    SELECTION_METRIC,
    VERIFY_ATOL,
    EpochStats,
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    ValMetrics,
)
from visual_search.training.finetune.loop import Trainer, Validator, replan_schedule


@dataclass
class RunRecord:
    """What a run has done so far (saved in last.pt, restored on --resume)."""

    history: list[EpochStats] = field(default_factory=list)
    baseline: ValMetrics | None = None  # the base model, before any training
    best: ValMetrics | None = None
    best_epoch: int = 0
    epoch: int = 0  # last finished epoch

    def add(
        self, epoch: int, loss: float, lr: float, seconds: float, metrics: ValMetrics | None
    ) -> EpochStats:
        """Record a finished epoch; it becomes the best when validation improved (or there is none)."""
        improved = metrics is None or self.best is None or metrics.key() > self.best.key()
        stats = EpochStats(epoch, loss, lr, seconds, metrics, improved)
        self.history.append(stats)
        self.epoch = epoch
        if improved:
            self.best, self.best_epoch = metrics, epoch
        return stats

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> RunRecord:
        return cls(
            history=[_stats_from(h) for h in saved["history"]],
            baseline=ValMetrics(**saved["baseline"]) if saved.get("baseline") else None,
            best=ValMetrics(**saved["best"]) if saved.get("best") else None,
            best_epoch=int(saved["best_epoch"]),
            epoch=int(saved["epoch"]),
        )


def open_run(config: FinetuneConfig, out: Path, explicit: Collection[str] | None) -> dict[str, Any] | None:
    """last.pt of the run to resume (its settings adopted into ``config``), or None for a new run.
    Refuses resuming nothing, resuming a foreign file, and starting over an existing run."""
    last_path = out / "last.pt"
    if not config.resume:
        if last_path.exists():
            raise FinetuneError(
                f"{out} already holds a fine-tuning run (last.pt). Pass --resume to continue it, or choose another --out."
            )
        return None
    if not last_path.is_file():
        raise FinetuneError(f"Nothing to resume in {out}: there is no last.pt. Run without --resume.")
    saved = torch.load(last_path, map_location="cpu", weights_only=True)
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise FinetuneError(f"{last_path} is not a checkpoint of this fine-tuner; cannot resume from it.")
    _resolve_resume(config, saved["config"], explicit)
    return saved


def restore(trainer: Trainer, saved: dict[str, Any]) -> RunRecord:
    """Put optimiser, schedule, grad scaler and RNGs back where last.pt left them."""
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    replan_schedule(trainer)
    trainer.scaler.load_state_dict(saved["scaler"])
    _set_rng_state(saved["rng"])
    return RunRecord.from_saved(saved)


def save_epoch(
    out: Path,
    trainer: Trainer,
    record: RunRecord,
    config: FinetuneConfig,
    split: tuple[list[str], list[str]],
    improved: bool,
) -> None:
    """epoch_N.pt, best.pt when the epoch improved, and last.pt (everything to resume)."""
    state = _cpu_state(trainer.model)
    _atomic_save(state, out / f"epoch_{record.epoch}.pt")
    if improved:
        _atomic_save(state, out / "best.pt")
    _atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "state_dict": state,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "epoch": record.epoch,
            "best": dataclasses.asdict(record.best) if record.best else None,
            "best_epoch": record.best_epoch,
            "baseline": dataclasses.asdict(record.baseline) if record.baseline else None,
            "selection_metric": SELECTION_METRIC,
            "rng": _rng_state(),
            "config": _config_record(config),
            "split": {"train": split[0], "val": split[1]},
            "history": [_stats_dict(h) for h in record.history],
        },
        out / "last.pt",
    )


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


def prune_epochs(out: Path, epoch: int, keep: int | None) -> None:
    if keep is None:
        return
    for old in range(1, epoch - keep + 1):
        with contextlib.suppress(FileNotFoundError):
            (out / f"epoch_{old}.pt").unlink()


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


def output_spec(base: str, best_path: Path, out: Path) -> str:
    if base.strip().startswith(("local-dir:", "hf-hub:")):
        return f"local-dir:{out / 'best-open_clip'}"
    return fine_tuned_spec(base, best_path)


def export_local_dir(base: str, best_path: Path, folder: Path) -> None:
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
    atomic_copy(config_file, folder / "open_clip_config.json")
    atomic_copy(best_path, folder / "open_clip_pytorch_model.bin")


def verify(spec: str, trained: OpenClipEncoder, best_path: Path, validator: Validator | None) -> None:
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


def write_run_json(result: FinetuneResult, config: FinetuneConfig) -> None:
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
    atomic_write_text(result.out_dir / "run.json", json.dumps(data, indent=2))
