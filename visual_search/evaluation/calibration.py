"""Score threshold calibrated per model from an evaluation: which first-result score separates a right
answer from a wrong one.

Cosine scores mean different things for different models (CLIP photo matches sit around 0.6-0.9, an
ImageNet convnet's pooled features score 0.5+ for anything; a fine-tuned checkpoint moves them again),
so one fixed default threshold hides right answers for one model and shows noise for another.

:func:`calibrate` takes the first result's score of every evaluation query and whether that result
was right, and picks the threshold t that maximises Youden's J = TPR - FPR, where a query is
"confident" when its first score >= t: TPR = share of right first results that are confident, FPR =
share of wrong first results that are confident. Candidates are the midpoints between consecutive
distinct scores (a threshold exactly on a score would depend on float noise). Ties in J go to the
lower threshold (hide fewer results). It also reports the precision and recall of the confident
answers at t, so the number means something to a person ("at 0.62, 94% of confident answers are
right, and 88% of right answers are confident").

The colour re-rank's weight is calibrated from the same evaluation (:func:`calibrate_colour_weight`):
the auto pipeline records, per query, its top COLOUR_TOP_K before the re-rank with each product's
colour similarity, so the re-rank can be replayed at every weight of COLOUR_WEIGHT_GRID without
searching again; the weight with the most right first results wins (then the most right top-10s,
then the smaller weight). Why per model: COLOUR_WEIGHT (0.30) was measured on EfficientNet-Lite0,
whose image scores spread differently from CLIP's, so the same colour bonus is a different nudge
under another model. The threshold is then calibrated on the first results at that weight.

Stored in ``<data-dir>/calibration.json`` beside the index (written atomically), keyed by model id, so
a fine-tuned checkpoint (another model id) never inherits its base model's threshold.
``python -m visual_search evaluate ... --calibrate`` writes it; ``SearchEngine.default_threshold()``
reads it, falling back to :func:`builtin_threshold` (today's per-model defaults).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visual_search.core.io import atomic_write_text

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
FORMAT = 1
MIN_QUERIES = 10  # fewer scored queries than this give no calibration (a threshold from 3 points is noise)
COLOUR_WEIGHT_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold for one model and what it means on the evaluation it came from."""

    threshold: float
    youden_j: float
    precision: float  # share of right first results among the confident ones (score >= threshold)
    recall: float  # share of right first results that are confident (= TPR)
    false_positive_rate: float  # share of wrong first results that are confident
    n_queries: int
    n_correct: int
    source: str = ""  # what it was measured on (query set, pipeline)
    created_at: str = ""
    colour_weight: float | None = None  # the colour re-rank's weight (None: not calibrated)
    colour_r1_off: float | None = None  # R@1 of the replayed queries without the re-rank ...
    colour_r1: float | None = None  # ... and at colour_weight
    colour_queries: int = 0  # queries the weight was chosen on

    def summary(self) -> str:
        text = (
            f"threshold {self.threshold:.3f}: {self.precision:.0%} of confident answers are right, "
            f"{self.recall:.0%} of right answers are confident, {self.false_positive_rate:.0%} of wrong "
            f"ones slip through (Youden's J {self.youden_j:.2f}; {self.n_correct}/{self.n_queries} right)"
        )
        if self.colour_weight is not None:
            text += f"; {self.colour_summary()}"
        return text

    def colour_summary(self) -> str:
        if self.colour_weight is None:
            return "colour weight not calibrated"
        return (
            f"colour weight {self.colour_weight:.2f} (R@1 {self.colour_r1_off:.3f} without the colour "
            f"re-rank, {self.colour_r1:.3f} with it, on {self.colour_queries} queries)"
        )


@dataclass(frozen=True)
class ColourChoice:
    """The colour weight :func:`calibrate_colour_weight` chose and what it did on the replayed queries."""

    weight: float
    r1_off: float  # R@1 at weight 0
    r1: float  # R@1 at ``weight``
    r10: float  # R@10 at ``weight``
    n_queries: int


class CalibrationError(ValueError):
    """The scores cannot be calibrated (too few, or every first result right / every one wrong)."""


