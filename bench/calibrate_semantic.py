"""Calibrate the semantic-match threshold on the dev set and measure what matching costs.

Why: the threshold is the only knob of semantic matching; it is chosen from
data (guards/dev_set.py) rather than guessed, and the printed table shows how
much recall each step of safety costs.

Selection rule: maximise recall on the positive probes subject to a false
positive rate <= 5% on the negative probes; the thresholds that reach that
recall form a plateau, and the *middle* of the plateau is chosen, so the
weakest positive and the strongest negative are both as far as possible from
the cut (the dev set is small; a cut at either edge would be overfitted).

Static first stage (`bench/static_model.py`, measured, not served): the gate is the largest cut such that every
(unit, target) pair of every dev probe that MiniLM scores within `GATE_MARGIN` of the threshold
scores at least cut + `GATE_SLACK` statically -- so the cascade dismisses no unit MiniLM would
have matched, on the dev set with a margin. The table compares MiniLM alone, static alone
(thresholded by the same rule) and the cascade, and says how many units the gate sends to MiniLM.

Usage:  python bench/calibrate_semantic.py [--no-cost] [--cache-dir var/models]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.prompts when run as a script

from gateway.store.models import TargetCreate  # noqa: E402
from guards.dev_set import DEV_TARGETS, GENERAL_NEGATIVES, NEGATIVE_PROBES, NEIGHBOUR_PROBES, POSITIVE_PROBES
from guards.semantic import (
    DEFAULT_THRESHOLD,
    EMBEDDING_DIM,
    Embedder,
    conversation_units,
    decode_embeddings,
    embed_target,
    target_passages,
)
from guards.semantic_index import SemanticIndex
from bench.static_model import StaticEmbedder  # noqa: E402

MAX_FPR = 0.05
GATE_MARGIN = 0.05
GATE_SLACK = 0.02
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


def unit_scores(encode, index: SemanticIndex, probe: str) -> np.ndarray:
    """(units, targets) cosines of a one-turn conversation's units, every pair."""
    vectors = encode(conversation_units([{"role": "user", "content": probe}]))
    return np.array([[hit.get(i, -1.0) for i in index.ids] for hit in index.unit_hits(vectors, -2.0)])


def calibrate_gate(embedder: Embedder, static: StaticEmbedder, threshold: float) -> float:
    """The static gate (see the module doc) and the MiniLM / static / cascade comparison."""
    from bench.prompts import unique_prompts

    targets = [TargetCreate(**t) for t in DEV_TARGETS]
    minilm = SemanticIndex((t.name, decode_embeddings(embed_target(embedder, t))) for t in targets)
    coarse = SemanticIndex((t.name, static.encode(target_passages(t))) for t in targets)
    ids = list(minilm.ids)
    probes = [(name, p) for name, ps in POSITIVE_PROBES.items() for p in ps] + [(None, p) for p in NEGATIVE_PROBES]
    scored = [(name, p, unit_scores(embedder.encode, minilm, p), unit_scores(static.encode, coarse, p))
              for name, p in probes]
    near = np.concatenate([s[m >= threshold - GATE_MARGIN] for _, _, m, s in scored])
    cut = float(np.floor((near.min() - GATE_SLACK) * 100) / 100)
    print(f"\n-- static gate (MiniLM pairs >= {threshold - GATE_MARGIN:.2f}: {len(near)}, their static min "
          f"{near.min():.3f}) -> gate {cut:.2f}")

    def rates(fired) -> tuple[float, float]:
        pos = [fired(name, m, s) for name, _, m, s in scored if name is not None]
        neg = [fired(None, m, s) for name, _, m, s in scored if name is None]
        return sum(pos) / len(pos), sum(neg) / len(neg)

    own = lambda name, m: m[:, ids.index(name)] if name else m  # noqa: E731
    static_thr = min((t for t in GRID if rates(lambda n, m, s, t=t: bool((own(n, s) >= t).any()))[1] <= MAX_FPR))
    rows = [("MiniLM alone", rates(lambda n, m, s: bool((own(n, m) >= threshold).any()))),
            (f"static alone (>= {static_thr:.2f})", rates(lambda n, m, s: bool((own(n, s) >= static_thr).any()))),
            (f"cascade (gate {cut:.2f})", rates(lambda n, m, s: bool(
                (own(n, np.where(s.max(axis=1, keepdims=True) >= cut, m, -1.0)) >= threshold).any())))]
    print(f"{'detector':<28} {'recall':>7} {'FPR':>6}")
    for label, (recall, fpr) in rows:
        print(f"{label:<28} {recall:7.3f} {fpr:6.3f}")
    groups = {
        "positives": [s for n, _, _, s in scored if n],
        "neighbours": [s for n, p, _, s in scored if n is None and p not in GENERAL_NEGATIVES],
        "general": [s for n, p, _, s in scored if p in GENERAL_NEGATIVES],
        "bench generator (500)": [unit_scores(static.encode, coarse, p)
                                  for p in itertools.islice(unique_prompts(seed=7), 500)],
    }
    for label, group in groups.items():
        units = np.concatenate([s.max(axis=1) for s in group])
        print(f"  units sent to MiniLM, {label:<22} {(units >= cut).mean():6.1%} of {len(units)}")
    return cut


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

    threads = "1 thread" if embedder.runtime == "onnx" else f"{torch.get_num_threads()} torch threads"
    print(f"\n-- cost (CPU, MiniLM on {embedder.runtime}, {threads}) --")
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
    parser.add_argument("--cache-dir", default="var/models", help="where the distilled static model is cached")
    parser.add_argument("--runtime", choices=["onnx", "torch"], default="onnx", help="MiniLM runtime")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    embedder = Embedder.bundled(runtime=args.runtime, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    embedder.load()
    print(f"model load: {(time.perf_counter() - t0):.1f} s")
    if not args.cost_only:
        chosen = calibrate(embedder)
        calibrate_gate(embedder, StaticEmbedder.bundled(args.cache_dir), chosen)
    if not args.no_cost:
        measure_cost(embedder)


if __name__ == "__main__":
    main()
