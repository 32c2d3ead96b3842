"""Background removal's fast path (real u2netp model, CPU, no network; no timing assertions).

The tuned session with this app's pre/post-processing must give the masks plain rembg gives (the guard:
IoU >= 0.95 on every real sample-catalog photo and SYNTHETIC shopper photo), must really be the tuned
one (the app's session options), and must fall back to rembg's own session with one warning when it
cannot be built.
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageFilter

from visual_search.core.errors import VisualSearchError
from visual_search.device import CPU_DEFAULT_BACKGROUND_RUNTIME, pick_background_runtime
from visual_search.images import background
from visual_search.images.background import MODEL_INPUT_SIDE, BackgroundRemover
from visual_search.images.load import load_image
from visual_search.training.augment import QUERY_KINDS, shopper_query

SAMPLES = Path(__file__).resolve().parents[1] / "sample_catalog" / "images"
PHOTOS = sorted(SAMPLES.iterdir())[::16][:6]  # a handful of different products, both sources
GUARD = 0.95  # mask IoU every photo must hold against plain rembg's fp32 320 px mask


SHOPPER_COUNT = 6


@functools.cache
def _shopper_photos(n: int = SHOPPER_COUNT) -> list[Image.Image]:
    """SYNTHETIC shopper photos (each of QUERY_KINDS in turn, seed 0) of catalog photos not in PHOTOS."""
    rest = [p for p in sorted(SAMPLES.iterdir()) if p not in PHOTOS][::9]
    rng = random.Random(0)
    return [
        shopper_query(
            QUERY_KINDS[i % len(QUERY_KINDS)],
            load_image(rest[i % len(rest)]),
            rng,
            distractor=load_image(rest[(i + 3) % len(rest)]),
            size=512,
        )
        for i in range(n)
    ]


def _old_mask(original: Image.Image, soft_small: Image.Image) -> Image.Image:
    """The mask the cut-out made before (PIL rank filters), for photos where an object is found."""
    binary = soft_small.point(lambda v: 255 if v >= 128 else 0)
    opened = binary.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    near = opened.filter(ImageFilter.MaxFilter(7))
    return ImageChops.multiply(soft_small, near).resize(original.size, Image.Resampling.BILINEAR)


def _iou(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a) >= 128, np.asarray(b) >= 128
    return float((x & y).sum() / max(1, (x | y).sum()))


@pytest.fixture(scope="module")
def removers(u2net_home: Path) -> dict[str, BackgroundRemover]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("U2NET_HOME", str(u2net_home))
        mp.delenv("VS_RUNTIME", raising=False)
        made = {"fast": BackgroundRemover("u2netp"), "plain": BackgroundRemover("u2netp", runtime="torch")}
        for remover in made.values():
            remover.session()  # loaded while U2NET_HOME points at the real model
    return made


def test_default_is_the_tuned_session_on_the_apps_options(removers: dict[str, BackgroundRemover]) -> None:
    fast, plain = removers["fast"], removers["plain"]
    assert CPU_DEFAULT_BACKGROUND_RUNTIME == "onnx"
    assert fast.runtime == "onnx" and plain.runtime == "rembg"
    options = fast.session().inner_session.get_session_options()
    assert options.intra_op_num_threads == background_cores()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert fast.session().inner_session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(Exception, match="allow_spinning"):  # rembg's own session: ORT's default (spins)
        plain.session().inner_session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning"
        )


def background_cores() -> int:
    from visual_search.encoders.runtime import session_options

    return session_options().intra_op_num_threads


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.stem)
def test_fast_masks_match_plain_rembg(photo: Path, removers: dict[str, BackgroundRemover]) -> None:
    image = load_image(photo)
    fast = removers["fast"].remove(image)
    # The reference: plain rembg's session on the same work copy, then the old PIL-filter clean-up.
    work = background._shrink(image, removers["plain"].work_side)
    soft = removers["plain"].session().predict(work)[0].convert("L")
    assert fast.mask.size == image.size
    if fast.bbox is None:  # no object: both must agree there is none
        assert removers["plain"].remove(image).bbox is None
        return
    reference = _old_mask(image, soft)
    assert _iou(fast.mask, reference) >= GUARD
    assert _iou(fast.mask, removers["plain"].remove(image).mask) >= GUARD


@pytest.mark.parametrize("index", range(SHOPPER_COUNT), ids=lambda i: f"{QUERY_KINDS[i % 3]}-{i}")
def test_fast_masks_hold_the_guard_on_shopper_photos(
    index: int, removers: dict[str, BackgroundRemover]
) -> None:
    photo = _shopper_photos()[index]
    fast, plain = removers["fast"].remove(photo), removers["plain"].remove(photo)
    assert (fast.bbox is None) == (plain.bbox is None)
    assert _iou(fast.mask, plain.mask) >= GUARD


def test_soft_mask_is_rembgs_numbers(removers: dict[str, BackgroundRemover]) -> None:
    """Same map as rembg's u2netp pre/post-processing (within one grey level)."""
    session = removers["fast"].session()
    assert session.inner_session.get_inputs()[0].shape == [1, 3, MODEL_INPUT_SIDE, MODEL_INPUT_SIDE]
    for path in PHOTOS[:3]:
        work = background._shrink(load_image(path), removers["fast"].work_side)
        feed = session.normalize(work, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320))
        pred = session.inner_session.run(None, feed)[0][0, 0].astype(np.float64)
        rembg_map = ((pred - pred.min()) / (pred.max() - pred.min()) * 255).astype(np.uint8)
        rembg_up = Image.fromarray(rembg_map, mode="L").resize(work.size, Image.Resampling.LANCZOS)
        mine = background._soft_mask(session.inner_session, work, MODEL_INPUT_SIDE)
        assert mine.size == rembg_up.size == work.size
        diff = np.abs(np.asarray(mine, dtype=int) - np.asarray(rembg_up, dtype=int))
        assert diff.max() <= 1, path.name
        # and what rembg's own predict returns for the work copy
        assert (
            np.abs(np.asarray(session.predict(work)[0], dtype=int) - np.asarray(mine, dtype=int)).max() <= 1
        )


