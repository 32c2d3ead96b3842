"""Cut the product out of its background (rembg), optionally, before embedding a photo.

The model (default ``u2netp``) is a file under ``~/.u2net``; when it is missing the app says so once and
searches the whole photo instead (:class:`BackgroundRemovalUnavailable`). Nothing here downloads it.

Speed (bench/RESULTS.md "Background removal"): the ONNX Runtime session gets this app's options
(``visual_search.encoders.runtime.session_options``: threads = cores, graph optimisation ALL, no spinning;
rembg's default spins, which starves everything else on a shared 2-core machine); on that session the
pre/post-processing is this module's (:func:`_soft_mask`: rembg's numbers in float32 where rembg uses
float64; the same masks, a few ms less), and the mask clean-up uses
separable numpy dilation instead of PIL's rank filters. The model's forward pass at
:data:`MODEL_INPUT_SIDE` is nearly all that is left. Which session runs is picked in
``visual_search.device.pick_background_runtime``; when the tuned session cannot be built, rembg's own
serves (its own pre/post-processing), with one warning.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from visual_search.core.errors import ImageError
from visual_search.images.load import _WHITE, _check_pixels, _shrink, to_rgb
from visual_search.images.messages import reason

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_INPUT_SIDE",
    "REMBG_WORK_SIDE",
    "BackgroundRemoval",
    "BackgroundRemovalUnavailable",
    "BackgroundRemover",
    "model_file_candidates",
]

REMBG_WORK_SIDE = 640
"""The model looks at MODEL_INPUT_SIDE anyway; a 640 px copy keeps resizing and mask clean-up cheap."""

MODEL_INPUT_SIDE = 320
"""Side of the square u2netp sees (rembg's, and the one its ONNX graph is fixed at). The network is fully
convolutional and other sides run (the graph's input dims are rewritten), ~pixels cheaper, but every
smaller side measured (304, 288, 256) failed the mask guard (IoU >= 0.95 to the 320 mask on every photo;
on shopper photos min ~0.3, mean ~0.87-0.89: bench/RESULTS.md "Background removal"), so 320 stays."""

_MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)  # rembg's u2netp normalisation (ImageNet)
_STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)
_U2NET_FAMILY = frozenset({"u2netp", "u2net", "u2net_human_seg", "silueta"})
"""rembg models with u2netp's pre/post-processing (one saliency map, 320 square): :func:`_soft_mask` serves them."""


class BackgroundRemovalUnavailable(ImageError):
    """The background-removal model cannot be loaded; callers search the whole photo instead."""


@dataclass
class BackgroundRemoval:
    """What background removal did to one photo, kept so the UI can show it.

    ``cleaned`` is what gets embedded: the object cut out (soft edges kept), cropped to its box
    with a margin and centred on a white square. Square matters: CLIP's preprocessing centre-crops
    to a square, which would cut the top and bottom off a tall, tightly cropped object.
    """

    original: Image.Image  # the input, RGB
    cleaned: Image.Image  # what is searched (the original itself when no object was found)
    mask: Image.Image  # L, size of original, 255 = kept
    bbox: tuple[int, int, int, int] | None  # object box in original pixels (x0, y0, x1, y1)
    removed_fraction: float  # share of the original's pixels removed as background
    note: str = ""  # for people, e.g. why the whole photo was searched
    seconds: float = 0.0  # time taken, for logs and the UI's "how long did that take"

    def preview(self, gap: int = 8) -> Image.Image:
        """Side by side: left the photo with the removed part washed out over a checkerboard and
        the object's box outlined, right what was searched (fitted into the same panel size)."""
        width, height = self.original.size
        canvas = Image.new("RGB", (2 * width + gap, height), (200, 200, 200))
        if self.bbox is None:
            left = self.original
        else:
            faded = Image.blend(self.original, _checkerboard(self.original.size), 0.7)
            left = Image.composite(self.original, faded, self.mask)
            ImageDraw.Draw(left).rectangle(_inclusive(self.bbox), outline=(255, 64, 0), width=2)
        canvas.paste(left, (0, 0))
        right = Image.new("RGB", (width, height), _WHITE)
        searched = self.cleaned.resize(
            _fit_inside(self.cleaned.size, (width, height)), Image.Resampling.LANCZOS
        )
        right.paste(searched, ((width - searched.width) // 2, (height - searched.height) // 2))
        canvas.paste(right, (width + gap, 0))
        return canvas


class BackgroundRemover:
    """Cuts the main object out of a photo with rembg; one model session, created on first use.

    Never downloads: rembg would otherwise fetch the model from GitHub on first use and a
    machine without internet would hang there. The session is shared by all threads (onnxruntime
    sessions are thread-safe for inference), so only its creation is guarded by a lock.
    """

    def __init__(
        self,
        model_name: str = "u2netp",
        *,
        work_side: int = REMBG_WORK_SIDE,
        input_side: int = MODEL_INPUT_SIDE,
        runtime: str | None = None,
        device: str = "cpu",
    ) -> None:
        """``runtime``: the app's runtime setting (torch, onnx, onnx-int8, auto/None), mapped onto a
        background-removal session by ``visual_search.device.pick_background_runtime`` at first use.
        ``input_side``: the square the model sees on the tuned session (rembg's own always uses 320)."""
        if input_side < 32:
            raise ValueError(f"input_side must be at least 32 pixels, not {input_side}")
        self.model_name = model_name
        self.work_side = work_side
        self.input_side = input_side
        self.requested_runtime = runtime
        self.device = device
        self.runtime: str | None = None  # what runs once loaded: "rembg", "onnx" (None: not loaded yet)
        self._session: Any = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        """True when the model is loaded or its file is on disk (cheap: no import, no session).

        A corrupt file still reads as available here; :meth:`session` is the real test.
        """
        if self._session is not None:
            return True
        if importlib.util.find_spec("rembg") is None:
            return False
        return any(p.is_file() for p in model_file_candidates(self.model_name))

    def session(self) -> Any:
        """The rembg session, created once; raises :class:`BackgroundRemovalUnavailable`."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._load()
        return self._session

    def _load(self) -> Any:
        candidates = model_file_candidates(self.model_name)
        if not any(p.is_file() for p in candidates):
            raise BackgroundRemovalUnavailable(self._missing_message(candidates))
        try:
            import rembg
            from rembg.sessions import sessions_class
        except Exception as e:  # noqa: BLE001 - missing package or broken install: same outcome
            raise BackgroundRemovalUnavailable(
                f"Background removal is off: the rembg package cannot be imported ({reason(e)}). "
                "Install it with 'pip install rembg onnxruntime'. Search continues without background removal."
            ) from None
        session_cls = next((c for c in sessions_class if c.name() == self.model_name), None)
        if session_cls is None:
            raise BackgroundRemovalUnavailable(
                f"Background removal is off: rembg has no model called '{self.model_name}' "
                "(try 'u2netp'). Search continues without background removal."
            )
        resolve = getattr(session_cls, "resolve_existing", None)
        if resolve is not None and resolve(f"{self.model_name}.onnx") is None:
            # The file is somewhere we looked but not where this rembg version looks: it would download.
            raise BackgroundRemovalUnavailable(self._missing_message(candidates))
        from visual_search.device import pick_background_runtime

        wanted = pick_background_runtime(self.requested_runtime, self.device)
        if wanted != "rembg":
            try:
                session = self._tuned_session(rembg)
                self.runtime = "onnx"
                return session
            except Exception as e:  # noqa: BLE001 - any failure of the fast path leaves rembg's own session
                log.warning(
                    "tuned ONNX Runtime session for background removal (%s) could not be built (%s); "
                    "using rembg's own session",
                    self.model_name,
                    reason(e),
                )
        try:
            session = rembg.new_session(self.model_name)
            self.runtime = "rembg"
            return session
        except Exception as e:  # noqa: BLE001 - corrupt file, onnxruntime trouble, anything
            raise BackgroundRemovalUnavailable(
                f"Background removal is off: the rembg model '{self.model_name}' could not be loaded "
                f"({reason(e)}). Replace {self.model_name}.onnx in {_home_hint()}. "
                "Search continues without background removal."
            ) from None

    def _tuned_session(self, rembg: Any) -> Any:
        """rembg's session class (its model lookup) on this app's session options, CPU provider; its
        ``inner_session`` is run by :func:`_soft_mask`. int8 is not offered: it failed the mask guard
        (device.py). Another input side than the graph's gets the graph with its input dims rewritten."""
        from visual_search.encoders.runtime import session_options

        session = rembg.new_session(
            self.model_name, sess_opts=session_options(), providers=["CPUExecutionProvider"]
        )
        shape = session.inner_session.get_inputs()[0].shape
        if shape[2:] != [self.input_side, self.input_side]:
            import onnxruntime as ort

            model_file = next(p for p in model_file_candidates(self.model_name) if p.is_file())
            session.inner_session = ort.InferenceSession(
                _with_input_side(model_file, self.input_side),
                session_options(),
                providers=["CPUExecutionProvider"],
            )
        return session

    def _missing_message(self, candidates: list[Path]) -> str:
        where = " or ".join(str(p) for p in candidates)
        return (
            f"Background removal is off: the rembg model '{self.model_name}' ({self.model_name}.onnx) "
            f"is not on this machine (looked for {where}) and is not downloaded automatically. "
            f"Put {self.model_name}.onnx in {_home_hint()}; it is picked up on the next photo. "
            "Search continues without background removal."
        )

    def remove(self, image: Image.Image) -> BackgroundRemoval:
        """Find the main object and return the cut-out to search with, plus what was removed.

        Pass a :func:`load_image` result: the mask and the cut-out are made at the input's size.
        """
        session = self.session()
        started = time.perf_counter()
        _check_pixels(image.size, "the image")
        original = to_rgb(image)
        if original is image:
            original = image.copy()
        work = _shrink(original, self.work_side)
        try:
            if self.runtime == "onnx" and self.model_name in _U2NET_FAMILY:
                masks = [_soft_mask(session.inner_session, work, self.input_side)]
            else:
                masks = session.predict(work)
        except Exception as e:  # noqa: BLE001 - onnxruntime failures: this photo only, not the app
            raise ImageError(
                f"Background removal failed on this photo ({reason(e)}); search it without removal."
            ) from None
        soft = masks[0].convert("L")
        for extra in masks[1:]:  # multi-class models (e.g. cloth segmentation): union of classes
            soft = ImageChops.lighter(soft, extra.convert("L"))
        if soft.size != work.size:
            soft = soft.resize(work.size, Image.Resampling.BILINEAR)
        result = _cut_out(original, soft)
        result.seconds = time.perf_counter() - started
        return result


def _soft_mask(inner: Any, work: Image.Image, side: int) -> Image.Image:
    """u2net's saliency map for ``work`` (RGB), at ``work``'s size. rembg's numbers (LANCZOS squash to the
    square, divide by the image's max, ImageNet mean/std, min-max of the first output, LANCZOS back up) in
    float32 and in place where rembg works in float64, and only the first of the model's seven outputs
    asked for: the map is within 1 grey level of rembg's and the masks the same (IoU 1.0000 on the bench
    photos; a bilinear upscale saved ~1 ms more but moved masks to IoU 0.995, and one of 96 quality-bench
    queries lost its rank-1 hit), ~3 CPU ms less per photo (1-2 %: the forward pass is the rest,
    bench/RESULTS.md)."""
    pixels = np.asarray(work.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32)
    pixels *= 1.0 / max(float(pixels.max()), 1e-6)
    pixels -= _MEAN
    pixels /= _STD
    feed = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    first = inner.get_outputs()[0].name
    pred = inner.run([first], {inner.get_inputs()[0].name: feed})[0][0, 0]
    low, high = float(pred.min()), float(pred.max())
    scaled = (pred - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pred)
    return Image.fromarray(scaled.astype(np.uint8), mode="L").resize(work.size, Image.Resampling.LANCZOS)


def _with_input_side(model_path: Path, side: int) -> bytes:
    """The u2net graph with its input (and output) fixed at ``side`` x ``side`` instead of 320: its Resize
    ops take their sizes from the tensors' shapes, so the network runs at any side."""
    import onnx

    model = onnx.load(str(model_path))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[2].dim_value = dims[3].dim_value = side
    return model.SerializeToString()


def model_file_candidates(model_name: str) -> list[Path]:
    """Where rembg looks for ``<model>.onnx``: ``$U2NET_HOME/models/<model>/`` and ``$U2NET_HOME/``
    when U2NET_HOME is set, else ``~/.rembg/models/<model>/`` (or $REMBG_HOME) and ``~/.u2net/``."""
    fname = f"{model_name}.onnx"
    u2net_home = os.getenv("U2NET_HOME")
    if u2net_home:
        home = legacy = Path(u2net_home).expanduser()
    else:
        xdg = os.getenv("XDG_DATA_HOME")
        default = os.path.join(xdg, "rembg") if xdg else os.path.join("~", ".rembg")
        home = Path(os.getenv("REMBG_HOME", default)).expanduser()
        legacy = Path(xdg or "~", ".u2net").expanduser()
    return [home / "models" / model_name / fname, legacy / fname]


def _home_hint() -> str:
    u2net_home = os.getenv("U2NET_HOME")
    if u2net_home:
        return f"the folder named by U2NET_HOME ({u2net_home})"
    return f"{Path('~/.u2net').expanduser()} (or set U2NET_HOME to the folder that holds it)"


MIN_OBJECT_FRACTION = 0.005
"""Below this share of the photo the mask is noise (u2netp normalises every output to 0-1)."""

MAX_OBJECT_FRACTION = 0.97
"""Above this the 'object' is the whole photo and there is nothing to remove."""


def _cut_out(original: Image.Image, soft_small: Image.Image) -> BackgroundRemoval:
    """Turn a (small) soft mask into the searched image, box and statistics for ``original``."""
    # Opening (erode then dilate) drops the speckles u2netp leaves on flat or noisy photos.
    on = np.asarray(soft_small) >= 128
    opened = _dilate(~_dilate(~on, 1), 1)
    share = float(opened.mean()) if opened.size else 0.0
    if share < MIN_OBJECT_FRACTION or share > MAX_OBJECT_FRACTION:
        note = (
            "no clear object found; searched the whole photo"
            if share < MIN_OBJECT_FRACTION
            else "the object fills the photo; searched the whole photo"
        )
        return BackgroundRemoval(
            original=original,
            cleaned=original.copy(),
            mask=Image.new("L", original.size, 255),
            bbox=None,
            removed_fraction=0.0,
            note=note,
        )
    # Keep soft edges near the object, drop stray blobs' faint halos far from it.
    near = Image.fromarray(np.where(_dilate(opened, 3), 255, 0).astype(np.uint8), mode="L")
    soft_small = ImageChops.multiply(soft_small, near)
    mask = soft_small.resize(original.size, Image.Resampling.BILINEAR)
    bbox = mask.point(lambda v: 255 if v >= 128 else 0).getbbox()
    if bbox is None:  # the resize blurred a sliver away
        return _cut_out(original, Image.new("L", soft_small.size, 0))
    removed = 1.0 - _share_on(mask)
    cutout = Image.composite(original, Image.new("RGB", original.size, _WHITE), mask)
    cleaned = _square_on_white(cutout.crop(_with_margin(bbox, original.size)))
    return BackgroundRemoval(original, cleaned, mask, tuple(bbox), removed)


def _dilate(on: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)-square, edges replicated: what PIL's MaxFilter(2r+1) does to a 0/255
    mask (erosion is ``~_dilate(~on, r)``, PIL's MinFilter), separably, ~100x faster on 640 px."""
    height, width = on.shape
    padded = np.pad(on, radius, mode="edge")
    rows = padded[:, :width].copy()
    for dx in range(1, 2 * radius + 1):
        rows |= padded[:, dx : dx + width]
    out = rows[:height].copy()
    for dy in range(1, 2 * radius + 1):
        out |= rows[dy : dy + height]
    return out


def _share_on(mask: Image.Image) -> float:
    histogram = mask.histogram()
    return sum(histogram[128:]) / max(1, mask.width * mask.height)


def _with_margin(bbox: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = bbox
    margin = max(4, round(0.05 * max(x1 - x0, y1 - y0)))
    return max(0, x0 - margin), max(0, y0 - margin), min(size[0], x1 + margin), min(size[1], y1 + margin)


def _square_on_white(img: Image.Image) -> Image.Image:
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), _WHITE)
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def _checkerboard(size: tuple[int, int], cell: int = 12) -> Image.Image:
    cols = (np.arange(size[0]) // cell) % 2
    rows = (np.arange(size[1]) // cell) % 2
    grey = np.where((rows[:, None] + cols[None, :]) % 2 == 1, 255, 228).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _inclusive(bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = bbox
    return x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)


def _fit_inside(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    scale = min(box[0] / size[0], box[1] / size[1])
    return max(1, math.floor(size[0] * scale)), max(1, math.floor(size[1] * scale))
