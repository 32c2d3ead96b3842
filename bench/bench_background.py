"""Background removal benchmark: before (rembg's own session + PIL rank filters) vs after (the app's
ONNX Runtime session options + numpy mask clean-up), same photos, same run, taking turns photo by photo.

For each sample-catalog photo (pre-decoded, as a query has it after loading):

- ``BackgroundRemover.remove(photo)`` wall time (what a photo query pays), and its process CPU time;
- the bare model call (``session.inner_session.run`` on rembg's preprocessed input) of each session;
- mask IoU (>= 128) of after vs before;
- with ``--int8``: a static int8 u2netp (onnxruntime ``quantize_static``, QDQ, per-channel weights,
  calibrated on catalog photos not in the timed set) through the same pipeline: its bare model time and
  mask IoU against fp32, the guard an int8 default would have to pass (>= 0.95).

"Before" is the code as it was: rembg's own session (``rembg.new_session("u2netp")``, onnxruntime's
default options) and the mask opening/dilation with PIL's MinFilter/MaxFilter, which this script puts
back for the "before" calls. The model file comes from tests/registry_assets.py (U2NET_HOME).

    python bench/bench_background.py --photos 24 --repeats 2 --out bench/RESULTS.md

writes (or replaces) the "Background removal" section of ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_end_to_end import write_section  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from visual_search.evaluation import percentile  # noqa: E402
from visual_search.images import background  # noqa: E402
from visual_search.images.background import BackgroundRemover  # noqa: E402
from visual_search.images.load import load_image  # noqa: E402

SECTION = "## Background removal"
SAMPLES = ROOT / "sample_catalog" / "images"
MEAN, STD, SIDE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320)  # rembg's u2netp input


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pil_dilate(on: np.ndarray, radius: int) -> np.ndarray:
    """The clean-up as it was: PIL's MaxFilter on a 0/255 mask (MinFilter(3) == MaxFilter on the inverse)."""
    image = Image.fromarray(np.where(on, 255, 0).astype(np.uint8), mode="L")
    return np.asarray(image.filter(ImageFilter.MaxFilter(2 * radius + 1))) >= 128


@contextlib.contextmanager
def pil_filters() -> Iterator[None]:
    fast = background._dilate
    background._dilate = _pil_dilate
    try:
        yield
    finally:
        background._dilate = fast


def timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def iou(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a) >= 128, np.asarray(b) >= 128
    union = (x | y).sum()
    return 1.0 if union == 0 else float((x & y).sum() / union)


