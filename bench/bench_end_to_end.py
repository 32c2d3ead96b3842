"""End-to-end benchmark: photo query latency and indexing throughput through the engine.

(a) Query latency: a photo file -> ``SearchEngine.search(image=path)`` (load + sanitize, preprocess,
    embed, vector search, grouping), p50/p95 over synthetic shopper photos (``evaluate.synthetic_queries``)
    on an index of the sample catalog; again with background removal when rembg's ``u2netp`` is
    available (fetched from a PyPI wheel by ``tests/registry_assets.py``). Target: p50 <= 120 ms
    without background removal.
(b) Indexing throughput: images/s through ``SearchEngine.index_catalog`` (hash, decode, embed, upsert,
    optimize; fresh index each time) vs the model's raw batched throughput (``encoder.embed_images`` on
    the same images, already loaded and decoded, same batch size), interleaved in one run so machine
    load hits both alike. Target: engine >= 90% of raw. One extra engine run is instrumented to show
    where its time goes.

The encoder is ViT-B-32 with random weights (no real weights can be downloaded here; the compute is
the same): ``open_clip.create_model_and_transforms("ViT-B-32")`` saved to a temporary .pt and loaded
with ``create_encoder("ViT-B-32@/tmp/....pt")``, CPU.

    python bench/bench_end_to_end.py --out bench/RESULTS.md
    python bench/bench_end_to_end.py --runtime onnx-int8 --no-background     # the fast CPU runtime

writes (or replaces) the "End-to-end" section of ``--out``. ``--runtime`` (default torch, the eager
baseline) picks the encoder's runtime (visual_search.encoders.runtime); ONNX exports go to a temporary folder,
so the first-start export is not part of any timing (it happens before the runs).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from visual_search import indexing as indexing_module  # noqa: E402
from visual_search.catalog import read_catalog  # noqa: E402
from visual_search.encoders import create_encoder  # noqa: E402
from visual_search.engine import SearchEngine  # noqa: E402
from visual_search.evaluation import percentile, synthetic_queries  # noqa: E402
from visual_search.images.load import load_image  # noqa: E402
from visual_search.store import open_store  # noqa: E402

SECTION = "## End-to-end"
SAMPLE = ROOT / "sample_catalog" / "catalog.csv"
QUERY_TARGET_MS = 120.0
IDLE_FORWARD_MS = 73.0  # DESIGN.md: ViT-B-32 batch-1 forward on an idle machine of this kind (2 cores)
THROUGHPUT_TARGET = 0.90


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def random_vit_b_32(folder: Path) -> Path:
    import open_clip

    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32")
    path = folder / "vit-b-32-random.pt"
    torch.save(model.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------ (b)


class PhaseTimer:
    """Wall time per phase of one index_catalog run, by wrapping what it calls.

    Decoding runs on the engine's prefetch threads, concurrently with embedding, so phases overlap:
    'decode (threads)' is the summed time of the decode calls, not time added to the run.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] += time.perf_counter() - start
                    self.calls[name] += 1

        return timed


@contextlib.contextmanager
def instrumented(engine: SearchEngine, timer: PhaseTimer) -> Iterator[None]:
    patches = [
        (indexing_module, "source_sha256", "hash (sha256 of each file)"),
        (indexing_module, "_load", "decode + sanitize (prefetch threads)"),
        (engine.encoder, "embed_images", "embed (preprocess + model)"),
        (engine.encoder, "_preprocess_batch", "  of which preprocess"),
        (engine.store, "upsert", "upsert"),
        (engine.store, "optimize", "optimize"),
        (engine.store, "scroll", "scroll existing points"),
        (engine.store, "ensure_collection", "ensure collection"),
    ]
    originals = []
    for owner, name, label in patches:
        original = getattr(owner, name)
        originals.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, timer.wrap(label, original))
    try:
        yield
    finally:
        for owner, name, original, own in originals:
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


def index_once(
    encoder: Any, catalog: Any, batch_size: int, work: Path, timer: PhaseTimer | None = None
) -> tuple[float, float]:
    """(wall s, process CPU s) of one index_catalog run into a fresh index."""
    folder = Path(tempfile.mkdtemp(dir=work, prefix="index-"))
    engine = SearchEngine(encoder, open_store(folder, None, None))
    try:
        with instrumented(engine, timer) if timer else contextlib.nullcontext():
            start, cpu = time.perf_counter(), time.process_time()
            report = engine.index_catalog(catalog, batch_size=batch_size)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        assert report.embedded == len(catalog.images) and not report.issues, report.summary()
        return seconds, cpu_seconds
    finally:
        engine.close()
        shutil.rmtree(folder, ignore_errors=True)


