"""Score threshold calibration: the separating score on hand-made lists, storage per model id beside
the index, the engine's default with and without a calibration, and ``evaluate --calibrate``'s writer."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from visual_search.cli.evaluate import calibrate_reports
from visual_search.core.config import Settings
from visual_search.engine import SearchEngine
from visual_search.evaluation import EvalReport, Latency, Metrics, QueryResult
from visual_search.evaluation.calibration import (
    CALIBRATION_FILE,
    Calibration,
    CalibrationError,
    builtin_threshold,
    calibrate,
    calibrate_colour_weight,
    calibrate_report,
    default_threshold,
    load_calibration,
    replay_colour,
    save_calibration,
)
from visual_search.query_views import COLOUR_WEIGHT


def _lists(right: list[float], wrong: list[float]) -> tuple[list[float], list[bool]]:
    return right + wrong, [True] * len(right) + [False] * len(wrong)


def test_perfectly_separated_scores_give_the_midpoint_of_the_gap() -> None:
    scores, correct = _lists([0.8, 0.85, 0.9, 0.7, 0.75], [0.4, 0.5, 0.55, 0.6, 0.3])
    cal = calibrate(scores, correct)
    assert cal.threshold == pytest.approx(0.65)
    assert (cal.youden_j, cal.precision, cal.recall, cal.false_positive_rate) == pytest.approx((1, 1, 1, 0))
    assert (cal.n_queries, cal.n_correct) == (10, 5)


def test_overlapping_scores_maximise_youdens_j() -> None:
    # t=0.675: TPR 3/4, FPR 0 -> J 0.75. t=0.45: TPR 1, FPR 2/6 -> J 0.67. t=0.625: TPR 3/4, FPR 1/6.
    scores, correct = _lists([0.9, 0.8, 0.7, 0.5], [0.6, 0.4, 0.3, 0.2, 0.1, 0.65])
    cal = calibrate(scores, correct)
    assert cal.threshold == pytest.approx(0.675)
    assert cal.youden_j == pytest.approx(0.75)
    assert cal.precision == pytest.approx(1.0) and cal.recall == pytest.approx(0.75)
    # the order of the queries does not matter
    assert calibrate(scores[::-1], correct[::-1]).threshold == cal.threshold


def test_a_tie_in_j_goes_to_the_lower_threshold() -> None:
    # t=0.8: TPR 1/2, FPR 0 -> J 0.5; t=0.6: TPR 1/2, FPR 1/2 -> 0; t=0.4: TPR 1, FPR 1/2 -> J 0.5
    scores, correct = _lists([0.9] * 3 + [0.5] * 3, [0.7] * 2 + [0.3] * 2)
    cal = calibrate(scores, correct)
    assert cal.youden_j == pytest.approx(0.5)
    assert cal.threshold == pytest.approx(0.4)  # hides fewer results than 0.8 for the same J


def test_what_cannot_be_calibrated_is_refused() -> None:
    with pytest.raises(CalibrationError, match="at least"):
        calibrate([0.9, 0.1], [True, False])
    with pytest.raises(CalibrationError, match="every first result was right"):
        calibrate([0.5 + i / 100 for i in range(12)], [True] * 12)
    with pytest.raises(CalibrationError, match="every first result was wrong"):
        calibrate([0.5 + i / 100 for i in range(12)], [False] * 12)
    with pytest.raises(ValueError):
        calibrate([0.1, 0.2], [True])


def _cal(threshold: float) -> Calibration:
    return Calibration(threshold, 0.8, 0.9, 0.85, 0.1, 40, 30, "shopper (40 queries)", "2026-01-01T00:00:00Z")


def test_stored_per_model_and_read_back(tmp_path: Path) -> None:
    save_calibration(tmp_path, "timm:efficientnet_lite0@file:base.pth#sha256:aaa", _cal(0.61))
    save_calibration(tmp_path, "timm:efficientnet_lite0@file:best.pt#sha256:bbb", _cal(0.72))
    assert load_calibration(tmp_path, "timm:efficientnet_lite0@file:base.pth#sha256:aaa") == _cal(0.61)
    assert default_threshold("timm:efficientnet_lite0@file:best.pt#sha256:bbb", tmp_path) == 0.72
    # re-calibrating one model keeps the other's entry
    save_calibration(tmp_path, "timm:efficientnet_lite0@file:best.pt#sha256:bbb", _cal(0.7))
    assert default_threshold("timm:efficientnet_lite0@file:base.pth#sha256:aaa", tmp_path) == 0.61
    assert default_threshold("timm:efficientnet_lite0@file:best.pt#sha256:bbb", tmp_path) == 0.7
    data = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert data["format"] == 1 and len(data["models"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILE]  # no temp file left behind


def test_fallback_when_absent_or_unreadable(tmp_path: Path) -> None:
    model = "timm:efficientnet_lite0@file:x.pth#sha256:ccc"
    assert load_calibration(tmp_path, model) is None
    assert default_threshold(model, tmp_path) == builtin_threshold(model) == 0.3
    assert default_threshold(model, None) == 0.3
    assert default_threshold("ViT-B-32@laion2b_s34b_b79k", tmp_path) == pytest.approx(0.2)
    assert default_threshold("test:tiny@random-seed0", tmp_path) == 0.0
    save_calibration(tmp_path, "another-model", _cal(0.9))
    assert default_threshold(model, tmp_path) == 0.3  # another model's calibration is not ours
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    assert default_threshold("another-model", tmp_path) == pytest.approx(0.2)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"format": 1, "models": {model: {"threshold": "x"}}}))
    assert default_threshold(model, tmp_path) == 0.3


def _report(model_id: str, pipeline: str | None, rows: list[tuple[float, bool]]) -> EvalReport:
    queries = [
        QueryResult(
            str(i),
            ("p",),
            "c",
            (),
            1 if ok else 3,
            float(ok),
            1.0,
            1.0,
            1.0 if ok else 1 / 3,
            1.0,
            1.0,
            1.0,
            1.0,
            top_score=score,
        )  # fmt: skip
        for i, (score, ok) in enumerate(rows)
    ]
    nan = math.nan
    return EvalReport(
        f"{model_id} [{pipeline}]", model_id, False, "shopper", True, len(queries), Metrics.of(queries), {},
        Latency(nan, nan, nan, nan, nan, nan), queries=queries, pipeline=pipeline,
    )  # fmt: skip


def test_calibrate_report_uses_first_scores_and_recall_at_1() -> None:
    rows = [(0.9, True), (0.8, True), (0.75, True), (0.7, True), (0.66, True)]
    rows += [(0.6, False), (0.5, False), (0.4, False), (0.62, False), (0.3, False)]
    cal = calibrate_report(_report("m", "auto", rows))
    assert cal.threshold == pytest.approx(0.64) and "pipeline auto" in cal.source


def test_evaluate_calibrate_stores_what_the_engine_then_uses(tmp_path: Path, tiny_encoder) -> None:
    good = [(0.9 - i / 100, True) for i in range(6)] + [(0.5 - i / 100, False) for i in range(6)]
    other = [(0.2, True)] * 12  # every answer right: nothing to calibrate for that model
    reports = [
        _report(tiny_encoder.model_id, "off", [(s + 0.05, ok) for s, ok in good]),
        _report(tiny_encoder.model_id, "auto", good),  # the default pipeline's row is used
        _report("timm:other", "auto", other),
    ]
    text = calibrate_reports(reports, tmp_path)
    assert "| 0.675 |" in text and "timm:other: not calibrated" in text
    engine = SearchEngine.from_settings(Settings(model="test:tiny", data_dir=tmp_path, device="cpu"))
    try:
        assert engine.encoder.model_id == tiny_encoder.model_id
        assert engine.default_threshold() == pytest.approx(0.675)
        assert engine.threshold_calibration().n_queries == 12
    finally:
        engine.close()
    fresh = tmp_path / "fresh"
    engine = SearchEngine.from_settings(Settings(model="test:tiny", data_dir=fresh, device="cpu"))
    try:
        assert engine.default_threshold() == 0.0 and engine.threshold_calibration() is None
    finally:
        engine.close()


# ----------------------------------------------------------------------------------- colour weight


def _windowed(rows: list[tuple[list[tuple[str, float, float | None]], str]]) -> EvalReport:
    """An auto-pipeline report whose queries carry colour windows (what the re-rank saw)."""
    report = _report("m", "auto", [(w[0][1], w[0][0] == expected) for w, expected in rows])
    report.queries = [
        dataclasses.replace(q, expected=(expected,), colour_window=tuple(window))
        for q, (window, expected) in zip(report.queries, rows, strict=True)
    ]
    return report


def test_colour_weight_is_chosen_by_replaying_the_re_rank() -> None:
    """Colour helps where the right product is a near miss of the right colour (needs w > 0.025)
    and misleads where a wrong product of the query's colour sits 0.10 lower (flips at w > 0.143):
    0.05 and 0.10 both get every query right, and the tie goes to the smaller weight."""
    helped = ([("a", 0.80, 0.1), ("b", 0.78, 0.9), ("c", 0.50, None)], "b")
    misled = ([("x", 0.80, 0.2), ("y", 0.70, 0.9)], "x")
    rows = [helped] * 6 + [misled] * 6
    choice = calibrate_colour_weight([(w, (e,)) for w, e in rows])
    assert choice.weight == 0.05 and choice.r1_off == 0.5 and choice.r1 == 1.0 and choice.n_queries == 12
    assert [p for p, _ in replay_colour(helped[0], 0.05)] == ["b", "a", "c"]
    assert [p for p, _ in replay_colour(misled[0], 0.3)] == ["y", "x"]  # too strong: the wrong colour wins
    # only misleading colour: the weight is 0 (off)
    assert calibrate_colour_weight([(w, (e,)) for w, e in [misled] * 10]).weight == 0.0


def test_threshold_follows_the_first_results_at_the_chosen_weight() -> None:
    helped = ([("a", 0.80, 0.1), ("b", 0.60, 0.9)], "b")  # needs w > 0.25: right first score 0.60
    hopeless = ([("z", 0.40, 0.5), ("q", 0.30, 0.5)], "nowhere")  # wrong at any weight, score 0.40
    cal = calibrate_report(_windowed([helped] * 6 + [hopeless] * 6))
    assert cal.colour_weight == 0.3 and cal.n_correct == 6 and cal.colour_queries == 12
    assert (cal.colour_r1_off, cal.colour_r1) == (0.0, 0.5)
    assert cal.threshold == pytest.approx(0.5)  # between 0.40 (wrong) and 0.60 (right at w = 0.3)


def test_too_few_windows_leave_the_colour_weight_uncalibrated() -> None:
    rows = [(0.9, True), (0.8, True), (0.75, True), (0.7, True), (0.66, True)]
    rows += [(0.6, False), (0.5, False), (0.4, False), (0.62, False), (0.3, False)]
    cal = calibrate_report(_report("m", "off", rows))  # no windows: modes off/on, engine.search
    assert cal.colour_weight is None and "colour" not in cal.summary()
    with pytest.raises(CalibrationError, match="at least 10"):
        calibrate_colour_weight([([("a", 0.8, 0.5)], ("a",))] * 9)


def test_engine_uses_the_calibrated_colour_weight_unless_the_operator_set_one(
    tmp_path: Path, tiny_encoder
) -> None:
    helped = ([("a", 0.80, 0.1), ("b", 0.60, 0.9)], "b")
    hopeless = ([("z", 0.40, 0.5), ("q", 0.30, 0.5)], "nowhere")
    report = _windowed([helped] * 6 + [hopeless] * 6)
    report.model_id = tiny_encoder.model_id
    text = calibrate_reports([report], tmp_path)
    assert "0.30 (R@1 0.000 -> 0.500, 12 queries)" in text
    engine = SearchEngine.from_settings(Settings(model="test:tiny", data_dir=tmp_path, device="cpu"))
    try:
        assert engine.colour_weight == 0.3
    finally:
        engine.close()
    explicit = SearchEngine.from_settings(
        Settings(model="test:tiny", data_dir=tmp_path, device="cpu", colour_weight=0.0)
    )
    try:
        assert explicit.colour_weight == 0.0  # VS_COLOUR_WEIGHT wins over the calibration
    finally:
        explicit.close()
    # a hand-edited weight out of range is ignored (the threshold still loads)
    path = tmp_path / CALIBRATION_FILE
    data = json.loads(path.read_text())
    data["models"][tiny_encoder.model_id]["colour_weight"] = 7.0
    path.write_text(json.dumps(data))
    assert load_calibration(tmp_path, tiny_encoder.model_id).colour_weight is None
    engine = SearchEngine.from_settings(Settings(model="test:tiny", data_dir=tmp_path, device="cpu"))
    try:
        assert engine.colour_weight == COLOUR_WEIGHT and engine.default_threshold() == pytest.approx(0.5)
    finally:
        engine.close()
