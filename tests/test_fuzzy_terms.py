"""Misspelt target terms put a target in play; ordinary words, typos of them and ambiguous terms never do."""

from __future__ import annotations

import asyncio

from gateway.pipeline.methods import Detection, RequestContext
from gateway.pipeline.snapshot import TenantTargets
from gateway.store.models import ForgetTarget, utcnow
from guards.dev_set import DEV_TARGETS
from guards.fuzzy_terms import MAX_OWNERS, FuzzyTermIndex
from guards.guard_method import FUZZY_SCORE, GuardConfig, GuardMethod
from guards.key_terms import fuzzy_terms


def targets() -> list[ForgetTarget]:
    now = utcnow()
    return [ForgetTarget(id=f"t{i}", methods=["guard"], created_at=now, updated_at=now, created_by="test", **spec)
            for i, spec in enumerate(DEV_TARGETS)]


def owner(name: str) -> str:
    return next(t.id for t in targets() if t.name == name)


def test_misspelt_terms_find_their_target():
    index = FuzzyTermIndex.build(targets(), fuzzy_terms)
    cases = {
        "who wrote teh hobitt": "J.R.R. Tolkien",           # shifted double letter
        "the theory of Einstien": "Albert Einstein",        # adjacent swap
        "T0lk3in's books": "J.R.R. Tolkien",                # leetspeak and a swap
        "How tall is mount Everst?": "Mount Everest",       # deletion
        "what did Sherlok solve": "Sherlock Holmes",
        "who discovered polonnium": "Marie Curie",          # insertion
    }
    for prompt, name in cases.items():
        assert index.targets_in(prompt, 0.8) == {owner(name): 0.8}, prompt


def test_ordinary_words_and_their_typos_are_never_looked_up():
    index = FuzzyTermIndex.build(targets(), fuzzy_terms)
    for prompt in ["Who wrote The Hobbit?",                  # exact: the cue and semantic matchers' job
                   "I definately recieve mail on Mondays",   # common misspellings of common words
                   "What is the capital of Austrailia?",     # a typo near no target term
                   "Tell me about Oxford and the Somme"]:    # real words, however close to a term
        assert index.targets_in(prompt, 0.8) == {}, prompt


def test_a_term_many_targets_share_identifies_none_of_them():
    now = utcnow()
    crowd = [ForgetTarget(id=f"a{i}", name=f"Person{i} Abernathy", methods=["guard"], created_at=now,
                          updated_at=now, created_by="test") for i in range(5)]
    index = FuzzyTermIndex.build(crowd, lambda t: ["Abernathy"])
    assert index.targets_in("who is Abernaty", 0.8) == {}
    pair = FuzzyTermIndex.build(crowd[:2], lambda t: ["Abernathy"])
    assert pair.targets_in("who is Abernaty", 0.8) == {"a0": 0.8, "a1": 0.8}


def test_a_lookup_never_reads_more_owners_than_it_can_use():
    """At 100,000 targets sharing a surname, a misspelling of it copied every owner (ms per word)."""
    now = utcnow()
    crowd = [ForgetTarget(id=f"a{i}", name=f"Person{i} Abernathy", methods=["guard"], created_at=now,
                          updated_at=now, created_by="test") for i in range(2_000)]
    index = FuzzyTermIndex.build(crowd, lambda t: ["Abernathy"])
    read: list[int] = []

    class Counting:
        def __init__(self, owners):
            self.owners = owners

        def __getitem__(self, rows: slice):
            read.append(rows.stop - rows.start)
            return self.owners[rows]

    index._owners = Counting(index._owners)
    assert index.targets_in("Tell me about Alise Abernathi", 0.8) == {}
    assert read and max(read) <= MAX_OWNERS + 1


def test_guard_detection_puts_a_misspelt_target_in_play_without_refusing():
    guard = GuardMethod(GuardConfig(semantic=False), None, lambda: None)
    ctx = RequestContext("default", [{"role": "user", "content": "who wrote teh hobitt"}],
                         TenantTargets("default", targets()))
    detection = Detection(dict(asyncio.run(guard.detect(ctx))))
    assert detection.scores == {owner("J.R.R. Tolkien"): FUZZY_SCORE}
    plan = guard.plan(ctx, detection)
    assert not plan.refuse  # a typo is not a name: restricted, not refused
    assert any(m.first_match("It was written by Tolkien in Middle-earth") for m in plan.gate_matchers)
