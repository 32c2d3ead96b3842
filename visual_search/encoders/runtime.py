"""Fast CPU inference: the image tower (and an open_clip text tower) exported to ONNX, run by ONNX Runtime.

Why: on a few CPU cores the PyTorch eager forward is most of a photo query. ONNX Runtime with dynamic
int8 quantization of the matrix multiplies runs ViT-B-32 several times faster at cosine 0.9998 to fp32
(figures, machine and command: bench/RESULTS.md "CPU inference runtime").

What gets quantized, and why:

- Only ``MatMul``/``Gemm`` (``op_types_to_quantize``), weights QInt8 per channel: the transformer layers of
  ViT/text towers are matrix multiplies, which is where the time goes.
- Convolutions stay fp32: quantizing EfficientNet-Lite0's convolutions dynamically (ConvInteger) on its
  real ImageNet weights gave cosine to fp32 min 0.60 / mean 0.86 over 20 catalog photos (0.34 with
  ``reduce_range``; ``per_channel`` did not help) and ran slower than fp32. A convnet's int8 file is
  therefore its fp32 graph (no MatMul left once the classifier is removed): cosine 1.0000.
- QUInt8 weights on ViT-B-32: same cosine but no fast kernel (slower than QInt8), so QInt8.

Quality guard at export time: the int8 model is compared with the torch fp32 model on calibration
inputs (sample-catalog photos when present, else synthetic patterns; fixed sentences for a text tower).
Below ``MIN_COSINE`` (0.99) the int8 file is refused with one warning and the fp32 ONNX file serves
instead, so a model whose activations do not quantize well never silently loses quality.

Model id: the runtime does **not** change the encoder's ``model_id``. Measured cosine to torch fp32:
ONNX fp32 1.00000 (EfficientNet-Lite0 real weights, ViT-B-32 random), int8 1.0000 on EfficientNet (its
convolutions stay fp32) and >= 0.9998 on ViT-B-32 (random weights), and the guard above holds every
deployed int8 tower to >= 0.99. At that distance the index built with one runtime answers queries made
with another with R@1/R@10 moving by at most 0.01 (tests/test_runtime.py), so an index built with torch
can be searched with ONNX and the other way round.

Cache: ``<cache>/<model slug>/<tower>-<weights hash>-<variant>.onnx`` plus a ``.json`` note, where the
weights hash is a sha256 over the model's tensors (so fine-tuned or replaced weights export again) and
the cache is ``cache_dir``/onnx, ``$VS_ONNX_CACHE`` or ``~/.cache/visual_search/onnx``. Files are written
to a temporary name and renamed (atomic); a file that ONNX Runtime cannot open is rebuilt with a warning.
Anything that fails on the way (onnx not installed, an operator the exporter does not know) leaves the
encoder on torch with one warning line.

Stale-weight guard: a session remembers the model object and its tensors' version counters; when the
weights change in place (training, ``load_state_dict``) or the model is in training mode, the encoder
runs torch again for those calls instead of serving embeddings of the old weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from visual_search.core.io import atomic_path

if TYPE_CHECKING:
    from visual_search.encoders.base import Encoder

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the export recipe changes: old cache files are then ignored
OPSET = 17
MIN_COSINE = 0.99
QUANTIZED_OPS = ("MatMul", "Gemm")
CALIBRATION_TEXTS = (
    "a photo of a red leather handbag",
    "blue running shoes",
    "wireless headphones on a white background",
    "a wooden chair",
    "stainless steel water bottle",
    "a striped cotton t-shirt",
)
SAMPLE_IMAGES = Path(__file__).resolve().parents[2] / "sample_catalog" / "images"

# How many exports/quantizations ran in this process, per (model_id, tower, variant): tests use it to
# prove a second load reuses the cache.
EXPORTS: Counter[tuple[str, str, str]] = Counter()
_LOCK = threading.Lock()


class RuntimeUnavailable(Exception):
    """The fast path cannot be built for this model; the caller stays on torch."""


# ------------------------------------------------------------------------------------------ sessions


def _threads() -> int:
    with contextlib.suppress(AttributeError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def session_options() -> Any:
    """The one ONNX Runtime configuration of this app (encoder towers and background removal alike)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between runs: the cores are shared with the engine's decode threads (indexing)
    # and torch's own threads, and spinning ORT workers starve them (measured under load: int8 batch-1
    # queries were markedly slower with spinning on).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def _versions(model: torch.nn.Module) -> int:
    """Sum of the tensors' in-place version counters: any optimizer step or load_state_dict bumps it."""
    total = 0
    try:
        for tensor in (*model.parameters(), *model.buffers()):
            total += tensor._version
    except RuntimeError:  # inference tensors have no version counter
        return -1
    return total


