"""Time the catalog view (``info`` / the Catalog tab) on a large Qdrant Edge index.

Builds (or, with ``--reuse``, reopens) an index of N points with product-like payloads through
``visual_search.store.EdgeStore`` (the code the app runs): products with 1-3 images, 40
categories, 500 brands, log-normal prices, word titles, spread ``indexed_at`` stamps. The
vectors are small (``--dim``, default 16) because nothing here reads a vector: the view is
payload-index counts, facets and ordered reads, so the payload side is what a 1M-product
catalog costs. Then it times, warm and cold:

  * ``SearchEngine.status()`` (what ``python -m visual_search info`` prints, minus start-up),
    without and with the summary saved at the end of indexing;
  * ``stats.catalog_stats`` (status tiles, facets, price histogram: the Catalog tab) computed
    from the index, then read from the saved summary and through ``StatsCache``;
  * ``stats.find_products`` (the product picker: first 2,000, and a typed query);
  * opening the index (``EdgeStore(...)``: shard load), which ``info`` pays once;
  * optionally (``--scan-baseline``) one full scroll of the payloads, which is what status,
    facets, choices and the price list each did before.
  * optionally (``--info-cli``) ``info`` itself: in this process and as a fresh
    ``python -m visual_search info`` (interpreter start included), from the summary saved in
    meta.json and by the old path (``--open-index``: shard load + model load).

``--no-optimize`` skips the HNSW build after upserting (20+ minutes at 1M on 2 cores); nothing timed
here reads the vector index, but the shard opened is then unoptimised (say so beside its figures).
The index lies under ``<workdir>/data_<N>/edge_store``, so ``--data-dir <workdir>/data_<N>`` opens it.

    python bench/bench_catalog_view.py --points 1000000 --workdir /tmp/cv --out bench/RESULTS_catalog_view.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visual_search import stats  # noqa: E402
from visual_search.core.types import IndexPoint  # noqa: E402
from visual_search.engine import SearchEngine  # noqa: E402
from visual_search.store import EDGE_SUBDIR, EdgeStore  # noqa: E402

WORDS = [
    "red",
    "blue",
    "green",
    "black",
    "white",
    "leather",
    "canvas",
    "running",
    "trail",
    "classic",
    "slim",
    "wide",
    "soft",
    "hard",
    "mini",
    "large",
    "vintage",
    "modern",
    "wool",
    "cotton",
    "steel",
    "glass",
    "ceramic",
    "oak",
    "linen",
    "silk",
    "bag",
    "shoe",
    "mug",
    "lamp",
    "chair",
    "table",
    "jacket",
    "shirt",
    "dress",
    "watch",
    "ring",
    "hat",
    "scarf",
    "bottle",
    "kettle",
    "pan",
    "knife",
    "sofa",
    "rug",
    "clock",
]
# The id `--model test:tiny` reports: the CLI runs of `info` below find the index built by the configured
# model (no mismatch note). The vectors are random either way: nothing here searches.
MODEL_ID = "test:tiny@random-seed0"


class _NoEncoder:
    """status() reads these attributes only; no model is loaded."""

    model_id = MODEL_ID
    device = "cpu"
    supports_text = False

    def __init__(self, dim: int) -> None:
        self.dim = dim


def build(
    path: Path,
    n_points: int,
    dim: int,
    chunk: int,
    seed: int,
    log: Callable[[str], None],
    optimize: bool = True,
) -> dict:
    """Upsert ``n_points`` product images in chunks, then optimize (unless told not to: the HNSW
    graph is what takes ~20+ min at 1M on 2 cores, and nothing timed here reads it); returns timings."""
    rng = np.random.default_rng(seed)
    store = EdgeStore(path)
    store.ensure_collection(dim, MODEL_ID)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    made = product = 0
    t0 = time.perf_counter()
    while made < n_points:
        points: list[IndexPoint] = []
        while len(points) < chunk and made < n_points:
            images = int(rng.choice((1, 1, 1, 2, 3)))
            pid = f"P{product:08d}"
            title = " ".join(rng.choice(WORDS, 3)).capitalize()
            category = f"category-{int(rng.integers(0, 40)):02d}"
            brand = f"brand-{int(rng.zipf(1.5)) % 500:03d}"
            price = None if rng.random() < 0.03 else round(float(rng.lognormal(3.5, 1.0)), 2)
            stamp = (start + dt.timedelta(minutes=int(rng.integers(0, 480_000)))).isoformat(
                timespec="seconds"
            )
            for i in range(min(images, n_points - made)):
                payload = {
                    "product_id": pid,
                    "image_index": i,
                    "image": f"/catalog/{pid}-{i}.jpg",
                    "title": title,
                    "category": category,
                    "brand": brand,
                    "price": price,
                    "indexed_at": stamp,
                }
                vid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cv/{pid}/{i}"))
                points.append(IndexPoint(vid, rng.standard_normal(dim).astype(np.float32), payload))
                made += 1
            product += 1
        store.upsert(points)
        log(f"  upserted {made:,} points ({product:,} products), {time.perf_counter() - t0:.0f} s")
    upsert_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if optimize:
        store.optimize()
    optimize_s = time.perf_counter() - t1
    store.close()
    return {"upsert_s": upsert_s, "optimize_s": optimize_s, "products": product}


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(first call ms, median of the next ``repeat`` calls ms, last result)."""
    t = time.perf_counter()
    result = fn()
    first = (time.perf_counter() - t) * 1000
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        runs.append((time.perf_counter() - t) * 1000)
    return first, statistics.median(runs) if runs else first, result


