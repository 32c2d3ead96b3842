"""Benchmark the vector store backends on clustered and on uniform random unit vectors.

Two kinds of data (``--data``): ``clustered`` (points around N/1000 random centres: easy, like
catalog photos of similar products) and ``uniform`` (unit vectors with no structure at all: the
hard case, where HNSW recall at a given ef is lowest; report it beside the easy one so recall
figures are not flattered by the data).

For each size, in one run:
  * Qdrant Edge through ``visual_search.store.EdgeStore`` (the code the app runs), for several
    index configs (HNSW m / ef_construct, optional int8 scalar quantization with rescoring):
    upsert time, optimize (HNSW build) time, then for each ``hnsw_ef`` p50/p95 latency and
    recall@10 against exact numpy, unfiltered and filtered (one category + a price range);
  * numpy exact search (matmul + argpartition), p50/p95;
  * qdrant-client local mode (``QdrantClient(path=...)`` through ``RemoteStore``), only up to
    ``--local-mode-max`` points because it is a pure-Python brute force.

Peak RSS (getrusage) is reported per row. Output: a Markdown report on stdout, written to ``--out``.

    python bench/bench_vector_store.py --sizes 10000,100000 --out bench/RESULTS_vector_store.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visual_search.core.types import CATEGORY, PRICE, IndexPoint, SearchFilters  # noqa: E402
from visual_search.store import EdgeStore, RemoteStore  # noqa: E402

CATEGORIES = tuple(f"cat{i}" for i in range(8))
PRICE_RANGE = (50.0, 250.0)  # with one of 8 categories: ~5% of the points pass the filter
MODEL_ID = "bench-random"


@dataclass(frozen=True)
class EdgeConfigSpec:
    name: str
    m: int
    ef_construct: int
    quantization: bool


CONFIGS = {
    "m16": EdgeConfigSpec("m16/efc100", 16, 100, False),
    "m32": EdgeConfigSpec("m32/efc200", 32, 200, False),
    "m16-int8": EdgeConfigSpec("m16/efc100+int8", 16, 100, True),
    "m32-int8": EdgeConfigSpec("m32/efc200+int8", 32, 200, True),
}


@dataclass
class Row:
    n: int
    backend: str
    config: str
    ef: str
    upsert_s: float | None
    build_s: float | None
    build_cpu_s: float | None
    p50: float
    p95: float
    cpu50: float
    recall: float | None
    f_p50: float | None
    f_p95: float | None
    f_recall: float | None
    peak_rss_mb: float


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def unit_rows(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Dataset:
    x: np.ndarray  # (n, dim) unit vectors
    cats: np.ndarray  # (n,) category index
    price: np.ndarray  # (n,) float
    q: np.ndarray  # (nq, dim) unit queries
    q_cats: np.ndarray  # (nq,) category index for filtered queries
    ids: list[str]


def make_dataset(
    n: int, dim: int, n_queries: int, clusters: int, noise: float, seed: int, kind: str = "clustered"
) -> Dataset:
    """``clustered``: ``clusters`` random unit centres; each point is centre + isotropic noise of
    norm ~``noise``, normalised. Queries are fresh draws from the same mixture (new photos of
    similar products). ``uniform``: independent uniformly random unit vectors (no structure)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((clusters, dim)))

    def draw(k: int) -> np.ndarray:
        out = np.empty((k, dim), dtype=np.float32)
        for start in range(0, k, 50_000):
            stop = min(k, start + 50_000)
            gauss = rng.standard_normal((stop - start, dim)).astype(np.float32)
            if kind == "uniform":
                out[start:stop] = unit_rows(gauss)
                continue
            c = rng.integers(0, clusters, stop - start)
            out[start:stop] = unit_rows(centres[c] + gauss * (noise / np.sqrt(dim)))
        return out

    x = draw(n)
    q = draw(n_queries)
    cats = rng.integers(0, len(CATEGORIES), n)
    price = np.round(rng.uniform(5.0, 500.0, n), 2)
    q_cats = rng.integers(0, len(CATEGORIES), n_queries)
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{i}")) for i in range(n)]
    return Dataset(x, cats, price, q, q_cats, ids)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    scores = x @ q
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    idx = np.argpartition(-scores, k)[:k]
    return idx[np.argsort(-scores[idx])]


