"""Background removal benchmark: before (today's path) vs after (the default now), same photos, same run,
taking turns photo by photo, with the mask IoU guard.

- **before**: the tuned ONNX Runtime session (``visual_search.encoders.runtime.session_options``) behind
  rembg's own pre/post-processing (``session.predict``: LANCZOS squash to 320x320, float64 normalisation,
  LANCZOS mask upscale to the 640 px work copy), then the numpy mask clean-up and cut-out. This is what
  ``BackgroundRemover.remove`` did before ``images.background._soft_mask``; it is rebuilt here from the
  same session, so only the pre/post-processing differs.
- **after**: ``BackgroundRemover.remove(photo)`` as the app runs it (the CPU default).
- ``--sides 288,256``: the same pipeline with u2netp fed a smaller square (``input_side``), the candidate
  speed-up; it only becomes the default if its masks hold IoU >= 0.95 to before's (fp32, 320) on every
  photo.
- ``--int8``: a static int8 u2netp (onnxruntime ``quantize_static``, QDQ, per-channel weights, calibrated
  on catalog photos not in the timed set) through the after pipeline, under the same guard.
- ``--rembg``: also rembg's own session (onnxruntime defaults, spinning threads) with its own processing.

For each photo: ``remove`` wall time and process CPU time, the bare model call
(``inner_session.run`` on a prepared input) and the mask IoU (>= 128) against before. Photos: sample
catalog photos, spread over the catalog, and ``--shopper`` SYNTHETIC shopper photos
(``augment.shopper_query``, QUERY_KINDS in turn, seed 0, 512 px) made from the other catalog photos.
The model file comes from tests/registry_assets.py (U2NET_HOME).

    python bench/bench_background.py --photos 16 --shopper 12 --repeats 2 --sides 288,256 --out bench/RESULTS.md

writes (or replaces) the "Pre/post-processing and input side" sub-section of the "Background removal"
section of ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from visual_search.evaluation import percentile  # noqa: E402
from visual_search.images import background  # noqa: E402
from visual_search.images.background import BackgroundRemoval, BackgroundRemover  # noqa: E402
from visual_search.images.load import load_image, to_rgb  # noqa: E402
from visual_search.training.augment import QUERY_KINDS, shopper_query  # noqa: E402

SECTION = "## Background removal"
SUBSECTION = "### Pre/post-processing and input side"
SAMPLES = ROOT / "sample_catalog" / "images"
MEAN, STD, SIDE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320)  # rembg's u2netp input
GUARD = 0.95


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def before_remove(remover: BackgroundRemover, photo: Image.Image) -> BackgroundRemoval:
    """``BackgroundRemover.remove`` as it was: rembg's ``session.predict`` for the soft mask."""
    original = to_rgb(photo)
    work = background._shrink(original, remover.work_side)
    soft = remover.session().predict(work)[0].convert("L")
    if soft.size != work.size:
        soft = soft.resize(work.size, Image.Resampling.BILINEAR)
    return background._cut_out(original, soft)


def rembg_remove(remover: BackgroundRemover, photo: Image.Image) -> BackgroundRemoval:
    """rembg's own session and processing (``runtime="torch"`` maps to it), today's clean-up."""
    return remover.remove(photo)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def iou(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a) >= 128, np.asarray(b) >= 128
    union = (x | y).sum()
    return 1.0 if union == 0 else float((x & y).sum() / union)