def calibrate(scores: Sequence[float], correct: Sequence[bool], *, source: str = "") -> Calibration:
    """The threshold that best separates right first results from wrong ones (see the module doc).

    Raises CalibrationError when there are fewer than MIN_QUERIES scores, or no right or no wrong one
    (then nothing separates them: the evaluation is too easy or too hard to say).
    """
    if len(scores) != len(correct):
        raise ValueError("scores and correct must have the same length")
    pairs = [(float(s), bool(c)) for s, c in zip(scores, correct, strict=True) if s is not None]
    pairs = [(s, c) for s, c in pairs if math.isfinite(s)]
    n = len(pairs)
    n_pos = sum(c for _, c in pairs)
    n_neg = n - n_pos
    if n < MIN_QUERIES:
        raise CalibrationError(f"calibration needs at least {MIN_QUERIES} scored queries, got {n}")
    if n_pos == 0 or n_neg == 0:
        which = "right" if n_neg == 0 else "wrong"
        raise CalibrationError(
            f"every first result was {which} ({n} queries), so no score separates right from wrong; "
            "calibrate on a harder (or easier) query set"
        )
    distinct = sorted({s for s, _ in pairs})
    candidates = [distinct[0] - 1e-6] + [(a + b) / 2 for a, b in zip(distinct, distinct[1:], strict=False)]
    candidates.append(distinct[-1] + 1e-6)
    best: tuple[float, float] | None = None  # (J, threshold)
    for t in candidates:  # ascending: on equal J the first (lower) threshold stays
        tp = sum(1 for s, c in pairs if c and s >= t)
        fp = sum(1 for s, c in pairs if not c and s >= t)
        j = tp / n_pos - fp / n_neg
        if best is None or j > best[0] + 1e-12:
            best = (j, t)
    assert best is not None
    j, t = best
    tp = sum(1 for s, c in pairs if c and s >= t)
    fp = sum(1 for s, c in pairs if not c and s >= t)
    return Calibration(
        threshold=round(t, 6),
        youden_j=j,
        precision=tp / (tp + fp) if tp + fp else float("nan"),
        recall=tp / n_pos,
        false_positive_rate=fp / n_neg,
        n_queries=n,
        n_correct=n_pos,
        source=source,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


Window = Sequence[tuple[str, float, float | None]]  # (product id, fused score, colour similarity)


def replay_colour(window: Window, weight: float) -> list[tuple[str, float]]:
    """A query's colour window re-ordered at ``weight`` (as query_views.rerank_by_colour: score +
    weight x similarity, no similarity no bonus, ties keep the fused order), scores unchanged."""
    order = sorted(
        enumerate(window), key=lambda item: (-(item[1][1] + weight * (item[1][2] or 0.0)), item[0])
    )
    return [(pid, score) for _, (pid, score, _) in order]


def calibrate_colour_weight(
    queries: Sequence[tuple[Window, Sequence[str]]], grid: Sequence[float] = COLOUR_WEIGHT_GRID
) -> ColourChoice:
    """The weight of ``grid`` whose replayed re-rank puts an expected product first most often
    (then in the top 10 most often, then the smaller weight). ``queries``: (window, expected
    product ids) per query. Raises CalibrationError below MIN_QUERIES windows."""
    windows = [(list(w), set(expected)) for w, expected in queries if w]
    if len(windows) < MIN_QUERIES:
        raise CalibrationError(
            f"the colour weight needs at least {MIN_QUERIES} auto photo queries with a colour window, "
            f"got {len(windows)}"
        )
    scored = []
    for weight in sorted({0.0, *(float(w) for w in grid)}):
        hits1 = hits10 = 0
        for window, expected in windows:
            ranked = [pid for pid, _ in replay_colour(window, weight)]
            hits1 += ranked[0] in expected
            hits10 += any(pid in expected for pid in ranked[:10])
        scored.append((hits1, hits10, -weight))
    n = len(windows)
    best = max(scored)
    off = next(item for item in scored if item[2] == 0.0)
    return ColourChoice(
        weight=-best[2] + 0.0, r1_off=off[0] / n, r1=best[0] / n, r10=best[1] / n, n_queries=n
    )


def calibrate_report(report: Any) -> Calibration:
    """Calibrate from an evaluation.EvalReport: the colour weight from its queries' colour windows
    (auto pipeline; skipped when too few have one), then the threshold from the first-result scores
    and R@1 at that weight. Raises CalibrationError as :func:`calibrate` does (nothing is stored then,
    the colour weight included)."""
    scored = [q for q in report.queries if q.error is None and getattr(q, "top_score", None) is not None]
    source = f"{report.query_set} ({report.n_queries} queries"
    source += f", pipeline {report.pipeline})" if report.pipeline else ")"
    choice: ColourChoice | None = None
    with contextlib.suppress(CalibrationError):  # no auto pipeline (or too few windows): threshold only
        choice = calibrate_colour_weight([(q.colour_window, q.expected) for q in scored])
    firsts = []
    for q in scored:
        if choice is not None and q.colour_window:
            pid, score = replay_colour(q.colour_window, choice.weight)[0]
            firsts.append((score, pid in q.expected))
        else:
            firsts.append((q.top_score, q.recall_at_1 > 0))
    calibration = calibrate([s for s, _ in firsts], [c for _, c in firsts], source=source)
    if choice is None:
        return calibration
    return dataclasses.replace(
        calibration,
        colour_weight=choice.weight,
        colour_r1_off=choice.r1_off,
        colour_r1=choice.r1,
        colour_queries=choice.n_queries,
    )


# --------------------------------------------------------------------------------------------------
# Stored with the index


def calibration_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / CALIBRATION_FILE


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("Ignoring unreadable calibration file %s: %s", path, exc)
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return {}
    return data


def save_calibration(data_dir: str | os.PathLike[str], model_id: str, calibration: Calibration) -> Path:
    """Store ``calibration`` for ``model_id`` in ``<data_dir>/calibration.json`` (other models' entries
    are kept); atomic (core.io: a unique temp file in the same folder, fsync, then one rename)."""
    path = calibration_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read(path) or {"format": FORMAT, "models": {}}
    data["format"] = FORMAT
    data["models"][model_id] = {k: _jsonable(v) for k, v in asdict(calibration).items()}
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
    return path


def load_calibration(data_dir: str | os.PathLike[str] | None, model_id: str) -> Calibration | None:
    """The stored calibration of ``model_id``, or None (no data dir, no file, no entry, bad entry)."""
    if data_dir is None:
        return None
    entry = _read(calibration_path(data_dir)).get("models", {}).get(model_id)
    if not isinstance(entry, dict):
        return None
    try:
        fields = {k: entry[k] for k in Calibration.__dataclass_fields__ if k in entry}
        calibration = Calibration(**fields)
        threshold = float(calibration.threshold)
        weight = None if calibration.colour_weight is None else float(calibration.colour_weight)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        return None
    if weight is not None and not (math.isfinite(weight) and 0.0 <= weight <= max(COLOUR_WEIGHT_GRID)):
        calibration = dataclasses.replace(calibration, colour_weight=None)  # a hand-edited file
    return calibration


def builtin_threshold(model_id: str) -> float:
    """Today's per-model defaults (no calibration): CLIP text-image matches score ~0.25-0.35, unrelated
    ones ~0.1-0.2, so 0.2 keeps real matches; image-only backbones score higher throughout (0.3).
    Random test models get 0 (off), since their scores mean nothing."""
    if model_id.startswith("test:"):
        return 0.0
    if model_id.startswith("timm:"):
        return 0.3
    return 0.2


def default_threshold(model_id: str, data_dir: str | os.PathLike[str] | None = None) -> float:
    """The calibrated threshold of ``model_id`` stored in ``data_dir``, else :func:`builtin_threshold`.
    Clamped to [0, 1] (the UI slider's range)."""
    calibration = load_calibration(data_dir, model_id)
    if calibration is None:
        return builtin_threshold(model_id)
    return min(1.0, max(0.0, float(calibration.threshold)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