def filter_mask(ds: Dataset, cat: int) -> np.ndarray:
    return (ds.cats == cat) & (ds.price >= PRICE_RANGE[0]) & (ds.price <= PRICE_RANGE[1])


def ground_truth(ds: Dataset, k: int) -> tuple[list[set[int]], list[set[int]]]:
    plain, filtered = [], []
    for i, qv in enumerate(ds.q):
        plain.append(set(exact_topk(ds.x, qv, k).tolist()))
        filtered.append(set(exact_topk(ds.x, qv, k, filter_mask(ds, int(ds.q_cats[i]))).tolist()))
    return plain, filtered


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux


def percentiles(times_s: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(times_s) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def timed_queries(
    fn: Callable[[int], list[int]], n_queries: int, warmup: int = 10
) -> tuple[list[float], list[float], list]:
    """Wall time and process CPU time (all threads) per query. CPU time is what a query costs
    when the cores are shared with other work; wall time is what a user waits."""
    for i in range(min(warmup, n_queries)):
        fn(i)
    times, cpu, results = [], [], []
    for i in range(n_queries):
        c = time.process_time()
        t = time.perf_counter()
        res = fn(i)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        results.append(res)
    return times, cpu, results


def recall(results: Sequence[Sequence[int]], truth: Sequence[set[int]], k: int) -> float:
    return float(
        np.mean([len(set(r[:k]) & t) / max(1, min(k, len(t))) for r, t in zip(results, truth, strict=True)])
    )


def index_points(ds: Dataset) -> list[IndexPoint]:
    return [
        IndexPoint(ds.ids[i], ds.x[i], {CATEGORY: CATEGORIES[int(ds.cats[i])], PRICE: float(ds.price[i])})
        for i in range(len(ds.ids))
    ]


def query_filter(ds: Dataset, i: int) -> SearchFilters:
    return SearchFilters(
        categories=(CATEGORIES[int(ds.q_cats[i])],), min_price=PRICE_RANGE[0], max_price=PRICE_RANGE[1]
    )


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


def bench_store(
    store, ds: Dataset, truth, k: int, label: str, config: str, efs: Sequence[int | None], log
) -> list[Row]:
    id_to_idx = {pid: i for i, pid in enumerate(ds.ids)}
    points = index_points(ds)
    store.ensure_collection(ds.x.shape[1], MODEL_ID)
    t = time.perf_counter()
    store.upsert(points)
    upsert_s = time.perf_counter() - t
    del points
    t = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = time.process_time()
    store.optimize()
    build_s = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the optimize child (or of this process where it ran in-process)
    build_cpu_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    build_cpu_s += time.process_time() - own
    segments = store._shard.info().segments_count if isinstance(store, EdgeStore) else "-"
    log(
        f"  {label} {config}: upsert {upsert_s:.1f}s, optimize {build_s:.1f}s "
        f"(CPU {build_cpu_s:.1f}s), segments {segments}"
    )
    rows = []
    nq = len(ds.q)
    for ef in efs:
        if ef is not None:
            store.hnsw_ef = ef

        def plain(i: int) -> list[int]:
            return [id_to_idx[h.id] for h in store.search(ds.q[i], k)]

        def filtered(i: int) -> list[int]:
            return [id_to_idx[h.id] for h in store.search(ds.q[i], k, query_filter(ds, i))]

        times, cpu, res = timed_queries(plain, nq)
        f_times, _, f_res = timed_queries(filtered, nq)
        p50, p95 = percentiles(times)
        f50, f95 = percentiles(f_times)
        row = Row(
            len(ds.ids),
            label,
            config,
            "-" if ef is None else str(ef),
            upsert_s,
            build_s,
            build_cpu_s,
            p50,
            p95,
            percentiles(cpu)[0],
            recall(res, truth[0], k),
            f50,
            f95,
            recall(f_res, truth[1], k),
            peak_rss_mb(),
        )
        log(
            f"    ef={row.ef}: p50 {p50:.2f} ms p95 {p95:.2f} ms cpu {row.cpu50:.2f} ms recall {row.recall:.3f} | "
            f"filtered p50 {f50:.2f} ms recall {row.f_recall:.3f}"
        )
        rows.append(row)
    return rows


def bench_numpy(ds: Dataset, k: int, truth) -> Row:
    def plain(i: int) -> list[int]:
        return exact_topk(ds.x, ds.q[i], k).tolist()

    def filtered(i: int) -> list[int]:
        return exact_topk(ds.x, ds.q[i], k, filter_mask(ds, int(ds.q_cats[i]))).tolist()

    times, cpu, res = timed_queries(plain, len(ds.q))
    f_times, _, f_res = timed_queries(filtered, len(ds.q))
    p50, p95 = percentiles(times)
    f50, f95 = percentiles(f_times)
    return Row(
        len(ds.ids),
        "numpy exact",
        "float32 matmul",
        "-",
        None,
        None,
        None,
        p50,
        p95,
        percentiles(cpu)[0],
        recall(res, truth[0], k),
        f50,
        f95,
        recall(f_res, truth[1], k),
        peak_rss_mb(),
    )


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: Sequence[Row]) -> str:
    head = (
        "| N | backend | config | hnsw_ef | upsert s | build s | build CPU s | p50 ms | p95 ms | CPU p50 ms | "
        "recall@10 | filtered p50 ms | filtered p95 ms | filtered recall@10 | peak RSS MB |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r.n:,} | {r.backend} | {r.config} | {r.ef} | {fmt(r.upsert_s, '.1f')} | {fmt(r.build_s, '.1f')} | "
        f"{fmt(r.build_cpu_s, '.1f')} | "
        f"{r.p50:.2f} | {r.p95:.2f} | {r.cpu50:.2f} | {fmt(r.recall, '.3f')} | {fmt(r.f_p50, '.2f')} | {fmt(r.f_p95, '.2f')} | "
        f"{fmt(r.f_recall, '.3f')} | {r.peak_rss_mb:,.0f} |\n"
        for r in rows
    )
    return head + body