def int8_model(source: Path, calibration: list[Image.Image], out_dir: Path) -> Path:
    """Static int8 u2netp: shape inference, opset 13 (per-channel QDQ needs it), QDQ, MinMax calibration."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    session = BackgroundRemover("u2netp", runtime="torch").session()  # rembg's preprocessing
    name = session.inner_session.get_inputs()[0].name
    feeds = [
        session.normalize(background._shrink(p, background.REMBG_WORK_SIDE), MEAN, STD, SIDE)[name]
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


def photo_sets(n_sample: int, n_shopper: int) -> tuple[dict[str, list[Image.Image]], list[Image.Image]]:
    """Timed photos by set (sample, shopper) and spare catalog photos (int8 calibration)."""
    everything = sorted(SAMPLES.iterdir())
    picked = everything[:: max(1, len(everything) // max(1, n_sample))][:n_sample]
    rest = [load_image(str(p)) for p in everything if p not in picked]
    rng = random.Random(0)
    shopper = []
    for i in range(n_shopper):
        item, other = rest[(5 * i) % len(rest)], rest[(5 * i + 7) % len(rest)]
        shopper.append(
            shopper_query(QUERY_KINDS[i % len(QUERY_KINDS)], item, rng, distractor=other, size=512)
        )
    sets = {"sample": [load_image(str(p)) for p in picked], "shopper": shopper}
    return {k: v for k, v in sets.items() if v}, rest


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from registry_assets import U2NETP, fetch

    model_file = fetch(U2NETP)
    os.environ["U2NET_HOME"] = str(model_file.parent)
    tuned = BackgroundRemover("u2netp", runtime="onnx")
    paths: dict[str, tuple[BackgroundRemover, Callable[[BackgroundRemover, Image.Image], BackgroundRemoval]]]
    paths = {
        "before": (tuned, before_remove),
        "after": (BackgroundRemover("u2netp"), BackgroundRemover.remove),
    }
    for side in args.sides:
        paths[f"side {side}"] = (BackgroundRemover("u2netp", input_side=side), BackgroundRemover.remove)
    if args.rembg:
        paths["rembg"] = (BackgroundRemover("u2netp", runtime="torch"), rembg_remove)
    sets, spare = photo_sets(args.photos, args.shopper)
    calibrated = 0
    with tempfile.TemporaryDirectory(prefix="bench-bg-int8-") as tmp:
        if args.int8:
            from visual_search.encoders.runtime import _session

            calibration = spare[:: max(1, len(spare) // 8)][:8]
            _, ms, _ = timed(lambda: int8_model(model_file, calibration, Path(tmp)))
            log(f"int8: quantized in {ms / 1000:.0f} s on {len(calibration)} calibration photos")
            calibrated = len(calibration)
            int8 = BackgroundRemover("u2netp", runtime="onnx")
            int8.session().inner_session = _session(Path(tmp) / "u2netp-int8.onnx")
            paths["int8"] = (int8, BackgroundRemover.remove)
        for name, (remover, _) in paths.items():
            _, ms, _ = timed(remover.session)
            log(f"{name}: session ({remover.runtime}, input side {remover.input_side}) ready in {ms:.0f} ms")
        first = next(iter(sets.values()))[0]
        for remover, fn in paths.values():  # warm-up: first runs allocate
            fn(remover, first)
        wall: dict[str, dict[str, list[float]]] = {s: {k: [] for k in paths} for s in sets}
        cpu: dict[str, dict[str, list[float]]] = {s: {k: [] for k in paths} for s in sets}
        model: dict[str, list[float]] = {k: [] for k in paths}
        ious: dict[str, dict[str, list[float]]] = {s: {k: [] for k in paths if k != "before"} for s in sets}
        order = list(paths)
        rng = np.random.default_rng(0)
        for repeat in range(args.repeats):
            for set_name, photos in sets.items():
                for photo in photos:
                    order.reverse()  # take turns going first
                    masks = {}
                    for name in order:
                        remover, fn = paths[name]
                        result, w, c = timed(lambda r=remover, f=fn, p=photo: f(r, p))
                        wall[set_name][name].append(w)
                        cpu[set_name][name].append(c)
                        masks[name] = result.mask
                        inner = remover.session().inner_session
                        side = remover.input_side if name != "rembg" else SIDE[0]
                        feed = {
                            inner.get_inputs()[0].name: rng.standard_normal((1, 3, side, side), np.float32)
                        }
                        model[name].append(timed(lambda s=inner, f=feed: s.run(None, f))[1])
                    if repeat == 0:
                        for name in ious[set_name]:
                            ious[set_name][name].append(iou(masks[name], masks["before"]))
            log(f"pass {repeat + 1}/{args.repeats} done")
    return {
        "sets": {k: len(v) for k, v in sets.items()},
        "sizes": sorted({max(p.size) for v in sets.values() for p in v}),
        "runtimes": {k: r.runtime for k, (r, _) in paths.items()},
        "wall": wall,
        "cpu": cpu,
        "model": model,
        "iou": ious,
        "calibrated": calibrated,
    }


def _label(name: str, res: dict[str, Any]) -> str:
    labels = {
        "before": "before: tuned session, rembg's pre/post-processing (today's path)",
        "after": f"after: tuned session, own pre/post-processing, {background.MODEL_INPUT_SIDE} px (the default)",
        "rembg": "rembg's own session and processing (`--runtime torch`)",
        "int8": f"static int8 u2netp (QDQ, {res['calibrated']} calibration photos), after's processing",
    }
    return labels.get(name, f"{name} px input, after's processing (candidate)")


def report(args: argparse.Namespace, info: dict[str, Any], res: dict[str, Any]) -> str:
    import onnxruntime

    from visual_search.encoders.runtime import session_options

    names = list(res["runtimes"])
    all_wall = {k: [w for s in res["wall"].values() for w in s[k]] for k in names}
    all_cpu = {k: [c for s in res["cpu"].values() for c in s[k]] for k in names}
    before_w, before_c = percentile(all_wall["before"], 50), percentile(all_cpu["before"], 50)

    def paired(name: str) -> float:
        ratios = [b / a for b, a in zip(all_wall["before"], all_wall[name], strict=True) if a > 0]
        return float(np.median(ratios))

    load_a, load_b = info["load_start"], info["load_end"]
    lines = [
        SUBSECTION,
        "",
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {info['cpu']}, {info['cores']} cores "
        f"(ONNX Runtime {onnxruntime.__version__}, intra-op threads {session_options().intra_op_num_threads}; "
        f"Python {platform.python_version()}); load average at start {', '.join(f'{x:.1f}' for x in load_a)}, "
        f"at end {', '.join(f'{x:.1f}' for x in load_b)}."
        + (
            " Shared machine (other jobs ran beside it): read the ratios and CPU ms, measured side by side."
            if max(*load_a, *load_b) > 1.5
            else ""
        ),
        "",
        "```",
        f"U2NET_HOME=~/.cache/visual_search_test_assets/u2net python bench/bench_background.py --photos "
        f"{args.photos} --shopper {args.shopper} --repeats {args.repeats}"
        + (f" --sides {','.join(map(str, args.sides))}" if args.sides else "")
        + (" --int8" if args.int8 else "")
        + (" --rembg" if args.rembg else ""),
        "```",
        "",
        f"{res['sets'].get('sample', 0)} sample-catalog photos and {res['sets'].get('shopper', 0)} SYNTHETIC "
        f"shopper photos (longest side {', '.join(map(str, res['sizes']))} px), {args.repeats} passes, the "
        "paths taking turns photo by photo. `remove` is the whole call on a decoded photo (pre-processing, "
        "u2netp, post-processing, mask clean-up, cut-out); the bare model is `inner_session.run` alone. "
        "Before and after share one ONNX Runtime session: only the pre/post-processing differs.",
        "",
        "| path | `remove` p50 ms | p95 ms | CPU ms p50 | bare model p50 ms | before/after p50 (paired) "
        "| IoU to before: sample min / mean | shopper min / mean |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name in names:
        w, c = all_wall[name], all_cpu[name]
        cells = []
        for set_name in ("sample", "shopper"):
            values = res["iou"].get(set_name, {}).get(name)
            cells.append(f"{min(values):.3f} / {np.mean(values):.3f}" if values else "-")
        lines.append(
            f"| {_label(name, res)} | {percentile(w, 50):.0f} | {percentile(w, 95):.0f} | "
            f"{percentile(c, 50):.0f} | {percentile(res['model'][name], 50):.0f} | "
            f"{'1.00' if name == 'before' else f'{paired(name):.2f}x'} | {cells[0]} | {cells[1]} |"
        )
    after_w, after_c = percentile(all_wall["after"], 50), percentile(all_cpu["after"], 50)
    lines += [
        "",
        f"After / before: **{before_w / after_w:.2f}x** by wall p50 ({before_w:.0f} -> {after_w:.0f} ms), "
        f"{paired('after'):.2f}x paired per photo, {before_c / after_c:.2f}x by CPU p50 ({before_c:.0f} -> "
        f"{after_c:.0f} ms). Target <= 150 ms per photo on 2 cores: **{'met' if after_w <= 150 else 'missed'}** "
        f"({after_w:.0f} ms p50 at the load stated above).",
        "",
    ]
    candidates = [n for n in names if n.startswith("side ") or n == "int8"]
    for name in candidates:
        values = [v for s in res["iou"].values() for v in s.get(name, [])]
        ok = min(values) >= GUARD
        lines.append(
            f"- {_label(name, res)}: `remove` {before_w / percentile(all_wall[name], 50):.2f}x before by wall "
            f"p50 ({percentile(all_wall[name], 50):.0f} ms), bare model "
            f"{percentile(res['model']['after'], 50) / percentile(res['model'][name], 50):.2f}x the 320 px "
            f"fp32 model; mask IoU to before min {min(values):.3f}, mean {np.mean(values):.3f}, "
            f"{sum(v < GUARD for v in values)} of {len(values)} photos under {GUARD}: the guard "
            f"**{'holds' if ok else 'fails'}**."
        )
    if candidates:
        lines.append("")
    return "\n".join(lines)


def write_subsection(path: Path, text: str) -> None:
    """Put ``text`` at the end of the Background removal section of ``path`` (replacing an earlier copy)."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = doc.find(SUBSECTION)
    if start != -1:
        ends = [i for i in (doc.find("\n### ", start + 1), doc.find("\n## ", start + 1)) if i != -1]
        end = min(ends) if ends else len(doc)
        doc = doc[:start] + doc[end + 1 :]
    section = doc.find(SECTION + "\n")
    if section == -1:
        doc = doc.rstrip() + f"\n\n{SECTION}\n\n{text}\n"
    else:
        end = doc.find("\n## ", section + 1)
        end = len(doc) if end == -1 else end + 1
        doc = doc[:end].rstrip() + "\n\n" + text.rstrip() + "\n\n" + doc[end:]
    path.write_text(doc.rstrip() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=16, help="sample-catalog photos (spread over the catalog)")
    ap.add_argument("--shopper", type=int, default=12, help="SYNTHETIC shopper photos (QUERY_KINDS in turn)")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the photos")
    ap.add_argument(
        "--sides",
        type=lambda v: [int(x) for x in v.split(",") if x.strip()],
        default=[],
        help="also time u2netp at these input sides, e.g. 288,256 (the default is MODEL_INPUT_SIDE)",
    )
    ap.add_argument("--int8", action="store_true", help="also quantize u2netp (static int8) and measure it")
    ap.add_argument("--rembg", action="store_true", help="also rembg's own session and processing")
    ap.add_argument(
        "--out", type=Path, help="Markdown file whose Background removal section gets the results"
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
        write_subsection(args.out, section)
        log(f"wrote '{SUBSECTION[4:]}' in the '{SECTION[3:]}' section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
