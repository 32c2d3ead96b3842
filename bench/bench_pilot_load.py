"""Pilot load and fault bench (issue 7): many shoppers, a wave of huge photos, slow image links.

Loopback only and bounded. It drives the **engine-level path** the UI calls for every photo query,
``images.load_image`` + ``SearchEngine.search``, in threads inside this process (the UI is being
rewritten, so its HTTP API is not a stable target); this process plays the server, so RSS is read
from /proc/self/status. The engine uses the tiny random CLIP (``test:tiny``, CPU) on a fresh
embedded index of 12 generated products in a temporary folder.

Scenarios (all three when none is named):

- ``--clients N --queries M``: N threads each send M photo queries (JPEG bytes, like an upload);
  success count, p50/p95 latency, throughput.
- ``--memory-wave``: 8 concurrent queries of a 99 MP PNG (flat colour, ~100 KB on disk), then the
  same with a 99 MP JPEG (decoded at reduced size) and a 36 MP PNG (decoded at full size, one at a
  time); RSS before, peak and after each wave. Target: back within 300 MB of the start.
- ``--slow-links``: 8 image links that drip 1 byte every 0.2 s (a loopback server; 4 download, 4
  wait on the fetch pool) while normal photo searches run; search latency against a quiet
  baseline, when the drips end, and what a 9th link gets while the download pool is full.

    python bench/bench_pilot_load.py --clients 20 --queries 20 --memory-wave --slow-links
"""

from __future__ import annotations

import argparse
import http.server
import io
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ipaddress  # noqa: E402

