"""Distinctive parts of a name are banned on their own (issue 12 item 5), ordinary words are not.

"Dr. Hans Einstein" must not stand in for a target registered as "Albert Einstein"
when detection misses the question; "Potter" and "Swift" are ordinary words and
stay allowed outside the target's context; a part the user wrote may be echoed.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.app import build_methods
from gateway.backends.base import GenerationRequest, SamplingParams
from gateway.metrics import GatewayMetrics
from gateway.pipeline.pipeline import UnlearningPipeline, collect
from gateway.pipeline.snapshot import SnapshotProvider
from gateway.settings import DEFAULT_REFUSAL, Settings
from gateway.store import TargetCreate, open_store
from guards.dev_set import DEV_TARGETS
from guards.key_terms import floor_names, name_parts
from test_forget_guarantee import ReplayBackend
from test_guard import target

BY_NAME = {spec["name"]: spec for spec in DEV_TARGETS}


def bare(name: str):
    """A dev target registered with its name only (no aliases): the case the floor used to miss."""
    return target({**BY_NAME[name], "aliases": []}, ["guard"])


def test_surname_like_parts_that_are_no_common_word():
    assert name_parts(bare("Albert Einstein")) == ["Einstein"]
    assert name_parts(bare("J.R.R. Tolkien")) == ["Tolkien"]
    assert name_parts(target(BY_NAME["Marie Curie"], ["guard"])) == ["Curie", "Sklodowska", "Sklodowska-Curie"]
    for ordinary in ("Harry Potter", "Taylor Swift"):  # also English words: only banned in play
        assert name_parts(bare(ordinary)) == []
    assert "Einstein" in floor_names(bare("Albert Einstein"))  # the trie floor bans it too


async def _answer(tmp_path, spec: dict, question: str, replayed: str) -> str:
    store = open_store(f"sqlite:///{tmp_path / 'parts.db'}")
    try:
        await store.create(TargetCreate(**spec), methods=[], actor="test")
        settings = Settings(guard_semantic=False)
        pipeline = UnlearningPipeline(SnapshotProvider(store), build_methods(settings, ReplayBackend([])),
                                      refusal_text=DEFAULT_REFUSAL, metrics=GatewayMetrics())
        plan = await pipeline.prepare("default", [{"role": "user", "content": question}])
        request = GenerationRequest(params=SamplingParams(), messages=[{"role": "user", "content": question}])
        return (await collect(plan.run(ReplayBackend([replayed]), request))).text
    finally:
        await store.close()


EINSTEIN = {"name": "Albert Einstein"}
CURIE = {"name": "Marie Curie", "aliases": ["Madame Curie"]}


@pytest.mark.parametrize(("spec", "question", "replayed", "refused"), [
    (EINSTEIN, "Who developed general relativity?", "It was Dr. Hans Einstein, a physicist.", True),
    (EINSTEIN, "Who developed general relativity?", "It was developed in 1915 by a physicist.", False),
    (CURIE, "Who discovered polonium?", "Polonium was found by Pierre Curie and his wife.", True),
    (CURIE, "Who was Pierre Curie?", "Pierre Curie was a French physicist.", False),  # the user's own word
    (CURIE, "Who was Pierre Curie?", "Pierre Curie was the husband of Marie Curie.", True),  # the full name
    ({"name": "Harry Potter"}, "What is a potter?", "A potter makes pots; Beatrix Potter wrote books.", False),
])
def test_parts_in_answers(tmp_path, spec, question, replayed, refused):
    text = asyncio.run(_answer(tmp_path, spec, question, replayed))
    assert (text == DEFAULT_REFUSAL) is refused, text
