"""Registration-time embedding of a bulk batch: GUARD's `derive` per target vs `derive_many` over the batch.

`POST /admin/v1/targets:batch` prepares all its targets with one `derive_many` call per method;
GUARD's embeds every passage of the batch in one MiniLM call (batched by the model), where a call
per target pays the per-call overhead each time. Both run in this process, back to back, on the
same number of different targets (no embedding-cache hits), and the table shows targets/s and
the projected time for 100,000 targets.

    .venv/bin/python bench/bench_bulk_derive.py [--targets 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_churn import person  # noqa: E402

from gateway.store._records import new_target  # noqa: E402
from gateway.store.models import TargetCreate  # noqa: E402
from guards.guard_method import GuardConfig, GuardMethod  # noqa: E402
from guards.semantic import Embedder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=200)
    args = parser.parse_args()
    n = args.targets
    # Different targets for each path: neither finds the other's passages in the embedding cache.
    targets = [new_target(TargetCreate(**person(i)), methods=["guard"], actor="bench") for i in range(2 * n)]
    embedder = Embedder.bundled()
    embedder.encode(["warm the model up"])
    guard = GuardMethod(GuardConfig(), embedder, lambda: None)
    rows = []
    for label, batch, run in (
            ("derive, one call per target", targets[:n], lambda ts: [guard.derive(t) for t in ts]),
            ("derive_many, one call per batch", targets[n:], guard.derive_many)):
        started = time.perf_counter()
        out = run(batch)
        seconds = time.perf_counter() - started
        assert len(out) == n
        rows.append((label, seconds))
    table = Table(title=f"GUARD registration embeddings, {args.targets} targets (MiniLM on CPU)")
    for column in ("path", "seconds", "targets/s", "100,000 targets (projected)"):
        table.add_column(column, justify="right")
    for label, seconds in rows:
        table.add_row(label, f"{seconds:.2f}", f"{args.targets / seconds:.0f}", f"{100_000 * seconds / args.targets:.0f} s")
    console = Console(width=160)
    console.print(table)
    console.print(f"derive_many speed-up: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
