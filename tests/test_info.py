"""``info`` from the summary saved with the index: no shard load, no lock, no model weights, and
truthful: a write since (or no summary) sends it back to the index, and it says which source answered."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visual_search import stats
from visual_search.cli import info as info_cli
from visual_search.cli import main as cli
from visual_search.core.conditions import AnyOf
from visual_search.core.errors import StoreUnavailableError
from visual_search.core.types import IndexPoint
from visual_search.encoders import create_encoder
from visual_search.encoders import registry as encoder_registry
from visual_search.encoders.identity import model_identity
from visual_search.encoders.weights import file_id
from visual_search.engine import SearchEngine
from visual_search.store import EDGE_SUBDIR, EdgeStore, open_store, saved_index

# What `info --json` printed before it had a second source; it now adds "source".
STATUS_FIELDS = {"model_id", "device", "supports_text", "store", "products", "last_indexed", "runtime"}


@pytest.fixture()
def data_dir(tmp_path: Path, tiny_encoder) -> Path:
    """Four products (one with two photos) indexed with test:tiny; indexing saved the summary."""
    photos = tmp_path / "img"
    photos.mkdir()
    rows = ["product_id,image,title,category,price"]
    for i, colour in enumerate(("red", "green", "blue", "white")):
        Image.new("RGB", (64, 64), colour).save(photos / f"{i}.png")
        rows.append(f"p{i},{photos / f'{i}.png'},{colour} thing,cat{i % 2},{10 * (i + 1)}")
    Image.new("RGB", (64, 64), "black").save(photos / "extra.png")
    rows.append(f"p0,{photos / 'extra.png'},red thing,cat0,10")
    (tmp_path / "catalog.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    with open_store(data, None, None) as store:
        SearchEngine(tiny_encoder, store).index_catalog(tmp_path / "catalog.csv")
    return data


@pytest.fixture()
def env(monkeypatch, data_dir: Path) -> Path:
    monkeypatch.setenv("VS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("VS_MODEL", "test:tiny")
    monkeypatch.setenv("VS_DEVICE", "cpu")
    monkeypatch.setenv("VS_RUNTIME", "torch")  # no ONNX export in the --open-index runs
    monkeypatch.delenv("QDRANT_URL", raising=False)
    return data_dir


def _info(capsys, *args: str) -> dict:
    assert cli.main(["info", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


class _Opened(Exception):
    pass


def _forbid_opening(monkeypatch) -> None:
    """The store's open and the model's build both raise: the summary path must need neither."""

    def refuse(*args, **kwargs):
        raise _Opened("opened")

    monkeypatch.setattr(EdgeStore, "__init__", refuse)
    monkeypatch.setattr(SearchEngine, "from_settings", classmethod(refuse))
    monkeypatch.setattr(encoder_registry, "_create", refuse)


def test_info_answers_from_the_summary_without_opening_the_store_or_loading_the_model(
    env: Path, capsys, monkeypatch
):
    from_index = _info(capsys, "--open-index")
    assert from_index["source"] == "index"
    assert from_index["products"] == 4 and from_index["store"]["points"] == 5

    _forbid_opening(monkeypatch)
    fast = _info(capsys)
    assert fast["source"] == "summary"
    assert set(fast) == STATUS_FIELDS | {"source"} == set(from_index)
    assert {k: v for k, v in fast.items() if k != "source"} == {
        k: v for k, v in from_index.items() if k != "source"
    }
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "4 products, 5 images, built by test:tiny@random-seed0" in text
    assert "source:    the summary saved with the index" in text and "note:" not in text
    with pytest.raises(_Opened):  # the forced path does open the store
        cli.main(["info", "--open-index"])


def test_info_falls_back_to_the_index_after_a_write(env: Path, capsys):
    with open_store(env, None, None) as store:
        hits, _ = store.page(1, where=[stats.FIRST_IMAGE, AnyOf("product_id", ("p1",))])
        store.delete([hits[0].id])  # a write: the saved summary is gone before it lands
    assert saved_index(env) is not None and saved_index(env).summary is None
    status = _info(capsys)
    assert status["source"] == "index"
    assert status["products"] == 3 and status["store"]["points"] == 4
    assert cli.main(["info"]) == 0
    assert "source:    the index (opened" in capsys.readouterr().out


def test_info_from_a_summary_from_another_version_counts_in_the_index(env: Path, capsys):
    meta_path = env / EDGE_SUBDIR / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["summary"] = {"categories": {}}  # no counts in it
    meta_path.write_text(json.dumps(meta))
    status = _info(capsys)
    assert status["source"] == "index" and status["products"] == 4


def test_info_works_while_another_handle_holds_the_lock(env: Path, capsys):
    app = open_store(env, None, None)  # what a running app holds: the data-dir lock and the shard
    try:
        status = _info(capsys)
        assert status["source"] == "summary" and status["products"] == 4
        assert status["store"]["model_id"] == "test:tiny@random-seed0"
        # No current summary (the app is writing): the index is needed, and the lock refuses it.
        app.delete(["00000000-0000-0000-0000-000000000000"])
        with pytest.raises(StoreUnavailableError, match="in use by this process already") as refused:
            info_cli.run(cli.build_parser().parse_args(["info"]), _settings())
        assert str(refused.value).endswith(info_cli.CHANGED_SINCE_SUMMARY)
    finally:
        app.close()
    assert _info(capsys)["source"] == "index"  # the lock is free again


def _settings():
    from visual_search.core.config import Settings

    return Settings.from_args(cli.build_parser().parse_args(["info"]))


def test_info_from_the_summary_still_notes_a_model_mismatch_without_loading_it(
    env: Path, capsys, monkeypatch, tmp_path: Path
):
    checkpoint = tmp_path / "finetuned.pt"
    checkpoint.write_bytes(b"not a checkpoint: info must not load it")
    monkeypatch.setenv("VS_MODEL", f"test:tiny@{checkpoint}")
    _forbid_opening(monkeypatch)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    other = f"test:tiny@{file_id(checkpoint)}"
    assert f"model:     {other} (text search: yes)" in out
    assert (
        f"note:      searches are refused: the index was built by test:tiny@random-seed0, not {other}" in out
    )


def test_a_remote_store_has_no_saved_index(monkeypatch, tmp_path: Path):
    """No saved summary on a server: info takes the index path as before, without looking for meta.json."""
    import visual_search.store as store_package

    monkeypatch.setattr(store_package, "read_saved_meta", lambda *a: pytest.fail("meta.json read for remote"))
    assert saved_index(tmp_path, "http://127.0.0.1:1") is None


def test_meta_is_read_whole_while_it_is_rewritten(tmp_path: Path):
    """meta.json is replaced by rename: a reader racing the writer sees one whole version each time."""
    store = EdgeStore(tmp_path / "d" / EDGE_SUBDIR)
    store.ensure_collection(8, "m")
    view = stats.CatalogStats(products=6, images=9, categories={f"c{i}": i for i in range(500)})
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            store.save_summary(view.to_dict(), store.generation)
            store._changed()  # what every write does first: drop the summary

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen = set()
    try:
        reads = 0
        deadline = time.monotonic() + 60  # a bound on a stuck writer, not a timing assertion
        while (reads < 300 or len(seen) < 2) and time.monotonic() < deadline:
            reads += 1
            saved = saved_index(tmp_path / "d")
            assert saved is not None and saved.model_id == "m" and saved.dim == 8
            assert saved.summary is None or saved.summary["products"] == 6
            seen.add(saved.summary is None)
    finally:
        stop.set()
        writer.join()
        store.close()
    assert seen == {True, False}  # both versions were read, mid-rewrite


def test_no_index_yet_is_no_saved_index(tmp_path: Path):
    assert saved_index(tmp_path) is None
    store = EdgeStore(tmp_path / EDGE_SUBDIR)  # opened, nothing created
    store.close()
    assert saved_index(tmp_path) is None


# ---------------------------------------------------------------- model ids without the weights


def test_model_identity_matches_the_loaded_encoders(tiny_encoder, tmp_path: Path, efficientnet_weights):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_encoder.model.state_dict(), checkpoint)
    for spec in ("test:tiny", f"test:tiny@{checkpoint}", f"timm:efficientnet_lite0@{efficientnet_weights}"):
        identity = model_identity(spec)
        encoder = create_encoder(spec, device="cpu")
        assert identity is not None and identity.model_id == encoder.model_id, spec
        assert identity.supports_text == encoder.supports_text, spec


def test_model_identity_of_specs_whose_weights_are_not_here(tmp_path: Path):
    assert model_identity("ViT-B-32").model_id == "ViT-B-32@laion2b_s34b_b79k"  # type: ignore[union-attr]
    assert model_identity("ViT-B-32@openai").model_id == "ViT-B-32@openai"  # type: ignore[union-attr]
    weights = tmp_path / "ft.safetensors"
    weights.write_bytes(b"x")
    assert model_identity(f"ViT-B-32@{weights}").model_id == f"ViT-B-32@{file_id(weights)}"  # type: ignore[union-attr]
    assert model_identity("hf-hub:org/repo/").model_id == "hf-hub:org/repo"  # type: ignore[union-attr]
    folder = tmp_path / "mydir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").write_bytes(b"y")
    expected = f"local-dir:mydir@{file_id(folder / 'open_clip_model.safetensors')}"
    assert model_identity(f"local-dir:{folder}").model_id == expected  # type: ignore[union-attr]
    # Only loading tells (a timm pretrained tag) or cannot load: the caller loads and gets the error.
    for spec in ("timm:efficientnet_lite0", "ViT-B-32@no_such_tag", "NoSuchArch", "test:huge", ""):
        assert model_identity(spec) is None, spec


# ---------------------------------------------------------------- a fresh process: no torch


def test_info_in_another_process_beside_the_app_imports_neither_torch_nor_open_clip(tmp_path: Path):
    """A running app holds the lock; ``info`` answers anyway, at the cost of an interpreter start
    and a JSON read (torch alone takes seconds to import)."""
    import subprocess
    import sys

    model_id = "ViT-B-32@laion2b_s34b_b79k"  # what --model ViT-B-32 resolves to (open_clip's tag table)
    app = open_store(tmp_path, None, None)  # held open (lock and shard) while the other process reads
    app.ensure_collection(8, model_id)
    app.upsert(
        [IndexPoint("00000000-0000-0000-0000-000000000001", np.ones(8, np.float32), {"image_index": 0})]
    )
    stats.catalog_view(app)
    code = (
        "import json, sys\n"
        "from visual_search.cli.main import main\n"
        f"assert main(['info', '--json', '--data-dir', {str(tmp_path)!r}, '--model', 'ViT-B-32']) == 0\n"
        "print(json.dumps(sorted(m for m in ('torch', 'open_clip', 'timm', 'qdrant_edge') if m in sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VS_", "QDRANT"))}
    env["VS_DEVICE"] = "cpu"  # "auto" asks torch when a GPU driver is present
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
        )
    finally:
        app.close()
    assert done.returncode == 0, done.stderr
    status_text, imported = done.stdout.rsplit("\n", 2)[0], json.loads(done.stdout.splitlines()[-1])
    status = json.loads(status_text)
    assert status["source"] == "summary" and status["model_id"] == status["store"]["model_id"] == model_id
    assert status["products"] == 1 and status["device"] == "cpu"
    assert imported == []


def test_auto_device_is_cpu_without_torch_only_when_no_gpu_can_be_there(monkeypatch, tmp_path: Path):
    from visual_search import device

    def bus(*vendors: str) -> str:
        folder = tmp_path / f"pci{len(list(tmp_path.iterdir()))}"
        for i, vendor in enumerate(vendors):
            (folder / f"0000:00:0{i}.0").mkdir(parents=True)
            (folder / f"0000:00:0{i}.0" / "vendor").write_text(vendor + "\n")
        return str(folder)

    monkeypatch.setattr(device.sys, "platform", "linux")
    monkeypatch.setattr(device.os.path, "exists", lambda path: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what torch would say on a GPU machine
    monkeypatch.setattr(device, "PCI_DEVICES", bus("0x8086", "0x1af4"))  # a CPU-only VM
    assert not device.gpu_may_be_present() and device.pick_device("auto") == "cpu"
    # Any trace of a GPU (a PCI device whose driver may load on first use, a driver node) or an
    # unreadable bus: torch decides, as before.
    for pci in (bus("0x8086", "0x10de"), bus("0x1002"), str(tmp_path / "no-such-bus")):
        monkeypatch.setattr(device, "PCI_DEVICES", pci)
        assert device.gpu_may_be_present() and device.pick_device("auto") == "cuda", pci
    monkeypatch.setattr(device, "PCI_DEVICES", bus("0x8086"))
    monkeypatch.setattr(device.os.path, "exists", lambda path: path == "/dev/nvidiactl")
    assert device.pick_device("auto") == "cuda"
    assert device.pick_device("cpu") == "cpu"
