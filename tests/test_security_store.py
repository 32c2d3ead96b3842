"""Issue 7, finding 3: index metadata corruption.

The reproduced sequence was: an app on an empty data dir holds no lock; a CLI index fills the dir and
the app silently answers 0; an import in the app writes meta.json before its shard create fails;
afterwards ``info`` names the wrong model and searches crash; a model of the same dimension searches
another model's index unchecked. Each step has a test here (test:tiny model, CPU only, no network).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from visual_search.catalog import read_catalog
from visual_search.core.errors import ModelMismatchError, StoreUnavailableError
from visual_search.engine import SearchEngine
from visual_search.store import EDGE_SUBDIR, EdgeStore, open_store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_catalog" / "catalog.csv"


def _small_catalog(tmp_path: Path, n: int = 6) -> Path:
    catalog = read_catalog(SAMPLE)
    folder = tmp_path / "cat"
    (folder / "images").mkdir(parents=True)
    lines = ["product_id,image,title,category,price"]
    for product in catalog.products[:n]:
        src = Path(product.images[0].source)
        shutil.copy(src, folder / "images" / src.name)
        lines.append(
            f"{product.product_id},images/{src.name},{product.title},{product.category},{product.price}"
        )
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    return folder / "catalog.csv"


def _cli(*args: str, data_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "VS_MODEL": "test:tiny", "VS_DATA_DIR": str(data_dir), "VS_DEVICE": "cpu"}
    env.pop("QDRANT_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "visual_search", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(out: subprocess.CompletedProcess, data_dir: Path) -> str:
    """The CLI's answer to a refused command: exit 2, exactly one stderr line, no traceback or path."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in out.stderr and "panicked" not in out.stderr
    assert str(data_dir) not in out.stderr  # no server path in an error
    return lines[0]


class OtherModel:
    """Wraps an encoder under another model id (same vectors, same dimension unless ``dim`` given):
    the same-dimension case that indexing-time checks alone never caught."""

    def __init__(self, inner: Any, model_id: str = "test:other-model", dim: int | None = None) -> None:
        self.inner = inner
        self.model_id = model_id
        self.dim = inner.dim if dim is None else dim
        self.device = inner.device
        self.supports_text = inner.supports_text

    def _fit(self, vectors: np.ndarray) -> np.ndarray:
        out = np.zeros((len(vectors), self.dim), dtype=np.float32)
        n = min(self.dim, vectors.shape[1])
        out[:, :n] = vectors[:, :n]
        return out

    def embed_images(self, images: Any, batch_size: int = 32) -> np.ndarray:
        return self._fit(self.inner.embed_images(images, batch_size=batch_size))

    def embed_texts(self, texts: Any, batch_size: int = 32) -> np.ndarray:
        return self._fit(self.inner.embed_texts(texts, batch_size=batch_size))


# ---------------------------------------------------------------------------------------------
# The data-dir lock
# ---------------------------------------------------------------------------------------------


def test_app_on_an_empty_data_dir_holds_the_lock_and_a_cli_index_is_refused(tiny_encoder, tmp_path: Path):
    data = tmp_path / "data"
    csv = _small_catalog(tmp_path)
    app = SearchEngine(tiny_encoder, open_store(data, None, None))  # what app.py does at start
    assert app.store.count() == 0  # empty: before the fix this held no lock at all

    out = _cli("index", str(csv), "--json", data_dir=data)
    line = _one_error_line(out, data)
    assert line == (
        f"error: The index at this data dir is in use by another process (pid {os.getpid()}). "
        "Stop it first, or pass another --data-dir."
    )
    # Read-only commands take the same lock (qdrant-edge locks the shard on load anyway).
    assert _one_error_line(_cli("info", data_dir=data), data) == line

    # The app's own import is untouched by the refused run and works.
    report = app.index_catalog(csv)
    assert report.embedded == 6 and app.store.count() == 6
    app.close()

    out = _cli("info", "--json", data_dir=data)  # lock released on close
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["store"]["model_id"] == tiny_encoder.model_id and status["store"]["points"] == 6


