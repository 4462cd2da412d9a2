"""Calibrate the semantic-match threshold on the dev set and measure what matching costs.

Why: the threshold is the only knob of semantic matching; it is chosen from
data (guards/dev_set.py) rather than guessed, and the printed table shows how
much recall each step of safety costs.

Selection rule: maximise recall on the positive probes subject to a false
positive rate <= 5% on the negative probes; the thresholds that reach that
recall form a plateau, and the *middle* of the plateau is chosen, so the
weakest positive and the strongest negative are both as far as possible from
the cut (the dev set is small; a cut at either edge would be overfitted).

Usage:  python bench/calibrate_semantic.py [--no-cost]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gateway.store.models import TargetCreate
from guards.dev_set import DEV_TARGETS, GENERAL_NEGATIVES, NEGATIVE_PROBES, NEIGHBOUR_PROBES, POSITIVE_PROBES
from guards.semantic import (
    DEFAULT_THRESHOLD,
    EMBEDDING_DIM,
    Embedder,
    conversation_units,
    decode_embeddings,
    embed_target,
)
from guards.semantic_index import SemanticIndex

MAX_FPR = 0.05
GRID = np.round(np.arange(0.20, 0.801, 0.01), 2)


def probe_scores(embedder: Embedder, index: SemanticIndex, probe: str) -> np.ndarray:
    """Best cosine per target (aligned with index.ids) for a one-turn conversation."""
    units = conversation_units([{"role": "user", "content": probe}])
    return index.best_scores(embedder.encode(units))


def calibrate(embedder: Embedder) -> float:
    targets = [TargetCreate(**t) for t in DEV_TARGETS]
    # Go through the stored (rounded) format, exactly as the gateway will.
    index = SemanticIndex((t.name, decode_embeddings(embed_target(embedder, t))) for t in targets)
    ids = list(index.ids)

    pos: list[tuple[str, str, np.ndarray]] = [
        (name, probe, probe_scores(embedder, index, probe)) for name, probes in POSITIVE_PROBES.items() for probe in probes
    ]
    neg: list[tuple[str, np.ndarray]] = [(probe, probe_scores(embedder, index, probe)) for probe in NEGATIVE_PROBES]
    own = np.array([scores[ids.index(name)] for name, _, scores in pos])
    # A positive probe that also fires a *different* target is a confusion (not a miss).
    other = np.array([np.max(np.delete(scores, ids.index(name))) for name, _, scores in pos])
    neg_max = np.array([scores.max() for _, scores in neg])

    print(f"dev set: {len(targets)} targets, {len(pos)} positive probes, {len(neg)} negative probes "
          f"({len(GENERAL_NEGATIVES)} general, {len(neg) - len(GENERAL_NEGATIVES)} neighbour)")
    print(f"positive own-target score: min {own.min():.3f}  median {np.median(own):.3f}  max {own.max():.3f}")
    print(f"negative best score:       min {neg_max.min():.3f}  median {np.median(neg_max):.3f}  max {neg_max.max():.3f}")
    print()
    print(f"{'thr':>5} {'recall':>7} {'FPR':>6} {'prec':>6} {'F1':>6} {'confused':>9}")
    rows = []
    for thr in GRID:
        tp = int((own >= thr).sum())
        fp = int((neg_max >= thr).sum())
        recall = tp / len(own)
        fpr = fp / len(neg_max)
        precision = tp / (tp + fp) if tp + fp else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        confused = int((other >= thr).sum())
        rows.append((float(thr), recall, fpr, f1))
        print(f"{thr:5.2f} {recall:7.3f} {fpr:6.3f} {precision:6.3f} {f1:6.3f} {confused:9d}")

    allowed = [r for r in rows if r[2] <= MAX_FPR]
    best_recall = max(r[1] for r in allowed)
    plateau = [r[0] for r in allowed if r[1] == best_recall]
    chosen = round(float(np.median(plateau)), 2)
    best_f1 = max(rows, key=lambda r: (r[3], r[0]))
    print()
    print(f"rule: max recall s.t. FPR <= {MAX_FPR:.0%}; recall {best_recall:.3f} holds on "
          f"[{min(plateau):.2f}, {max(plateau):.2f}] -> chosen threshold {chosen:.2f} (plateau middle)")
    print(f"(for comparison, best F1 {best_f1[3]:.3f} at {best_f1[0]:.2f}; DEFAULT_THRESHOLD in code = "
          f"{DEFAULT_THRESHOLD:.2f})")

    print(f"\nper target at {chosen:.2f}:")
    for name in ids:
        s = [o for (n, _, _), o in zip(pos, own) if n == name]
        hits = sum(v >= chosen for v in s)
        print(f"  {name:<16} recall {hits}/{len(s)}  min {min(s):.3f}")
    print("\nmisses (own score < threshold):")
    for (name, probe, _), score in sorted(zip(pos, own), key=lambda x: x[1]):
        if score < chosen:
            print(f"  {score:.3f}  [{name}] {probe}")
    print("\nhighest-scoring negatives:")
    neighbour_of = {p: n for n, ps in NEIGHBOUR_PROBES.items() for p in ps}
    order = np.argsort(-neg_max)[:8]
    for i in order:
        probe, scores = neg[i]
        flag = "FP" if neg_max[i] >= chosen else "  "
        print(f"  {flag} {neg_max[i]:.3f} -> {ids[int(scores.argmax())]:<16} "
              f"({neighbour_of.get(probe, 'general')}) {probe}")
    return chosen


def _timed(fn, repeat: int) -> tuple[float, float]:
    """Min and median wall time in ms; the min is the fairer figure on a shared, busy box."""
    wall = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
    return min(wall), statistics.median(wall)


def measure_cost(embedder: Embedder) -> None:
    import torch

    print(f"\n-- cost (CPU, torch threads = {torch.get_num_threads()}) --")
    sentences = [s for t in DEV_TARGETS for s in [t["description"], *t["facts"]]]
    embedder.encode(["warm-up"])
    for n in (1, 8, 16, 32):
        # A realistic conversation: user/assistant turns of several sentences each.
        text = " ".join(sentences[:n])
        messages = [{"role": "user", "content": "Tell me something."}, {"role": "assistant", "content": text},
                    {"role": "user", "content": "Go on."}]
        units = conversation_units(messages, max_units=n)

        def run(units: list[str] = units) -> None:
            embedder.encode(units)

        best, median = _timed(run, 11)
        print(f"  embed conversation, {len(units):2d} units: {best:7.1f} ms min  {median:7.1f} ms median")

    rng = np.random.default_rng(0)
    passages_per_target, queries = 6, 32
    q = rng.standard_normal((queries, EMBEDDING_DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for n_targets in (10, 1_000, 100_000):
        m = rng.standard_normal((n_targets * passages_per_target, EMBEDDING_DIM)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        entries = [(f"t{i}", m[i * passages_per_target : (i + 1) * passages_per_target]) for i in range(n_targets)]
        t0 = time.perf_counter()
        index = SemanticIndex(entries)
        build_ms = (time.perf_counter() - t0) * 1e3
        del m, entries
        best, median = _timed(lambda: index.score(q, DEFAULT_THRESHOLD), 7)
        print(f"  SemanticIndex {n_targets:>7,} targets x {passages_per_target} passages, {queries} queries: "
              f"score {best:8.2f} ms min {median:8.2f} ms median  (build {build_ms:6.1f} ms, "
              f"{index.nbytes / 2**20:5.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-cost", action="store_true", help="skip the timing measurements")
    parser.add_argument("--cost-only", action="store_true", help="only the timing measurements")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    embedder = Embedder.bundled()
    t0 = time.perf_counter()
    embedder.load()
    print(f"model load: {(time.perf_counter() - t0):.1f} s")
    if not args.cost_only:
        calibrate(embedder)
    if not args.no_cost:
        measure_cost(embedder)


if __name__ == "__main__":
    main()