def int8_model(source: Path, calibration: list[Path], out_dir: Path) -> Path:
    """Static int8 u2netp: shape inference, opset 13 (per-channel QDQ needs it), QDQ, MinMax calibration."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    session = BackgroundRemover("u2netp", runtime="torch").session()  # rembg's preprocessing
    name = session.inner_session.get_inputs()[0].name
    feeds = [
        session.normalize(
            background._shrink(load_image(str(p)), background.REMBG_WORK_SIDE), MEAN, STD, SIDE
        )[name]
        for p in calibration
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            feed = next(self.feeds, None)
            return None if feed is None else {name: feed}

    prepared, opset13, out = out_dir / "pre.onnx", out_dir / "pre13.onnx", out_dir / "u2netp-int8.onnx"
    quant_pre_process(str(source), str(prepared))
    onnx.save(version_converter.convert_version(onnx.load(str(prepared)), 13), str(opset13))
    quantize_static(
        str(opset13),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from registry_assets import U2NETP, fetch

    model_file = fetch(U2NETP)
    os.environ["U2NET_HOME"] = str(model_file.parent)
    removers = {
        "before": BackgroundRemover("u2netp", runtime="torch"),  # rembg's own session
        "after": BackgroundRemover("u2netp", runtime=args.runtime),
    }
    everything = sorted(SAMPLES.iterdir())
    calibrated = 0
    paths = everything[:: max(1, len(everything) // args.photos)][: args.photos]
    if args.int8:
        from visual_search.encoders.runtime import _session

        rest = [p for p in everything if p not in paths]
        calibration = rest[:: max(1, len(rest) // 8)][:8]
        with tempfile.TemporaryDirectory(prefix="bench-bg-int8-") as tmp:
            _, ms, _ = timed(lambda: int8_model(model_file, calibration, Path(tmp)))
            log(f"int8: quantized in {ms / 1000:.0f} s on {len(calibration)} calibration photos")
            calibrated = len(calibration)
            removers["int8"] = BackgroundRemover("u2netp", runtime="onnx")
            removers["int8"].session().inner_session = _session(Path(tmp) / "u2netp-int8.onnx")
    for name, remover in removers.items():
        _, ms, _ = timed(remover.session)
        log(f"{name}: session ({remover.runtime}) ready in {ms:.0f} ms")
    photos = [load_image(str(p)) for p in paths]
    for name, remover in removers.items():  # warm-up: first runs allocate
        with pil_filters() if name == "before" else contextlib.nullcontext():
            remover.remove(photos[0])
    wall: dict[str, list[float]] = {k: [] for k in removers}
    cpu: dict[str, list[float]] = {k: [] for k in removers}
    model: dict[str, list[float]] = {k: [] for k in removers}
    ious: list[float] = []
    int8_ious: list[float] = []
    order = list(removers)
    for _ in range(args.repeats):
        for photo in photos:
            order.reverse()  # take turns going first
            masks = {}
            for name in order:
                remover = removers[name]
                with pil_filters() if name == "before" else contextlib.nullcontext():
                    result, w, c = timed(lambda r=remover, p=photo: r.remove(p))
                wall[name].append(w)
                cpu[name].append(c)
                masks[name] = result.mask
                session = remover.session()
                feed = session.normalize(background._shrink(photo, remover.work_side), MEAN, STD, SIDE)
                model[name].append(timed(lambda s=session, f=feed: s.inner_session.run(None, f))[1])
            ious.append(iou(masks["after"], masks["before"]))
            if "int8" in masks:
                int8_ious.append(iou(masks["int8"], masks["after"]))
    return {
        "photos": len(photos),
        "sizes": sorted({max(p.size) for p in photos}),
        "runtimes": {k: r.runtime for k, r in removers.items()},
        "wall": wall,
        "cpu": cpu,
        "model": model,
        "iou": ious,
        "int8_iou": int8_ious,
        "calibrated": calibrated,
    }


def report(args: argparse.Namespace, info: dict[str, Any], res: dict[str, Any]) -> str:
    import onnxruntime

    from visual_search.encoders.runtime import session_options

    def row(name: str, label: str) -> str:
        w, c, m = res["wall"][name], res["cpu"][name], res["model"][name]
        return (
            f"| {label} | {percentile(w, 50):.0f} | {percentile(w, 95):.0f} | {percentile(c, 50):.0f} | "
            f"{percentile(m, 50):.0f} | {percentile(m, 95):.0f} |"
        )

    before, after = percentile(res["wall"]["before"], 50), percentile(res["wall"]["after"], 50)
    ious = np.array(res["iou"])
    load_a, load_b = info["load_start"], info["load_end"]
    lines = [
        SECTION,
        "",
        f"Run {dt.datetime.now():%Y-%m-%d %H:%M} on {info['cpu']}, {info['cores']} cores (ONNX Runtime "
        f"{onnxruntime.__version__}, intra-op threads {session_options().intra_op_num_threads}; Python "
        f"{platform.python_version()}); load average at start {', '.join(f'{x:.1f}' for x in load_a)}, at end "
        f"{', '.join(f'{x:.1f}' for x in load_b)}. Shared machine (other jobs ran beside it): read the ratios, "
        "measured side by side.",
        "",
        "```",
        f"python bench/bench_background.py --photos {args.photos} --repeats {args.repeats}"
        + (f" --runtime {args.runtime}" if args.runtime != "auto" else "")
        + (" --int8" if args.int8 else "")
        + " --out bench/RESULTS.md",
        "```",
        "",
        f"{res['photos']} sample-catalog photos (longest side {', '.join(map(str, res['sizes']))} px), "
        f"{args.repeats} passes, before and after taking turns photo by photo. `remove` is "
        "`BackgroundRemover.remove(photo)` on a decoded photo: rembg preprocessing (320x320), u2netp, rembg "
        "postprocessing, mask clean-up, cut-out. Before: rembg's own session (onnxruntime defaults) and "
        "PIL MinFilter/MaxFilter clean-up; after: the app's session options "
        "(`visual_search.encoders.runtime.session_options`) and separable numpy dilation (same masks).",
        "",
        "| path | `remove` p50 ms | p95 ms | CPU ms p50 | bare model p50 ms | model p95 ms |",
        "|---|---:|---:|---:|---:|---:|",
        row("before", f"before: rembg session ({res['runtimes']['before']}) + PIL filters"),
        row("after", f"after: {res['runtimes']['after']} session + numpy clean-up (the CPU default)"),
        "",
        f"After / before (`remove` p50): **{before / after:.2f}x faster**; mask IoU after vs before: min "
        f"{ious.min():.4f}, mean {ious.mean():.4f} over {len(ious)} masks. Target <= 150 ms on 2 cores: "
        f"**{'met' if after <= 150 else 'missed'}** ({after:.0f} ms p50, on a machine loaded as stated above).",
        "",
        "Reading the table: after the change the bare model is nearly all of `remove`; what went is rembg's "
        "spinning worker threads (they fight every other process for 2 cores) and PIL's rank filters "
        "(the whole clean-up took ~220 ms per 640 px mask under this load, the numpy one a few ms). u2netp stays "
        "fp32 at 320x320 (int8 below), so with the load average far above the core count the wall-clock "
        "target cannot be judged from such a run; the CPU ms column is the steadier before/after figure.",
        "",
    ]
    if res["int8_iou"]:
        q = np.array(res["int8_iou"])
        m8, m32 = percentile(res["model"]["int8"], 50), percentile(res["model"]["after"], 50)
        passed = q.min() >= 0.95
        table_end = max(i for i, line in enumerate(lines) if line.startswith("| after:"))
        lines.insert(
            table_end + 1,
            row("int8", f"static int8 u2netp (QDQ, {res['calibrated']} calibration photos), same pipeline"),
        )
        lines += [
            f"int8 (`--int8`): bare model {m32 / m8:.2f}x faster than fp32 ({m8:.0f} vs {m32:.0f} ms p50), mask IoU "
            f"to fp32 min {q.min():.3f}, 5th percentile {np.percentile(q, 5):.3f}, mean {q.mean():.3f}: the guard "
            f"(IoU >= 0.95 on every photo) **{'holds' if passed else 'fails'}**"
            + (
                ", so background removal stays fp32 (`onnx-int8` runs the fp32 session for it)."
                if not passed
                else "."
            ),
            "",
            "Tried here by hand as well, all failing the guard (IoU min / mean over 16-24 sample photos): dynamic "
            "int8 (ConvInteger) 0.00 / 0.00 and 4x slower; QOperator static 0.24 / 0.78; QDQ leaving the side "
            "and output convolutions fp32 0.14 / 0.78; Conv-only QDQ 0.16 / 0.79; only the encoder half's "
            "convolutions 0.32 / 0.97 at ~1.2x. u2netp's min-max normalised saliency map turns small activation "
            "errors into different masks.",
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=24, help="sample-catalog photos (spread over the catalog)")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the photos")
    ap.add_argument("--runtime", default="auto", help="the app's runtime setting for 'after' (default auto)")
    ap.add_argument("--int8", action="store_true", help="also quantize u2netp (static int8) and measure it")
    ap.add_argument(
        "--out", type=Path, help="Markdown file whose 'Background removal' section is (re)written"
    )
    args = ap.parse_args(argv)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "load_start": os.getloadavg()}
    res = run(args)
    info["load_end"] = os.getloadavg()
    section = report(args, info, res)
    print(section)
    if args.out:
        write_section(args.out, section, SECTION)
        log(f"wrote the '{SECTION[3:]}' section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
