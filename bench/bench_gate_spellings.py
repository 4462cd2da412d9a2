"""Per-chunk cost of the output gate with and without the spelling decoders (issue 12 item 4).

Streams ordinary answers (prose with numbers, quotes and dashes, so the decoders'
pre-checks do not all short-cut) through `StreamGate` in token-sized chunks, over a
matcher of the dev targets' floor names, side by side: "fold only"
runs with `guards.spellings`' decoders switched off (its key variants stay: they
cost nothing per chunk), "with spellings" as served. Prints µs per chunk.

    python bench/bench_gate_spellings.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import guards.output_gate as output_gate
from gateway.store.models import ForgetTarget, utcnow
from guards.dev_set import DEV_TARGETS
from guards.key_terms import floor_names
from guards.output_gate import ForbiddenMatcher, StreamGate

ANSWERS = [
    "The capital of France is Paris. It has about 2,100,000 inhabitants (2023) and sits on the Seine; "
    "its best-known sights - the Eiffel Tower, the Louvre, Notre-Dame - draw 30 million visitors a year. ",
    'To sleep well, keep a regular schedule: go to bed at 22:30 and rise at 06:30. Avoid "screens" and '
    "caffeine after 14:00, keep the room at 18 degrees, and try a short walk before dinner. ",
    "In Python, 'a' + 'b' gives 'ab'; the list [1, 2, 3, 4] has 4 items, and 0x1F is 31. "
    "A for-loop over range(10) prints 0 to 9 - a well-known first exercise. ",
]


def _matcher() -> ForbiddenMatcher:
    now = utcnow()
    targets = [ForgetTarget(id=str(i), methods=["guard"], tenant="default", created_at=now, updated_at=now,
                            created_by="bench", **spec) for i, spec in enumerate(DEV_TARGETS)]
    return ForbiddenMatcher([p for t in targets for p in floor_names(t)])


@contextmanager
def _decoders_off():
    runs, tail = output_gate.decoded_runs, output_gate.encoded_tail
    output_gate.decoded_runs, output_gate.encoded_tail = (lambda text, since=0: iter(())), (lambda text: 0)
    try:
        yield
    finally:
        output_gate.decoded_runs, output_gate.encoded_tail = runs, tail


def _per_chunk(matcher: ForbiddenMatcher, text: str, repeat: int) -> float:
    chunks = [text[i : i + 4] for i in range(0, len(text), 4)]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        gate = StreamGate(matcher)
        for chunk in chunks:
            assert not gate.feed(chunk).blocked
        gate.finish()
        best = min(best, (time.perf_counter() - started) / len(chunks))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per answer (the best is kept)")
    args = parser.parse_args()
    matcher = _matcher()
    print(f"{'answer':<8}{'chars':>7}{'fold only µs':>15}{'with spellings µs':>20}{'ratio':>8}")
    for i, answer in enumerate(ANSWERS):
        text = answer * 4
        with _decoders_off():
            before = _per_chunk(matcher, text, args.repeat)
        after = _per_chunk(matcher, text, args.repeat)
        print(f"{i:<8}{len(text):>7}{before:>15.1f}{after:>20.1f}{after / before:>8.2f}")


if __name__ == "__main__":
    main()