def test_a_second_store_in_the_same_process_is_refused(tmp_path: Path):
    first = EdgeStore(tmp_path / "s")
    with pytest.raises(StoreUnavailableError, match="in use by this process already") as err:
        EdgeStore(tmp_path / "s")
    assert str(tmp_path) not in str(err.value)
    first.close()
    EdgeStore(tmp_path / "s").close()  # free again after close


def test_a_store_dropped_without_close_releases_the_lock(tmp_path: Path):
    EdgeStore(tmp_path / "s")  # garbage at once: the lock must not outlive the object
    EdgeStore(tmp_path / "s").close()


def test_kill_9_of_the_holder_never_leaves_a_stale_lock(tmp_path: Path):
    data = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from visual_search.store import open_store; "
            "s = open_store(sys.argv[1], None, None); print('open', flush=True); time.sleep(60)",
            str(data),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreUnavailableError, match=rf"in use by another process \(pid {holder.pid}\)"):
            open_store(data, None, None)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (data / EDGE_SUBDIR / "lock").exists()  # the file stays; the kernel dropped the flock
    open_store(data, None, None).close()


# ---------------------------------------------------------------------------------------------
# meta.json only after the shard exists
# ---------------------------------------------------------------------------------------------


class _FailingCreate:
    """Stands in for the qdrant_edge module with an EdgeShard.create that leaves half a shard and
    fails, like a full disk or a shard another process created first."""

    def __init__(self, real: Any) -> None:
        self._real = real
        real_shard = real.EdgeShard

        class EdgeShard:
            load = staticmethod(real_shard.load)

            @staticmethod
            def create(path: str, config: Any) -> Any:
                Path(path).mkdir(parents=True, exist_ok=True)
                (Path(path) / "half-written").write_text("x")
                raise RuntimeError(f"Service internal error: {path}: No space left on device")

        self.EdgeShard = EdgeShard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_failed_create_leaves_the_previous_meta_json_untouched(tmp_path: Path):
    directory = tmp_path / "s"
    directory.mkdir()
    old_meta = json.dumps({"model_id": "model-a", "dim": 16, "vector": "image"}, indent=2).encode()
    (directory / "meta.json").write_bytes(old_meta)  # meta of an index whose shard was moved aside

    store = EdgeStore(directory)
    store._qe = _FailingCreate(store._qe)
    with pytest.raises(StoreUnavailableError, match="previous index metadata was kept") as err:
        store.ensure_collection(32, "model-b")
    assert str(tmp_path) not in str(err.value)  # no server path in the message
    assert (directory / "meta.json").read_bytes() == old_meta
    assert not (directory / "shard").exists()  # the half-made shard was removed
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []
    assert store.info().model_id is None  # nothing was created, nothing is claimed
    store.close()

    with EdgeStore(directory) as again:  # a later create works and only then writes meta.json
        again.ensure_collection(32, "model-b")
        meta = json.loads((directory / "meta.json").read_text())
        assert (meta["model_id"], meta["dim"]) == ("model-b", 32)


def test_a_failed_create_on_an_empty_dir_writes_no_meta(tmp_path: Path):
    store = EdgeStore(tmp_path / "s")
    store._qe = _FailingCreate(store._qe)
    with pytest.raises(StoreUnavailableError):
        store.ensure_collection(16, "model-a")
    assert not (tmp_path / "s" / "meta.json").exists()
    store.close()


def test_info_is_truthful_after_a_failed_import_with_another_model(tiny_encoder, tmp_path: Path):
    data = tmp_path / "data"
    csv = _small_catalog(tmp_path)
    with open_store(data, None, None) as store:
        SearchEngine(tiny_encoder, store).index_catalog(csv)
    meta_path = data / EDGE_SUBDIR / "meta.json"
    before = meta_path.read_bytes()

    for other in (OtherModel(tiny_encoder), OtherModel(tiny_encoder, "test:wide", dim=48)):
        with open_store(data, None, None) as store:
            with pytest.raises(ModelMismatchError, match="built with model test:tiny"):
                SearchEngine(other, store).index_catalog(csv)
        assert meta_path.read_bytes() == before

    out = _cli("info", "--json", data_dir=data)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert (status["store"]["model_id"], status["store"]["dim"]) == (tiny_encoder.model_id, tiny_encoder.dim)
    assert status["store"]["points"] == 6 and status["products"] == 6
    out = _cli("search", "--text", "mug", "--top-k", "3", "--json", data_dir=data)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["results"]) == 3


