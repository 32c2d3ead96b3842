"""The prepared GPU check (issue 10): index the sample catalog and search it on CUDA with fp16 autocast.

A CUDA path that has never run is a risk, and a lent GPU machine gives a session ~15 minutes, so this
is one short script: it runs the same code the app runs (``SearchEngine`` with ``pick_device`` and
``pick_runtime``; on CUDA that is torch with fp16 autocast) and reports, from one run:

* indexing images/s on the chosen device (sample catalog, fresh index);
* photo query p50/p95 and R@1/R@10 on SYNTHETIC shopper photos (pipeline ``off``; ``auto`` too when
  u2netp is reachable through U2NET_HOME);
* fp16-on-device embeddings against CPU fp32 embeddings of the same photos (cosine min/mean): the
  check that autocast does not move the vectors materially.

Runs on the CPU too (``--device cpu``), which is how it is kept working without a GPU:

    python bench/bench_gpu_smoke.py --device cpu --model test:tiny --queries 4
    python bench/bench_gpu_smoke.py --model timm:efficientnet_lite0@weights/efficientnet_lite0.pth --out $OUT/gpu.md

On the device machine open_clip_torch, qdrant-edge, qdrant-client and rembg are not installed: carry them as
wheels (/work/.library/device/README.md) and carry the weights in an ignored folder of the repo.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visual_search.core.config import Settings  # noqa: E402
from visual_search.device import pick_device, pick_runtime, uses_half_precision  # noqa: E402
from visual_search.encoders import create_encoder  # noqa: E402
from visual_search.engine import SearchEngine  # noqa: E402
from visual_search.evaluation import shopper_queries  # noqa: E402
from visual_search.evaluation.runner import evaluate_engine  # noqa: E402
from visual_search.images.load import load_image  # noqa: E402

SAMPLE = ROOT / "sample_catalog" / "catalog.csv"


def embedding_agreement(model: str, device: str, photos: list[Path]) -> tuple[float, float]:
    """Cosine (min, mean) between ``device`` embeddings (fp16 autocast on CUDA) and CPU fp32 torch."""
    images = [load_image(p) for p in photos]
    on_device = create_encoder(model, device=device, runtime="torch").embed_images(images)
    reference = create_encoder(model, device="cpu", runtime="torch").embed_images(images)
    cos = np.sum(on_device * reference, axis=1) / (
        np.linalg.norm(on_device, axis=1) * np.linalg.norm(reference, axis=1)
    )
    return float(cos.min()), float(cos.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:efficientnet_lite0")
    parser.add_argument("--device", default=None, help="default: CUDA when present (pick_device)")
    parser.add_argument("--catalog", default=str(SAMPLE))
    parser.add_argument("--queries", type=int, default=16, help="SYNTHETIC shopper photos per kind")
    parser.add_argument("--out", default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    runtime = pick_runtime("auto", device)
    lines = [
        "## GPU smoke run",
        "",
        f"Model `{args.model}`, device `{device}`, runtime `{runtime}`, "
        f"fp16 autocast: {'yes' if uses_half_precision(device) else 'no'}.",
    ]
    if device.startswith("cuda"):
        import torch

        lines.append(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}.")
    lines.append("")
    with tempfile.TemporaryDirectory(prefix="vs-gpu-") as tmp:
        settings = Settings(model=args.model, device=device, data_dir=Path(tmp) / "data", runtime=runtime)
        engine = SearchEngine.from_settings(settings)
        try:
            started = time.perf_counter()
            indexed = engine.index_catalog(args.catalog)
            seconds = time.perf_counter() - started
            lines.append(
                f"- Indexing: {indexed.embedded} images embedded in {seconds:.1f} s "
                f"({indexed.embedded / seconds:.1f} images/s, fresh index, model load excluded)."
            )
            queries = shopper_queries(args.catalog, n=args.queries, out_dir=Path(tmp) / "queries", seed=0)
            for pipeline in ("off", "auto"):  # auto says in its notes when u2netp is missing
                result = evaluate_engine(engine, queries, pipeline=pipeline)
                lines.append(
                    f"- Photo queries, pipeline {pipeline}: {result.n_queries} SYNTHETIC shopper photos, "
                    f"R@1 {result.overall.recall_at_1:.3f}, R@10 {result.overall.recall_at_10:.3f}, "
                    f"p50 {result.latency.total_p50_ms:.1f} ms, p95 {result.latency.total_p95_ms:.1f} ms"
                    + (f" ({'; '.join(result.notes)})" if result.notes else "")
                    + "."
                )
            photos = sorted((Path(tmp) / "queries").rglob("*.jpg"))[:16]
            low, mean = embedding_agreement(args.model, device, photos)
            lines.append(
                f"- Embeddings on {device} vs CPU fp32 ({len(photos)} photos): cosine min {low:.5f}, mean {mean:.5f}."
            )
        finally:
            engine.close()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