import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from visual_search import fetch as fetch_module  # noqa: E402
from visual_search.core.errors import VisualSearchError  # noqa: E402
from visual_search.encoders import create_encoder  # noqa: E402
from visual_search.engine import SearchEngine  # noqa: E402
from visual_search.images.fetch import FetchPolicy  # noqa: E402
from visual_search.images.load import load_image, release_memory  # noqa: E402
from visual_search.store import open_store  # noqa: E402

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 200, 40), (40, 200, 200), (200, 40, 200)]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, colour)
    img.paste((255, 255, 255), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def flat_png(width: int, height: int, grey: int = 90) -> bytes:
    """A flat greyscale PNG of any size, tiny on disk, built without allocating its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes([grey]) * width
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def build_engine(tmp: Path) -> SearchEngine:
    images = tmp / "images"
    images.mkdir()
    rows = []
    for i in range(12):
        path = images / f"p{i}.jpg"
        path.write_bytes(jpeg(COLOURS[i % len(COLOURS)], (300 + 10 * i, 240)))
        rows.append(
            {"product_id": f"p{i}", "image": f"images/p{i}.jpg", "title": f"Product {i}", "price": 10 + i}
        )
    pd.DataFrame(rows).to_csv(tmp / "catalog.csv", index=False)
    engine = SearchEngine(create_encoder("test:tiny", device="cpu"), open_store(tmp / "index", None, None))
    report = engine.index_catalog(tmp / "catalog.csv")
    assert report.embedded == 12, report.summary()
    return engine


def query(engine: SearchEngine, photo: bytes | str, policy: FetchPolicy | None = None) -> float:
    """One photo query as the UI runs it; returns milliseconds (raises on failure)."""
    started = time.perf_counter()
    image = load_image(photo, policy=policy)
    engine.search(image=image, top_k=8)
    return (time.perf_counter() - started) * 1000


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------------------- scenarios


def clients_scenario(engine: SearchEngine, clients: int, queries: int) -> list[str]:
    photos = [jpeg(c, (640, 480)) for c in COLOURS]
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for q in range(queries):
            try:
                ms = query(engine, photos[(n + q) % len(photos)])
                with lock:
                    latencies.append(ms)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    total = clients * queries
    lines = [
        f"### {clients} clients x {queries} photo queries (640x480 JPEG bytes, engine-level, threads)",
        "",
        "| queries | succeeded | failed | p50 ms | p95 ms | wall s | queries/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {total} | {len(latencies)} | {len(failures)} | {pct(latencies, 0.5):.0f} | {pct(latencies, 0.95):.0f} "
        f"| {wall:.1f} | {total / wall:.1f} |",
    ]
    if failures:
        lines.append(f"\nFirst failure: {failures[0]}")
    return lines


class RssSampler:
    """Peak RSS while a wave runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def memory_scenario(engine: SearchEngine) -> list[str]:
    release_memory()
    start = rss_mb()
    big_jpeg_src = Image.new("L", (11_000, 9_000), 120)
    buf = io.BytesIO()
    big_jpeg_src.save(buf, "JPEG", quality=80)
    del big_jpeg_src
    waves: list[tuple[str, bytes]] = [
        ("99 MP PNG (11000x9000, flat)", flat_png(11_000, 9_000)),
        ("99 MP JPEG (11000x9000)", buf.getvalue()),
        ("36 MP PNG (6000x6000, decoded in full)", flat_png(6_000, 6_000)),
    ]
    del buf
    release_memory()
    start = rss_mb()
    lines = [
        "### Memory wave: 8 concurrent queries of one huge photo, 3 waves per kind (engine-level, threads)",
        "",
        f"RSS at start (model and index loaded, test photos built): {start:.0f} MB. Target: after <= start + 300 MB.",
        "",
        "| photo | on disk | answered | refused (message) | peak RSS MB | RSS after MB | after - start MB |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for label, data in waves:
        outcomes: list[str] = []
        with RssSampler() as sampler:
            for _ in range(3):
                with ThreadPoolExecutor(8) as pool:
                    outcomes += list(pool.map(lambda d: _try(lambda: query(engine, d)), [data] * 8))
        after = rss_mb()
        answered = sum(o == "ok" for o in outcomes)
        refused = sorted({o for o in outcomes if o != "ok"})
        message = refused[0][:90] if refused else "-"
        lines.append(
            f"| {label} | {len(data) / 1024:.0f} KB | {answered}/{len(outcomes)} | {message} "
            f"| {sampler.peak:.0f} | {after:.0f} | {after - start:+.0f} |"
        )
    return lines


def _try(fn: Callable[[], object]) -> str:
    try:
        fn()
        return "ok"
    except VisualSearchError as exc:
        return str(exc)


class DripHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            for _ in range(600):  # at most 2 minutes, long after any client gave up
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            return

    def log_message(self, *args: object) -> None:
        pass


def slow_links_scenario(engine: SearchEngine) -> list[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DripHandler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/drip.png"
    # The app's default deadline (10 s); loopback stands in for "the internet" here.
    policy = FetchPolicy(is_allowed=lambda ip: ip == ipaddress.ip_address("127.0.0.1"), timeout_s=10.0)
    photo = jpeg((200, 30, 30), (640, 480))

    def searches(n: int) -> list[float]:
        return [query(engine, photo) for _ in range(n)]

    quiet = searches(10)
    drip_results: list[tuple[float, str]] = []

    def drip() -> None:
        started = time.perf_counter()
        outcome = _try(lambda: query(engine, url, policy))
        drip_results.append((time.perf_counter() - started, outcome))

    drips = [threading.Thread(target=drip) for _ in range(8)]
    for t in drips:
        t.start()
    time.sleep(0.5)  # 4 links downloading on the fetch pool, 4 queued behind them
    busy = searches(10)
    ninth_started = time.perf_counter()
    ninth = _try(lambda: query(engine, url, policy))
    ninth_ms = (time.perf_counter() - ninth_started) * 1000
    for t in drips:
        t.join()
    httpd.shutdown()
    httpd.server_close()
    cut = [s for s, _ in drip_results]
    return [
        "### Slow links: 8 links dripping 1 byte / 0.2 s (4 downloading, 4 queued) while photo searches run "
        "(engine-level, threads)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| photo search p50 / p95, quiet | {pct(quiet, 0.5):.0f} / {pct(quiet, 0.95):.0f} ms |",
        f"| photo search p50 / p95, 8 drip links in flight | {pct(busy, 0.5):.0f} / {pct(busy, 0.95):.0f} ms |",
        f"| drip links ended after (deadline 10 s, queue time included) | {min(cut):.1f}-{max(cut):.1f} s |",
        f"| drip link outcomes | {'; '.join(sorted({o.replace(url, 'LINK') for _, o in drip_results}))} |",
        f"| 9th link while the pool is full | {ninth.replace(url, 'LINK')} ({ninth_ms:.0f} ms) |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=0, help="concurrent shoppers (e.g. 20)")
    parser.add_argument("--queries", type=int, default=20, help="photo queries per shopper")
    parser.add_argument("--memory-wave", action="store_true")
    parser.add_argument("--slow-links", action="store_true")
    args = parser.parse_args(argv)
    if not (args.clients or args.memory_wave or args.slow_links):
        args.clients, args.memory_wave, args.slow_links = 20, True, True
    fetch_module.configure_pool(workers=4, queued=4)
    with tempfile.TemporaryDirectory(prefix="vs-pilot-bench-") as tmp:
        engine = build_engine(Path(tmp))
        out = [
            "## Pilot load (bench/bench_pilot_load.py)",
            "",
            f"Engine-level path (images.load_image + SearchEngine.search) in threads of this process, "
            f"model test:tiny on CPU, 12 products, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS')}. Loopback only.",
            "",
        ]
        try:
            if args.clients:
                out += clients_scenario(engine, args.clients, args.queries) + [""]
            if args.memory_wave:
                out += memory_scenario(engine) + [""]
            if args.slow_links:
                out += slow_links_scenario(engine) + [""]
        finally:
            engine.close()
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
