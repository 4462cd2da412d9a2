"""A bulk registration embeds the whole batch at once and stores exactly what one-by-one would."""

from __future__ import annotations

import numpy as np

from gateway.store._records import new_target
from gateway.store.models import TargetCreate
from guards.guard_method import GuardConfig, GuardMethod


def test_derive_many_equals_derive_per_target(embedder) -> None:
    guard = GuardMethod(GuardConfig(), embedder, lambda: None)
    targets = [new_target(TargetCreate(name=f"Person {c}", aliases=[f"P{c}"] if i % 2 else [],
                                       description=f"{c} is someone", facts=[f"{c} likes tea"] * (i % 3)),
                          methods=["guard"], actor="t") for i, c in enumerate("ABCDE")]
    many = guard.derive_many(targets)
    one_by_one = [guard.derive(t) for t in targets]
    assert [m["model"] for m in many] == [o["model"] for o in one_by_one]
    for m, o in zip(many, one_by_one):
        assert len(m["passages"]) == len(o["passages"])
        np.testing.assert_allclose(m["passages"], o["passages"], atol=2e-5)  # batch padding: last-digit noise


def test_derive_many_without_semantic_stores_nothing() -> None:
    guard = GuardMethod(GuardConfig(semantic=False), None, lambda: None)
    assert guard.derive_many([new_target(TargetCreate(name="X Y"), methods=["guard"], actor="t")]) == [None]