@dataclass
class OnnxTower:
    """One exported tower: an ONNX Runtime session plus what it was built from."""

    path: Path
    variant: str  # "fp32" or "int8"
    model: torch.nn.Module
    cosine: float | None = None  # min cosine to torch fp32 on the calibration inputs (int8 only)
    session: Any = field(default=None, repr=False)
    _version: int = 0

    def __post_init__(self) -> None:
        self._version = _versions(self.model)
        self._input = self.session.get_inputs()[0].name

    def fresh(self, model: torch.nn.Module) -> bool:
        """True while ``model`` is the exported object, in eval mode, with unchanged weights."""
        return model is self.model and not model.training and _versions(model) == self._version

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: inputs})[0]


# ------------------------------------------------------------------------------------------ cache


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir) / "onnx"
    env = os.environ.get("VS_ONNX_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "visual_search" / "onnx"


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over names, shapes, dtypes and bytes of every tensor (16 hex): new weights, new export."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def _slug(model_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60].strip("_.")
    return f"{readable}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def _atomic(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        write(tmp)


def _read_note(path: Path) -> dict[str, Any] | None:
    try:
        note = json.loads(path.read_text())
        return note if isinstance(note, dict) else None
    except (OSError, ValueError):
        return None


def _remove_stale(folder: Path, tower: str, keep: str) -> None:
    """Drop files of this tower exported from other weights (or by an older recipe)."""
    for old in folder.glob(f"{tower}-*"):
        if not old.name.startswith(keep):
            with contextlib.suppress(OSError):
                old.unlink()


# ------------------------------------------------------------------------------------------ export


class _Tower(torch.nn.Module):
    def __init__(
        self, model: torch.nn.Module, forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    ):
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.model, x)


def _export(module: torch.nn.Module, example: torch.Tensor, input_name: str, out: Path) -> None:
    import warnings

    try:
        import onnx  # noqa: F401 - the exporter and the quantizer need it
    except ImportError as exc:
        raise RuntimeUnavailable("the onnx package is not installed (pip install onnx)") from exc
    # Grad mode on: under no_grad nn.MultiheadAttention takes its fused fast path, an operator
    # (_native_multi_head_attention) the exporter does not know. Tracing records no gradients anyway.
    quiet = io.StringIO()  # the exporter prints the whole graph when it fails
    with (
        warnings.catch_warnings(),
        torch.inference_mode(False),
        torch.enable_grad(),
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
    ):
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings
        torch.onnx.export(
            module,
            (example,),
            str(out),
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles these towers
            opset_version=OPSET,
            input_names=[input_name],
            output_names=["features"],
            dynamic_axes={input_name: {0: "batch"}, "features": {0: "batch"}},
            do_constant_folding=True,
        )