def bench_indexing(encoder: Any, catalog: Any, batch_size: int, repeats: int, work: Path) -> dict[str, Any]:
    images = [load_image(img.source) for img in catalog.images]  # what index_catalog embeds
    n = len(images)
    encoder.embed_images(images[:batch_size], batch_size=batch_size)  # warm-up
    raw, eng, raw_cpu, eng_cpu = [], [], [], []
    for r in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        encoder.embed_images(images, batch_size=batch_size)
        raw.append(n / (time.perf_counter() - start))
        raw_cpu.append((time.process_time() - cpu) / n * 1000)
        wall, cpu_s = index_once(encoder, catalog, batch_size, work)
        eng.append(n / wall)
        eng_cpu.append(cpu_s / n * 1000)
        log(
            f"  repeat {r + 1}/{repeats}: raw {raw[-1]:.1f} img/s ({raw_cpu[-1]:.0f} CPU ms/img), "
            f"index_catalog {eng[-1]:.1f} img/s ({eng_cpu[-1]:.0f} CPU ms/img)"
        )
    timer = PhaseTimer()
    wall, _ = index_once(encoder, catalog, batch_size, work, timer)
    start = time.perf_counter()
    for img in images:
        encoder.preprocess(img)
    preprocess_only = time.perf_counter() - start
    sides = []
    for img in catalog.images:
        with contextlib.suppress(Exception), Image.open(img.source) as opened:
            sides.append(max(opened.size))
    return {
        "images": n,
        "sides": (min(sides), max(sides)) if sides else (0, 0),
        "raw": raw,
        "engine": eng,
        "raw_cpu_ms": raw_cpu,
        "engine_cpu_ms": eng_cpu,
        "phases": dict(timer.seconds),
        "calls": dict(timer.calls),
        "profile_wall": wall,
        "preprocess_serial_s": preprocess_only,
    }


# ------------------------------------------------------------------------------------------ (a)


def bench_queries(
    engine: SearchEngine, paths: Sequence[str], remove_background: bool, warmup: int = 3
) -> dict[str, list[float]]:
    """Per query: wall ms of engine.search(image=path), its own timings, process CPU ms, and (paired,
    right before it) the bare model forward on a preprocessed tensor: the floor the engine adds to.
    Pairing keeps both under the same machine load."""
    encoder = engine.encoder
    pixels = encoder.preprocess(load_image(paths[0]))[None].to(encoder.device)

    def forward() -> float:
        start = time.perf_counter()
        encoder.encode_pixels(pixels)  # through the encoder's runtime (torch or ONNX)
        return (time.perf_counter() - start) * 1000

    for path in paths[:warmup]:
        forward()
        engine.search(image=path, top_k=12, remove_background=remove_background)
    out: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        out["forward"].append(forward())
        start, cpu = time.perf_counter(), time.process_time()
        response = engine.search(image=path, top_k=12, remove_background=remove_background)
        out["wall"].append((time.perf_counter() - start) * 1000)
        out["cpu"].append((time.process_time() - cpu) * 1000)
        out["embed"].append(response.embed_ms)
        out["search"].append(response.search_ms)
        out["load + background removal"].append(response.total_ms - response.embed_ms - response.search_ms)
        if remove_background and response.background is None:
            out["bg_missing"].append(1)
    return out


# ------------------------------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def p(values: Sequence[float], q: float) -> str:
    return f"{percentile(values, q):.0f}"