def test_soft_mask_of_a_flat_prediction_is_empty() -> None:
    class Flat:
        """An ONNX Runtime session stand-in whose saliency map is constant (nothing salient)."""

        def get_inputs(self) -> list[object]:
            return [type("Input", (), {"name": "input.1"})()]

        def get_outputs(self) -> list[object]:
            return [type("Output", (), {"name": "d0"})()]

        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            assert names == ["d0"] and feed["input.1"].shape == (1, 3, 64, 64)
            assert feed["input.1"].dtype == np.float32
            return [np.full((1, 1, 64, 64), 0.5, np.float32)]

    mask = background._soft_mask(Flat(), Image.new("RGB", (90, 60), (40, 80, 120)), 64)
    assert mask.mode == "L" and mask.size == (90, 60)
    assert np.asarray(mask).max() == 0


def test_other_input_side_runs_the_rewritten_graph(u2net_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("U2NET_HOME", str(u2net_home))
    monkeypatch.delenv("VS_RUNTIME", raising=False)
    remover = BackgroundRemover("u2netp", input_side=256)
    assert remover.session().inner_session.get_inputs()[0].shape == [1, 3, 256, 256]
    image = load_image(PHOTOS[0])
    result = remover.remove(image)
    assert result.mask.size == image.size
    reference = BackgroundRemover("u2netp").remove(image)
    assert (result.bbox is None) == (reference.bbox is None)
    if result.bbox is not None:  # the same object, seen coarser
        assert _iou(result.mask, reference.mask) > 0.5
    with pytest.raises(ValueError, match="input_side"):
        BackgroundRemover("u2netp", input_side=8)


def test_dilation_is_what_pil_rank_filters_did() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        height, width = (int(v) for v in rng.integers(3, 90, 2))
        on = rng.random((height, width)) < rng.random()
        image = Image.fromarray(np.where(on, 255, 0).astype(np.uint8), mode="L")
        opened = image.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
        mine = background._dilate(~background._dilate(~on, 1), 1)
        assert np.array_equal(np.asarray(opened) >= 128, mine), trial
        dilated = np.asarray(image.filter(ImageFilter.MaxFilter(7))) >= 128
        assert np.array_equal(dilated, background._dilate(on, 3)), trial


def test_fallback_to_plain_rembg_with_one_warning(
    u2net_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import visual_search.encoders.runtime as runtime

    def broken() -> object:
        raise RuntimeError("no session options today")

    monkeypatch.setenv("U2NET_HOME", str(u2net_home))
    monkeypatch.setattr(runtime, "session_options", broken)
    remover = BackgroundRemover("u2netp", runtime="onnx")
    with caplog.at_level(logging.WARNING, logger=background.__name__):
        remover.session()
        remover.session()
        result = remover.remove(load_image(PHOTOS[0]))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "no session options today" in warnings[0].getMessage()
    assert "rembg's own session" in warnings[0].getMessage()
    assert remover.runtime == "rembg"
    assert result.mask.size == result.original.size


@pytest.mark.parametrize(
    ("requested", "device", "expected"),
    [
        ("auto", "cpu", "onnx"),
        (None, "cpu", "onnx"),
        ("torch", "cpu", "rembg"),
        ("onnx", "cpu", "onnx"),
        ("onnx-int8", "cpu", "onnx-int8"),
        ("onnx", "cuda", "rembg"),
        ("auto", "cuda:0", "rembg"),
    ],
)
def test_pick_background_runtime(
    requested: str | None, device: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VS_RUNTIME", raising=False)
    assert pick_background_runtime(requested, device) == expected


def test_pick_background_runtime_follows_vs_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VS_RUNTIME", "torch")
    assert pick_background_runtime(None) == "rembg"
    with pytest.raises(VisualSearchError, match="Unknown runtime 'fast'"):
        pick_background_runtime("fast")


def test_engine_passes_the_runtime_setting_and_status_shows_the_encoder_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visual_search.core.config import Settings
    from visual_search.engine import SearchEngine

    monkeypatch.delenv("VS_RUNTIME", raising=False)
    engine = SearchEngine.from_settings(
        Settings(model="test:tiny", device="cpu", data_dir=tmp_path, runtime="torch")
    )
    try:
        assert engine.background_remover.requested_runtime == "torch"
        assert engine.background_remover.device == "cpu"
        assert engine.status().runtime == "torch"
        monkeypatch.setattr(engine.encoder, "runtime", "onnx-int8")
        assert engine.status().runtime == "onnx-int8"
    finally:
        engine.close()