def summary(rows: Sequence[Row], target_recall: float, target_ms: float) -> str:
    lines = [
        f"Per size and config: the smallest hnsw_ef reaching recall@10 >= {target_recall} (unfiltered), "
        "and the fastest ef that does (latencies are noisy on shared cores, so both are shown):",
        "",
    ]
    keys = sorted({(r.n, r.config) for r in rows if r.backend == "qdrant-edge"})
    for n, config in keys:
        cands = [r for r in rows if r.backend == "qdrant-edge" and r.n == n and r.config == config]
        ok = [r for r in cands if r.recall is not None and r.recall >= target_recall]
        if not ok:
            best = max(cands, key=lambda r: r.recall or 0)
            lines.append(f"- {n:,} {config}: none (best recall {best.recall:.3f} at ef={best.ef})")
            continue
        smallest = min(ok, key=lambda r: int(r.ef))
        fastest = min(ok, key=lambda r: r.p50)
        parts = []
        for label, r in (("smallest", smallest), ("fastest", fastest)):
            verdict = "meets" if r.p50 <= target_ms else "misses"
            parts.append(
                f"{label} ef={r.ef}: p50 {r.p50:.2f} ms (CPU {r.cpu50:.2f} ms), p95 {r.p95:.2f} ms, "
                f"recall {r.recall:.3f}, filtered recall {r.f_recall:.3f}, {verdict} {target_ms:g} ms"
            )
        lines.append(f"- {n:,} {config}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated point counts")
    ap.add_argument(
        "--with-1m", action="store_true", help="also run 1,000,000 points (~2 GB of vectors at 512-d)"
    )
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--clusters", type=int, default=0, help="mixture components (default: N/1000, at least 16)"
    )
    ap.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the unit cluster centre")
    ap.add_argument(
        "--data", default="clustered,uniform", help="datasets: clustered (easy), uniform (no structure: hard)"
    )
    ap.add_argument(
        "--threads",
        default="0",
        help="HNSW build thread caps to sweep (EdgeStore indexing_threads; 0 = auto)",
    )
    ap.add_argument("--ef", default="32,64,128,256", help="hnsw_ef values to sweep")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"Edge index configs: {', '.join(CONFIGS)}")
    ap.add_argument(
        "--local-mode-max", type=int, default=10_000, help="largest N for qdrant-client local mode"
    )
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--target-ms", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where shards go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    ap.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    args = ap.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.with_1m and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    efs = [int(e) for e in args.ef.split(",") if e]
    configs = [CONFIGS[c] for c in args.configs.split(",") if c]
    kinds = [d for d in args.data.split(",") if d]
    if any(k not in ("clustered", "uniform") for k in kinds):
        ap.error("--data takes clustered and/or uniform")
    thread_caps = [int(t) for t in args.threads.split(",") if t]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench_vs_", dir=args.workdir))
    rows: list[Row] = []
    try:
        for n in sizes:
            for kind in kinds:
                clusters = args.clusters or max(16, n // 1000)
                shape = f"{clusters} clusters, noise {args.noise}" if kind == "clustered" else "no structure"
                log(f"N={n:,} {kind}: generating {args.dim}-d data, {shape}")
                ds = make_dataset(n, args.dim, args.queries, clusters, args.noise, args.seed, kind)
                truth = ground_truth(ds, args.k)
                rows.append(bench_numpy(ds, args.k, truth))
                rows[-1].config = f"{kind}: {rows[-1].config}"
                log(f"  numpy exact: p50 {rows[-1].p50:.2f} ms")
                for spec in configs:
                    for threads in thread_caps:
                        path = workdir / f"edge_{n}_{kind}_{spec.m}_{int(spec.quantization)}_{threads}"
                        store = EdgeStore(
                            path,
                            hnsw_m=spec.m,
                            ef_construct=spec.ef_construct,
                            quantization=spec.quantization,
                            indexing_threads=threads,
                        )
                        label = f"{kind}: {spec.name}, threads {threads or 'auto'}"
                        try:
                            rows += bench_store(store, ds, truth, args.k, "qdrant-edge", label, efs, log)
                        finally:
                            store.close()
                            shutil.rmtree(path, ignore_errors=True)
                        gc.collect()
                if n <= args.local_mode_max:
                    from qdrant_client import QdrantClient

                    path = workdir / f"local_{n}"
                    store = RemoteStore(client=QdrantClient(path=str(path)), collection="bench")
                    try:
                        rows += bench_store(
                            store, ds, truth, args.k, "qdrant-client local", "exact (Python)", [None], log
                        )
                    finally:
                        store.close()
                        shutil.rmtree(path, ignore_errors=True)
                del ds, truth
                gc.collect()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    load_after = os.getloadavg()
    report = "\n".join(
        [
            f"## Vector store benchmark, {started:%Y-%m-%d %H:%M} UTC",
            "",
            f"- Machine: {os.cpu_count()} CPU cores ({cpu_model()}), "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, qdrant-edge-py {version('qdrant-edge-py')}, "
            f"qdrant-client {version('qdrant-client')}, numpy {np.__version__}",
            f"- Load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
            f"after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}",
            f"- Command: `python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`",
            f"- Data ({', '.join(kinds)}): {args.dim}-d unit vectors; clustered: clusters = max(16, N/1000) "
            f"(or --clusters), noise {args.noise}, queries drawn from the same mixture; uniform: independent "
            f"random unit vectors and queries (no structure); {args.queries} queries; payload: 8 categories + uniform price 5-500. "
            f"Filtered = one category AND price {PRICE_RANGE[0]:g}-{PRICE_RANGE[1]:g} (~5% of points). "
            f"Recall@{args.k} against exact numpy (filtered: exact over the filtered subset). "
            "Latency = one `store.search()` call from Python, payload included, single client thread; "
            "CPU = process CPU time per query (all threads), which is less sensitive to other load. "
            "Build CPU = CPU time of the optimize (HNSW build) child process, all threads: build CPU / build s "
            "above 1 means the build ran on more than one core.",
            "",
            table(rows),
            summary(rows, args.target_recall, args.target_ms),
        ]
    )
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a" if args.append else "w", encoding="utf-8") as fh:
            if not args.append:
                fh.write("# Vector store benchmark results\n\n")
            fh.write(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