def _quantize(source: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a "consider pre-processing" hint on root
    try:
        quantize_dynamic(
            str(source),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
    finally:
        root.setLevel(level)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def build_tower(
    model: torch.nn.Module,
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    calibration: torch.Tensor,
    *,
    model_id: str,
    tower: str,
    variant: str,
    input_name: str,
    cache_dir: str | os.PathLike | None = None,
    digest: str | None = None,
) -> OnnxTower:
    """Export (or reuse) one tower and open it. ``variant``: "fp32" or "int8" (falls back to fp32 below
    the quality guard). ``calibration``: a few real inputs, also the export example."""
    if variant not in ("fp32", "int8"):
        raise ValueError(f"unknown ONNX variant {variant!r}")
    folder = cache_root(cache_dir) / _slug(model_id)
    stem = f"{tower}-{digest or weights_digest(model)}-v{FORMAT_VERSION}"
    with _LOCK:
        _remove_stale(folder, tower, stem)
        fp32 = _ensure(
            folder / f"{stem}-fp32.onnx",
            model_id,
            tower,
            "fp32",
            lambda p: _export(_Tower(model, forward).eval(), calibration[:1], input_name, p),
        )
        if variant == "fp32":
            return OnnxTower(fp32[0], "fp32", model, session=fp32[1])
        int8_path = folder / f"{stem}-int8.onnx"
        note_path = int8_path.with_suffix(".json")
        note = _read_note(note_path) if int8_path.is_file() else None
        int8 = _ensure(int8_path, model_id, tower, "int8", lambda p: _quantize(fp32[0], p))
        if note is None or not isinstance(note.get("min_cosine"), float) or int8[2]:
            with torch.inference_mode():
                reference = forward(model, calibration).float().numpy()
            score = float(_cosines(reference, int8[1].run(None, {input_name: calibration.numpy()})[0]).min())
            note = {"model_id": model_id, "tower": tower, "min_cosine": score, "inputs": len(calibration)}
            _atomic(note_path, lambda p: p.write_text(json.dumps(note)))
        score = float(note["min_cosine"])
        if score < MIN_COSINE:
            log.warning(
                "int8 %s tower of %s stays at cosine %.4f to fp32 (< %.2f); using ONNX fp32 instead",
                tower,
                model_id,
                score,
                MIN_COSINE,
            )
            return OnnxTower(fp32[0], "fp32", model, session=fp32[1])
        return OnnxTower(int8_path, "int8", model, cosine=score, session=int8[1])


def _ensure(
    path: Path, model_id: str, tower: str, variant: str, write: Callable[[Path], None]
) -> tuple[Path, Any, bool]:
    """(path, session, rebuilt): open the cached file, or write it (again, when it will not open)."""
    if path.is_file():
        try:
            return path, _session(path), False
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt file: rebuild, never crash
            log.warning("ONNX cache file %s is unreadable (%s); rebuilding it", path.name, type(exc).__name__)
            with contextlib.suppress(OSError):
                path.unlink()
    log.info(
        "building %s (%s %s tower of %s): once per model and weights", path.name, variant, tower, model_id
    )
    try:
        _atomic(path, write)
    except RuntimeUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - unsupported operator, exporter bug, disk full
        raise RuntimeUnavailable(f"{type(exc).__name__}: {exc}".splitlines()[0][:200]) from exc
    EXPORTS[(model_id, tower, variant)] += 1
    return path, _session(path), True


# ------------------------------------------------------------------------------------------ encoders


def calibration_images(encoder: Encoder, n: int = 8) -> torch.Tensor:
    """Preprocessed pixels of up to ``n`` sample-catalog photos (synthetic patterns when absent)."""
    from PIL import Image

    images: list[Image.Image] = []
    if SAMPLE_IMAGES.is_dir():
        for path in sorted(SAMPLE_IMAGES.iterdir())[: n * 2]:
            with contextlib.suppress(Exception), Image.open(path) as im:
                images.append(im.convert("RGB"))
            if len(images) >= n:
                break
    rng = np.random.default_rng(0)
    while len(images) < max(2, min(n, 4)):
        base = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        images.append(Image.fromarray(base).resize((256, 256), Image.BILINEAR))
    return torch.stack([encoder.preprocess(im) for im in images]).cpu()


def accelerate(encoder: Encoder, runtime: str, cache_dir: str | os.PathLike | None = None) -> Encoder:
    """Attach ONNX towers to ``encoder`` for ``runtime`` ("onnx" or "onnx-int8"); on any failure keep
    torch and log one warning. Returns the encoder (``encoder.runtime`` says what it runs)."""
    if runtime == "torch":
        encoder.runtime = "torch"
        return encoder
    variant = {"onnx": "fp32", "onnx-int8": "int8"}.get(runtime)
    if variant is None:
        raise ValueError(f"unknown runtime {runtime!r}")
    if not str(encoder.device).startswith("cpu"):
        log.warning("runtime %s runs on the CPU only; %s stays on torch", runtime, encoder.device)
        encoder.runtime = "torch"
        return encoder
    towers: dict[str, OnnxTower] = {}
    try:
        digest = weights_digest(encoder.model)
        towers["image"] = build_tower(
            encoder.model,
            type(encoder).image_forward,
            calibration_images(encoder),
            model_id=encoder.model_id,
            tower="image",
            variant=variant,
            input_name="pixels",
            cache_dir=cache_dir,
            digest=digest,
        )
        if encoder.supports_text:
            tokens = encoder.tokenizer(list(CALIBRATION_TEXTS)).cpu()
            towers["text"] = build_tower(
                encoder.model,
                type(encoder).text_forward,
                tokens,
                model_id=encoder.model_id,
                tower="text",
                variant=variant,
                input_name="tokens",
                cache_dir=cache_dir,
                digest=digest,
            )
    except Exception as exc:  # noqa: BLE001 - any failure of the fast path leaves the exact one
        reason = exc if isinstance(exc, RuntimeUnavailable) else f"{type(exc).__name__}: {exc}"
        log.warning("ONNX runtime unavailable for %s (%s); using torch", encoder.model_id, str(reason)[:200])
        encoder.runtime = "torch"
        encoder.towers = {}
        return encoder
    encoder.towers = towers
    variants = {t.variant for t in towers.values()}
    encoder.runtime = (
        "onnx-int8" if variants == {"int8"} else "onnx" if variants == {"fp32"} else "onnx-mixed"
    )
    return encoder


def describe(towers: Sequence[OnnxTower]) -> str:
    return ", ".join(f"{t.path.name.split('-')[0]} {t.variant}" for t in towers)