def report(
    args: argparse.Namespace, info: dict, idx: dict, queries: dict, bg: dict | None, bg_note: str
) -> str:
    raw_med, eng_med = statistics.median(idx["raw"]), statistics.median(idx["engine"])
    pair_ratio = statistics.median(e / r for e, r in zip(idx["engine"], idx["raw"], strict=True))
    raw_cpu, eng_cpu = statistics.median(idx["raw_cpu_ms"]), statistics.median(idx["engine_cpu_ms"])
    cpu_ratio = raw_cpu / eng_cpu
    wall = queries["wall"]
    lines = [
        SECTION,
        "",
        f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} on {info['cpu']}, {info['cores']} cores "
        f"(torch {info['torch']}, {info['threads']} threads, Python {info['python']}); load average at start "
        f"{', '.join(f'{x:.1f}' for x in info['load_start'])}, at end {', '.join(f'{x:.1f}' for x in info['load'])}. "
        "Shared machine: read ratios, not absolutes.",
        "",
        "```",
        f"python bench/bench_end_to_end.py {' '.join(sys.argv[1:])}".rstrip(),
        "```",
        "",
        f"Encoder: ViT-B-32 (random weights, same compute as real ones) via `create_encoder('ViT-B-32@/tmp/...pt')`, "
        f"CPU, runtime {info['runtime']}. Catalog: `{args.catalog.relative_to(ROOT) if args.catalog.is_relative_to(ROOT) else args.catalog}` "
        f"({idx['images']} images, longest side {idx['sides'][0]}-{idx['sides'][1]} px).",
        "",
        f"### (a) Photo query latency ({len(wall)} synthetic shopper photos, 512 px JPEG files, top-12)",
        "",
        "| setting | p50 ms | p95 ms | embed p50 | search p50 | load (+ bg removal) p50 | CPU ms p50 "
        "| bare model forward p50 (paired) | engine overhead p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in (("no background removal", queries), ("background removal (u2netp)", bg)):
        if not row:
            continue
        overhead = [w - f for w, f in zip(row["wall"], row["forward"], strict=True)]
        lines.append(
            f"| {name} | {p(row['wall'], 50)} | {p(row['wall'], 95)} | {p(row['embed'], 50)} "
            f"| {p(row['search'], 50)} | {p(row['load + background removal'], 50)} | {p(row['cpu'], 50)} "
            f"| {p(row['forward'], 50)} | {p(overhead, 50)} |"
        )
    met = percentile(wall, 50) <= QUERY_TARGET_MS
    overhead = percentile([w - f for w, f in zip(wall, queries["forward"], strict=True)], 50)
    lines += [
        "",
        f"Target p50 <= {QUERY_TARGET_MS:.0f} ms without background removal: **{'met' if met else 'missed'}** "
        f"in this run ({p(wall, 50)} ms). The engine adds {overhead:.0f} ms (load, preprocess, search, grouping) "
        f"to the bare ViT-B-32 forward measured right before each query ({p(queries['forward'], 50)} ms here); "
        "the rest is the model on the CPU share this shared machine gave it. Projection for an idle machine of "
        f"this kind (DESIGN.md: batch-1 forward {IDLE_FORWARD_MS:.0f} ms): about "
        f"{IDLE_FORWARD_MS + overhead:.0f} ms p50 (an estimate, not a measurement).",
        "",
        f"Background removal: {bg_note}",
        "",
    ]
    lines += [
        f"### (b) Indexing throughput (batch size {args.batch_size}, {args.repeats} interleaved repeats, "
        "fresh index each time)",
        "",
        "| path | median img/s | img/s per run | median CPU ms/img | CPU ms/img per run |",
        "|---|---:|---|---:|---|",
        f"| raw `encoder.embed_images` (images pre-loaded, pre-decoded) | {raw_med:.1f} "
        f"| {', '.join(f'{x:.1f}' for x in idx['raw'])} | {raw_cpu:.0f} "
        f"| {', '.join(f'{x:.0f}' for x in idx['raw_cpu_ms'])} |",
        f"| `engine.index_catalog` (hash + decode + embed + upsert + optimize) | {eng_med:.1f} "
        f"| {', '.join(f'{x:.1f}' for x in idx['engine'])} | {eng_cpu:.0f} "
        f"| {', '.join(f'{x:.0f}' for x in idx['engine_cpu_ms'])} |",
        "",
        f"index_catalog / raw: **{pair_ratio:.0%} by wall clock** (median of the paired runs) and "
        f"**{cpu_ratio:.0%} by CPU time** (raw CPU ms/img over index_catalog CPU ms/img). Target >= "
        f"{THROUGHPUT_TARGET:.0%}: {'met' if pair_ratio >= THROUGHPUT_TARGET else 'missed'} by wall clock, "
        f"{'met' if cpu_ratio >= THROUGHPUT_TARGET else 'missed'} by CPU time. Both paths saturate the 2 cores, "
        "so on an idle machine the wall ratio approaches the CPU ratio; on this shared machine the wall "
        "clock of each run swings with other people's load (see the per-run columns), the CPU time much less.",
        "",
        f"Where one instrumented index_catalog run spends its {idx['profile_wall']:.2f} s "
        "(summed time per call site; decoding runs on the engine's prefetch threads, overlapping embedding):",
        "",
        "| phase | seconds | calls | share of wall |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in sorted(idx["phases"].items(), key=lambda kv: -kv[1]):
        lines.append(
            f"| {name} | {seconds:.2f} | {idx['calls'][name]} | {seconds / idx['profile_wall']:.0%} |"
        )
    embed_s = idx["phases"].get("embed (preprocess + model)", 0.0)
    outside = idx["profile_wall"] - embed_s
    lines += [
        "",
        f"In that run {outside:.2f} s ({outside / idx['profile_wall']:.1%}) of the wall clock is spent outside "
        f"`embed_images` (hashing, collection setup, upserts, optimize, waiting for decodes); decoding "
        f"({idx['phases'].get('decode + sanitize (prefetch threads)', 0.0):.2f} s of CPU) overlaps embedding but "
        "shares the 2 cores with it. For scale: raw embedding of these images takes "
        f"{idx['images'] / raw_med:.2f} s (median); preprocessing alone (resize + crop + normalise, one thread) "
        f"{idx['preprocess_serial_s']:.2f} s.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str, heading: str = SECTION) -> None:
    """Write (or replace) the ``heading`` section of a results file; the other bench scripts use it too."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    path.write_text(text.rstrip() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=SAMPLE)
    ap.add_argument("--queries", type=int, default=30, help="photo queries for (a)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved raw/index runs for (b)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--runtime",
        choices=("torch", "onnx", "onnx-int8", "auto"),
        default="torch",
        help="inference runtime of the encoder (default torch, the eager baseline; auto = the CPU default)",
    )
    ap.add_argument("--no-background", action="store_true", help="skip the background-removal rows")
    ap.add_argument("--out", type=Path, help="Markdown file whose 'End-to-end' section is (re)written")
    args = ap.parse_args(argv)
    args.catalog = args.catalog.resolve()

    info = machine()
    info["load_start"] = info["load"]
    catalog = read_catalog(args.catalog)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        encoder = create_encoder(
            f"ViT-B-32@{random_vit_b_32(work)}", device="cpu", cache_dir=str(work), runtime=args.runtime
        )
        log(f"encoder {encoder.model_id} on {encoder.runtime}, {len(catalog.images)} catalog images")
        info["runtime"] = encoder.runtime

        log("(b) indexing throughput")
        idx = bench_indexing(encoder, catalog, args.batch_size, args.repeats, work)

        log("(a) query latency")
        engine = SearchEngine(encoder, open_store(work / "index", None, None))
        engine.index_catalog(catalog, batch_size=args.batch_size)
        paths = [
            q.image for q in synthetic_queries(catalog, n=args.queries, out_dir=work / "queries", seed=0)
        ]
        queries = bench_queries(engine, paths, remove_background=False)
        log(f"  p50 {percentile(queries['wall'], 50):.0f} ms, p95 {percentile(queries['wall'], 95):.0f} ms")

        bg, bg_note = None, "not measured (--no-background)."
        if not args.no_background:
            try:
                from registry_assets import U2NETP, fetch

                os.environ.setdefault("U2NET_HOME", str(fetch(U2NETP).parent))
                engine.background_remover.session()
                bg = bench_queries(engine, paths, remove_background=True)
                bg_note = (
                    f"rembg u2netp from {os.environ['U2NET_HOME']}, on the same photos"
                    + (
                        f"; {len(bg['bg_missing'])} photos fell back to the whole image"
                        if bg.get("bg_missing")
                        else ""
                    )
                    + "."
                )
                log(f"  with background removal: p50 {percentile(bg['wall'], 50):.0f} ms")
            except Exception as exc:  # noqa: BLE001 - no model file / no network: report, do not fail
                bg_note = f"unavailable ({exc})."
        engine.close()

    info.update(load=machine()["load"])
    section = report(args, info, idx, queries, bg, bg_note)
    print(section)
    if args.out:
        write_section(args.out, section)
        log(f"wrote the '{SECTION[3:]}' section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