# ---------------------------------------------------------------------------------------------
# Every query path checks the model
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_index(tiny_encoder, tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    csv = _small_catalog(tmp_path)
    with open_store(data, None, None) as store:
        SearchEngine(tiny_encoder, store).index_catalog(csv)
    return data, csv


@pytest.mark.parametrize("dim", [None, 48], ids=["same-dimension", "other-dimension"])
def test_every_query_path_refuses_an_index_of_another_model(tiny_encoder, tiny_index, dim):
    data, csv = tiny_index
    photo = Image.open(read_catalog(csv).products[0].images[0].source).convert("RGB")
    pid = read_catalog(csv).products[1].product_id
    other = OtherModel(tiny_encoder, "test:other-model", dim=dim)
    with open_store(data, None, None) as store:
        engine = SearchEngine(other, store)
        queries = {
            "image": lambda: engine.search(image=photo),
            "text": lambda: engine.search(text="a mug"),
            "image+text": lambda: engine.search(image=photo, text="a mug", text_weight=0.3),
            "search_by_text": lambda: engine.search_by_text("a mug"),
            "more-like-this": lambda: engine.more_like_this(pid),
            "recommend": lambda: engine.recommend([pid], []),
            "recommend-query-vector": lambda: engine.recommend(
                [], [pid], query_vector=np.ones(other.dim, dtype=np.float32)
            ),
        }
        for name, query in queries.items():
            with pytest.raises(ModelMismatchError) as err:
                query()
            message = str(err.value)
            assert "\n" not in message, name
            assert message.startswith(
                f"This index was built with model {tiny_encoder.model_id} (dim {tiny_encoder.dim}); "
                f"this run uses test:other-model (dim {other.dim})."
            ), (name, message)
        status = engine.status()  # info still works and names the index's model, not the encoder's
        assert status.store.model_id == tiny_encoder.model_id and status.model_id == "test:other-model"

        same = SearchEngine(tiny_encoder, store)  # the right model on the same store still answers
        assert len(same.search(image=photo, top_k=3).results) == 3
        assert same.more_like_this(pid, top_k=2).results


def test_cli_info_points_out_a_model_mismatch(tiny_index, tiny_encoder, monkeypatch, capsys):
    from visual_search.cli import main as cli

    data, _ = tiny_index
    monkeypatch.setattr(
        SearchEngine,
        "from_settings",
        classmethod(lambda cls, s: cls(OtherModel(tiny_encoder), open_store(s.data_dir, None, None))),
    )
    monkeypatch.setenv("VS_DATA_DIR", str(data))
    # --open-index: the path that builds the engine (patched above); tests/test_info.py checks the
    # note on the summary path, which names the configured model without loading it.
    assert cli.main(["info", "--open-index"]) == 0
    out = capsys.readouterr().out
    assert f"built by {tiny_encoder.model_id}" in out
    assert (
        f"searches are refused: the index was built by {tiny_encoder.model_id}, not test:other-model" in out
    )
    assert cli.main(["search", "--text", "mug"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: This index was built with model {tiny_encoder.model_id}"
    )


def test_an_unreadable_meta_json_error_names_no_path_and_frees_the_lock(tmp_path: Path):
    with EdgeStore(tmp_path / "s") as s:
        s.ensure_collection(16, "model-a")
    good = (tmp_path / "s" / "meta.json").read_text()
    (tmp_path / "s" / "meta.json").write_text("{not json")
    with pytest.raises(StoreUnavailableError, match="meta.json") as err:
        EdgeStore(tmp_path / "s")
    assert str(tmp_path) not in str(err.value)
    (tmp_path / "s" / "meta.json").write_text(good)
    with EdgeStore(tmp_path / "s") as again:  # the failed open did not keep the directory locked
        assert again.info().model_id == "model-a"