def time_info_cli(
    data_dir: Path, repeat: int, old_repeat: int, log: Callable[[str], None]
) -> list[tuple[str, float, float, str]]:
    """`info` on the index under ``data_dir`` (its summary saved): in this process (imports warm)
    and as a fresh ``python -m visual_search info`` (interpreter, imports and all), from the
    saved summary and by the old path (``--open-index``: shard load + model load)."""
    from visual_search.cli import info as info_cli
    from visual_search.core.config import Settings

    flags = ["--data-dir", str(data_dir), "--model", "test:tiny", "--device", "cpu", "--runtime", "torch"]
    settings = Settings.from_args(
        info_cli.add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(flags)
    )
    rows: list[tuple[str, float, float, str]] = []

    def add(name: str, fn: Callable[[], Any], n: int, note: Callable[[Any], str]) -> None:
        log(f"timing {name}")
        first, warm, result = timed(fn, n)
        rows.append((name, first, warm, note(result)))

    def counts(status: Any) -> str:
        return f"{status.products:,} products, {status.store.points:,} images"

    add(
        "`info` in-process, saved summary (cli.info.status_from_summary)",
        lambda: info_cli.status_from_summary(settings),
        repeat,
        counts,
    )
    add(
        "`info` in-process, old path: open the index + load the model (cli.info.status_from_index)",
        lambda: info_cli.status_from_index(settings),
        old_repeat,
        counts,
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VS_", "QDRANT"))}
    root = Path(__file__).resolve().parents[1]

    def cli(*extra: str, code: Sequence[str] | None = None) -> Callable[[], str]:
        argv = [sys.executable, *(code or ["-m", "visual_search", "info", "--json", *flags, *extra])]

        def go() -> str:
            done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
            if code:
                return ""
            out = json.loads(done.stdout)
            return f"source {out['source']}: {out['products']:,} products, {out['store']['points']:,} images"

        return go

    add("subprocess: `python -c pass` (interpreter start, for scale)", cli(code=["-c", "pass"]), repeat, str)
    add("subprocess: `python -c 'import torch'` (for scale)", cli(code=["-c", "import torch"]), repeat, str)
    add("subprocess: `python -m visual_search info --json ...`, saved summary", cli(), repeat, str)
    add(
        "subprocess: `python -m visual_search info --json --open-index ...` (old path)",
        cli("--open-index"),
        old_repeat,
        str,
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=50_000, help="points per upsert call")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_catalog_view"))
    ap.add_argument("--reuse", action="store_true", help="reuse an index already built in --workdir")
    ap.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip the HNSW build after upserting (info and the catalog view read no vector index)",
    )
    ap.add_argument("--scan-baseline", action="store_true", help="also time one full payload scroll")
    ap.add_argument(
        "--info-cli",
        action="store_true",
        help="also time `python -m visual_search info` (subprocess and in-process), summary path and old path",
    )
    ap.add_argument(
        "--old-repeat", type=int, default=1, help="extra runs of the slow old-path `info` timings"
    )
    ap.add_argument("--out", type=Path, default=None, help="append the Markdown report here")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    data_dir = args.workdir / f"data_{args.points}"  # what `--data-dir` names: the CLI opens <it>/edge_store
    path = data_dir / EDGE_SUBDIR
    load_before = os.getloadavg()
    built: dict = {}
    if not (args.reuse and path.exists()):
        if path.exists():
            raise SystemExit(f"{path} exists; pass --reuse or remove it")
        log(f"building {args.points:,} points under {path}")
        built = build(path, args.points, args.dim, args.chunk, args.seed, log, not args.no_optimize)
        log(f"built: upsert {built['upsert_s']:.0f} s, optimize {built['optimize_s']:.0f} s")

    t = time.perf_counter()
    store = EdgeStore(path)
    open_ms = (time.perf_counter() - t) * 1000
    rows: list[tuple[str, float, float, str]] = [
        ("open the index (EdgeStore, shard load)", open_ms, open_ms, "")
    ]
    try:
        store._changed()  # drop a summary saved by an earlier run: time the queries first
        engine = SearchEngine(_NoEncoder(args.dim), store)  # type: ignore[arg-type]
        first, warm, status = timed(engine.status, args.repeat)
        rows.append(
            (
                "`info` (SearchEngine.status), no saved summary: 2 index queries",
                first,
                warm,
                f"{status.products:,} products, {status.store.points:,} images",
            )
        )
        first, warm, view = timed(lambda: stats.catalog_stats(store), args.repeat)
        rows.append(
            (
                "Catalog tab view computed from the index (stats.catalog_stats)",
                first,
                warm,
                f"{len(view.categories)} categories, {len(view.brands)} brands, {len(view.price_bins)} price bins",
            )
        )
        t = time.perf_counter()
        stats.catalog_view(store, refresh=True)  # what the end of an indexing run does
        save_ms = (time.perf_counter() - t) * 1000
        rows.append(("end of indexing: compute + save the summary (catalog_view)", save_ms, save_ms, ""))
        first, warm, status = timed(engine.status, args.repeat)
        rows.append(
            ("`info` (SearchEngine.status), saved summary", first, warm, f"{status.products:,} products")
        )
        first, warm, _ = timed(lambda: stats.catalog_view(store), args.repeat)
        rows.append(("Catalog tab view, saved summary (stats.catalog_view)", first, warm, ""))
        cache = stats.StatsCache()
        cache.get(store)
        first, warm, _ = timed(lambda: cache.get(store), args.repeat)
        rows.append(("Catalog tab view, StatsCache.get (index unchanged)", first, warm, ""))
        first, warm, found = timed(lambda: stats.find_products(store, "", 2000), args.repeat)
        rows.append(("product picker: first 2,000", first, warm, f"{len(found):,} choices"))
        first, warm, found = timed(lambda: stats.find_products(store, "leather sho", 2000), args.repeat)
        rows.append(("product picker: typed 'leather sho'", first, warm, f"{len(found):,} choices"))
        if args.scan_baseline:
            t = time.perf_counter()
            seen = sum(1 for _ in store.scroll())
            scan_ms = (time.perf_counter() - t) * 1000
            rows.append(
                ("before: one full payload scroll (old status/stats/choices)", scan_ms, scan_ms, f"{seen:,}")
            )
    finally:
        store.close()
    t = time.perf_counter()
    store = EdgeStore(path)
    reopen_ms = (time.perf_counter() - t) * 1000
    try:
        t = time.perf_counter()
        status = SearchEngine(_NoEncoder(args.dim), store).status()  # type: ignore[arg-type]
        info_ms = (time.perf_counter() - t) * 1000
        rows.append(("a later process: open the index", reopen_ms, reopen_ms, ""))
        rows.append(
            (
                "a later process: `info` status from the saved summary",
                info_ms,
                info_ms,
                f"{status.products:,}",
            )
        )
    finally:
        store.close()

    if args.info_cli:
        rows += time_info_cli(data_dir, args.repeat, args.old_repeat, log)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"## Catalog view at {args.points:,} points, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `python bench/bench_catalog_view.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- Machine: {os.cpu_count()} CPU cores, load average before {load_before[0]:.1f}, "
        f"after {os.getloadavg()[0]:.1f}; peak RSS {rss:,.0f} MB",
    ]
    if built:
        lines.append(
            f"- Index: {args.points:,} points ({built['products']:,} products), {args.dim}-d vectors; "
            f"upsert {built['upsert_s']:.0f} s, optimize {built['optimize_s']:.0f} s"
        )
    lines += [
        "",
        f"| what | first call ms | median of next {args.repeat} ms | result |",
        "|---|---:|---:|---|",
        *(f"| {name} | {a:,.1f} | {b:,.1f} | {note} |" for name, a, b, note in rows),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
