"""Crash-safety of indexing: ``kill -9`` the CLI mid-run, re-run it, count what is stored.

For each kill point (default 30%, 50%, 100% of the images embedded, read from the CLI's own progress
bar) this script:

1. writes a synthetic catalog of N products (one generated JPEG each) once;
2. runs ``python -m visual_search index`` (model ``test:tiny``, CPU) on a fresh data dir, under a
   pseudo-terminal so the progress bar is printed, and sends SIGKILL once the bar reaches the point;
   while that run holds the index it also checks that a second opener is refused (data-dir lock);
3. counts what the killed run left, re-runs the same command to completion, and checks the index:
   exactly N points, N distinct products, no duplicated (product, image) pair, and ``info``/``search``
   answer.

Bounded: N=300 takes about a minute on 2 cores. Loopback/network: none. Usage::

    python bench/bench_index_crash.py --kill-index [--products 300] [--points 30,50,100]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from visual_search.core.errors import StoreUnavailableError  # noqa: E402
from visual_search.store import open_store  # noqa: E402

PROGRESS = re.compile(rb"(\d+)/(\d+)")


def make_catalog(folder: Path, n: int, seed: int = 0) -> Path:
    """N products, one distinct 96x96 JPEG each (random shapes and colours)."""
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["product_id,image,title,category,price"]
    for i in range(n):
        img = Image.new("RGB", (96, 96), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = (int(v) for v in rng.integers(0, 70, 2))
            box = (x0, y0, x0 + int(rng.integers(10, 26)), y0 + int(rng.integers(10, 26)))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        img.save(images / f"p{i:05d}.jpg", quality=90)
        lines.append(f"p{i:05d},images/p{i:05d}.jpg,Product {i},cat{i % 7},{1 + i % 90}.5")
    csv = folder / "catalog.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv


def cli_env(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "VS_MODEL": "test:tiny", "VS_DATA_DIR": str(data_dir), "VS_DEVICE": "cpu"}
    env.pop("QDRANT_URL", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class KilledRun:
    target_pct: int
    done: int
    total: int
    second_open_refused: str  # "yes (pid N)" / "no" / "not tried"
    seconds: float
    killed: bool  # False: the run finished before the signal landed


def run_and_kill(csv: Path, data_dir: Path, target_pct: int, batch_size: int) -> KilledRun:
    """Start the CLI index under a pty; SIGKILL it once done/total >= target_pct."""
    master, slave = pty.openpty()
    # A new pty is 0x0; tqdm would draw a 0-column (empty) bar.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "visual_search", "index", str(csv), "--batch-size", str(batch_size)],
        cwd=ROOT,
        env=cli_env(data_dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,  # tqdm draws its bar only on a terminal
    )
    os.close(slave)
    buf = b""
    done = total = 0
    refused = "not tried"
    try:
        while proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            buf = (buf + chunk)[-4096:]
            matches = PROGRESS.findall(buf)
            if not matches:
                continue
            done, total = (int(v) for v in matches[-1])
            if total and refused == "not tried":
                try:  # the run holds the data dir: a second opener must be refused
                    open_store(data_dir, None, None).close()
                    refused = "no"
                except StoreUnavailableError as exc:
                    m = re.search(r"pid (\d+)", str(exc))
                    refused = (
                        f"yes (pid {m.group(1)})" if m and int(m.group(1)) == proc.pid else f"yes: {exc}"
                    )
            if total and done * 100 >= target_pct * total:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
        os.close(master)
    killed = proc.returncode == -signal.SIGKILL
    return KilledRun(target_pct, done, total, refused, time.perf_counter() - started, killed)


def stored(data_dir: Path) -> tuple[int, Counter, Counter]:
    """(points, point-id counts, (product, image index) counts) of the index as left on disk."""
    with open_store(data_dir, None, None) as store:
        hits = list(store.scroll())
        points = store.count()
    ids = Counter(h.id for h in hits)
    pairs = Counter((h.payload.get("product_id"), h.payload.get("image_index")) for h in hits)
    return points, ids, pairs


def cli(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "visual_search", *args],
        cwd=ROOT,
        env=cli_env(data_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )


def kill_index(n: int, points: list[int], batch_size: int) -> bool:
    rows = []
    ok_all = True
    with tempfile.TemporaryDirectory(prefix="vs-crash-") as tmp:
        csv = make_catalog(Path(tmp) / "catalog", n)
        for pct in points:
            data = Path(tmp) / f"data-{pct}"
            killed = run_and_kill(csv, data, pct, batch_size)
            left, _, _ = stored(data)
            rerun = cli(["index", str(csv), "--json", "--batch-size", str(batch_size)], data)
            if rerun.returncode != 0:
                raise SystemExit(f"re-run failed: {rerun.stderr.strip()}")
            report = json.loads(rerun.stdout)
            final, ids, pairs = stored(data)
            products = {p for p, _ in pairs}
            dup_ids = sum(c - 1 for c in ids.values() if c > 1)
            dup_pairs = sum(c - 1 for c in pairs.values() if c > 1)
            info = cli(["info", "--json"], data)
            info_ok = info.returncode == 0 and json.loads(info.stdout)["store"]["points"] == n
            search = cli(["search", "--text", "product", "--top-k", "5", "--json"], data)
            search_ok = search.returncode == 0 and len(json.loads(search.stdout)["results"]) == 5
            ok = (
                final == n == len(products)
                and dup_ids == 0
                and dup_pairs == 0
                and report["embedded"] + report["unchanged"] == n
                and info_ok
                and search_ok
                and killed.second_open_refused.startswith("yes")
            )
            ok_all &= ok
            rows.append(
                f"| {pct}% | {killed.done}/{killed.total} ({100 * killed.done / max(killed.total, 1):.0f}%)"
                f"{'' if killed.killed else ', exited first'} "
                f"| {killed.second_open_refused} | {left} | {report['embedded']} | {report['unchanged']} "
                f"| {final} | {len(products)} | {dup_ids + dup_pairs} | {'yes' if info_ok and search_ok else 'no'} "
                f"| {'PASS' if ok else 'FAIL'} |"
            )
    print(
        f"\n### kill -9 during `python -m visual_search index` ({n} products, test:tiny, batch {batch_size})\n"
    )
    print(
        "| kill at | progress when killed | 2nd opener refused | points left | re-run embedded "
        "| re-run unchanged | final points | products | duplicates | info+search ok | result |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    print("\n".join(rows))
    return ok_all


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kill-index", action="store_true", help="run the kill -9 during indexing scenario")
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--points", default="30,50,100", help="kill points, percent of images embedded")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if not args.kill_index:
        parser.error("choose a scenario: --kill-index")
    points = [int(p) for p in args.points.split(",") if p.strip()]
    return 0 if kill_index(args.products, points, args.batch_size) else 1


if __name__ == "__main__":
    sys.exit(main())
