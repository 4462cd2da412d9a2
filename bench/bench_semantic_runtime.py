"""MiniLM runtimes side by side: sentence-transformers on torch vs ONNX Runtime (GUARD's default).

Why: with every prompt different, GUARD embeds every request's new units (issue #11), so the cost
of one pass sets the proxy's throughput. Same unique prompts (`bench/prompts.py`), same process,
run one after the other: one prompt per call (what a request does) and 64 per call (what
micro-batching concurrent requests would do), plus the largest difference between the vectors;
then ONNX throughput with 8 threads calling at once, one pass at a time vs `MAX_PARALLEL_PASSES`.

    .venv/bin/python bench/bench_semantic_runtime.py [--prompts 100] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.prompts when run as a script

from bench.prompts import unique_prompts  # noqa: E402
from guards.semantic import MAX_PARALLEL_PASSES, Embedder  # noqa: E402


def timings(embedder: Embedder, prompts: list[str], batch: int) -> list[float]:
    """Milliseconds per prompt, one call per `batch` prompts."""
    out = []
    for start in range(0, len(prompts) - batch + 1, batch):
        began = time.perf_counter()
        embedder.encode(prompts[start:start + batch])
        out.append((time.perf_counter() - began) * 1e3 / batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=100, help="prompts per runtime and mode")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--cache-dir", default="var/models")
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    prompts = list(itertools.islice(unique_prompts(seed=11), args.prompts * 2 + 64))
    table = Table(title=f"MiniLM, one unique prompt per call vs 64 per call (ms per prompt, {args.prompts} prompts)")
    for column in ("runtime", "1/call p50", "1/call min", "64/call per prompt"):
        table.add_column(column, justify="right")
    vectors = {}
    for runtime in ("torch", "onnx"):
        embedder = Embedder.bundled(runtime=runtime, cache_dir=args.cache_dir)  # prompts are unique: no cache hits
        embedder.encode(["warm-up"])
        single = timings(embedder, prompts[:args.prompts], 1)
        batched = timings(embedder, prompts[args.prompts:], 64)
        vectors[runtime] = embedder.encode(prompts[:16])
        table.add_row(runtime, f"{statistics.median(single):.1f}", f"{min(single):.1f}",
                      f"{statistics.median(batched):.1f}")
    console = Console(width=120)
    console.print(table)
    gap = np.abs(vectors["torch"] - vectors["onnx"]).max()
    console.print(f"largest difference between the runtimes' vectors: {gap:.1e}")
    fresh = unique_prompts(seed=12)
    for passes in (1, MAX_PARALLEL_PASSES, 1, MAX_PARALLEL_PASSES):  # twice, interleaved: the machine is shared
        embedder._passes = threading.BoundedSemaphore(passes)
        batch = list(itertools.islice(fresh, args.prompts * 2))
        began = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: embedder.encode([p]), batch))
        console.print(f"onnx, 8 callers, {passes} pass(es) at once: {len(batch) / (time.perf_counter() - began):.0f} "
                      "prompts/s")


if __name__ == "__main__":
    main()
