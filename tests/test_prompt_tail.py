"""A name split across the prompt/output boundary ("... J.R.R. Tol" + "kien", issue 12 item 1).

Real SmolLM2 over HTTP for the main paths (non-stream, stream, n > 1 with sampling,
logprobs, prompt lists), the pipeline with replayed output for a prefilled assistant
turn, the gate offline for the property: any split of any name, alias or key term, in any chunking, is refused,
and a name wholly inside the prompt is never a reason to refuse.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import admin_headers
from gateway.app import build_methods
from gateway.backends.base import GenerationChunk, GenerationRequest, SamplingParams
from gateway.metrics import GatewayMetrics
from gateway.pipeline.choice_filter import ChoiceFilter
from gateway.pipeline.pipeline import UnlearningPipeline, collect, prompt_tail
from gateway.pipeline.snapshot import SnapshotProvider
from gateway.settings import DEFAULT_REFUSAL, Settings
from gateway.store import TargetCreate, open_store
from guards.dev_set import DEV_TARGETS
from guards.key_terms import floor_names, key_terms
from guards.normalize import normalise
from guards.output_gate import ForbiddenMatcher
from test_forget_guarantee import ReplayBackend
from test_guard import target

MODEL = "SmolLM2-135M-Instruct"
TOLKIEN = {"name": "J.R.R. Tolkien", "aliases": ["Tolkien", "John Ronald Reuel Tolkien"]}
SPLIT_PROMPTS = [  # each ends inside the name; the raw model finishes it (first test)
    "The Hobbit is a fantasy novel written by J.R.R. Tol",
    "Middle-earth was invented by J.R.R. Tol",
]


def completes_name(prompt: str, text: str) -> bool:
    """Does `prompt + text` hold the surname where `prompt` alone does not (under the gate's fold)?"""
    key = normalise("tolkien").text
    return normalise(prompt + text).text.replace(" ", "").count(key) > normalise(prompt).text.replace(" ", "").count(key)


def complete(base_url: str, body: dict) -> dict:
    body = {"model": MODEL, "max_tokens": 8, "temperature": 0, **body}
    response = httpx.post(base_url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def complete_stream(base_url: str, body: dict) -> dict[int, list[str]]:
    body = {"model": MODEL, "max_tokens": 8, "temperature": 0, "stream": True, **body}
    pieces: dict[int, list[str]] = {}
    with httpx.stream("POST", base_url + "/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in orjson.loads(line[6:])["choices"]:
                    pieces.setdefault(choice["index"], []).append(choice["text"])
    return pieces


def test_the_raw_model_finishes_a_name_the_prompt_began(gateway):
    """Guard against a vacuous suite: with no target, SmolLM2 continues each prompt with the rest of the name."""
    for prompt in SPLIT_PROMPTS:
        text = complete(gateway.url, {"prompt": prompt})["choices"][0]["text"]
        assert completes_name(prompt, text), (prompt, text)


@pytest.mark.parametrize("guard", [False, True], ids=["gate-only", "guard"])
def test_completion_never_finishes_a_name_from_the_prompt_tail(make_gateway, guard):
    gateway = make_gateway(guard=guard)
    httpx.post(gateway.url + "/admin/v1/targets", json=TOLKIEN, headers=admin_headers()).raise_for_status()
    for prompt in SPLIT_PROMPTS:
        plain = complete(gateway.url, {"prompt": prompt})["choices"][0]
        assert not completes_name(prompt, plain["text"]), plain
        with_logprobs = complete(gateway.url, {"prompt": prompt, "logprobs": 5})["choices"][0]
        assert not completes_name(prompt, with_logprobs["text"])
        for entry in with_logprobs["logprobs"]["top_logprobs"][:1]:  # alternatives of the first token
            assert not any(completes_name(prompt, alt) for alt in entry), entry
        sampled = complete(gateway.url, {"prompt": [prompt, prompt], "n": 2, "temperature": 1.0, "seed": 5})
        assert len(sampled["choices"]) == 4
        assert not any(completes_name(prompt, c["text"]) for c in sampled["choices"]), sampled
        for pieces in complete_stream(gateway.url, {"prompt": prompt, "n": 2, "temperature": 0.8}).values():
            released = ""
            for piece in pieces:
                released += piece
                assert not completes_name(prompt, released), pieces


def test_guard_lets_the_model_go_on_without_the_name(make_gateway):
    """The decode ban (not only the gate) covers the boundary: GUARD's answer is not the refusal."""
    gateway = make_gateway(guard=True)
    httpx.post(gateway.url + "/admin/v1/targets", json=TOLKIEN, headers=admin_headers()).raise_for_status()
    for prompt in SPLIT_PROMPTS:
        text = complete(gateway.url, {"prompt": prompt})["choices"][0]["text"]
        assert not completes_name(prompt, text) and text != DEFAULT_REFUSAL, text


@pytest.mark.parametrize(("messages", "refused"), [
    ([{"role": "user", "content": "Who wrote The Hobbit?"},
      {"role": "assistant", "content": "It was written by J.R.R. Tol"}], True),  # prefilled: the client joins them
    ([{"role": "user", "content": "Finish this: J.R.R. Tol"}], False),  # a user turn ends before the answer starts
])
def test_a_prefilled_assistant_turn_is_a_prompt_tail(tmp_path, messages, refused):
    """Through the pipeline: the replayed answer "kien wrote it." completes the prefilled turn only."""
    async def run() -> str:
        store = open_store(f"sqlite:///{tmp_path / 'tail.db'}")
        try:
            await store.create(TargetCreate(**TOLKIEN), methods=[], actor="test")
            pipeline = UnlearningPipeline(SnapshotProvider(store), build_methods(Settings(guard_semantic=False),
                                                                                 ReplayBackend([])),
                                          refusal_text=DEFAULT_REFUSAL, metrics=GatewayMetrics())
            plan = await pipeline.prepare("default", messages)
            request = GenerationRequest(params=SamplingParams(), messages=messages)
            return (await collect(plan.run(ReplayBackend(["ki", "en wrote it."]), request))).text
        finally:
            await store.close()

    assert (asyncio.run(run()) == DEFAULT_REFUSAL) is refused


# -- the gate offline: every split of every name --------------------------------------------------

DEV = [target(spec, ["guard"], target_id=f"t{i}") for i, spec in enumerate(DEV_TARGETS)]
PHRASES = sorted({p for t in DEV for p in [*floor_names(t), *key_terms(t)] if len(p) >= 4})
MATCHER = ForbiddenMatcher(PHRASES)
LEADS = ["The answer is ", "written by ", "Q: who? A: ", "(", "\n", "It was "]
TRAILS = ["", ".", " wrote it.", "'s best work", ", as everyone knows."]


async def _gate(tail: str, chunks: list[str]) -> tuple[str, bool]:
    gate = ChoiceFilter([MATCHER], prompt_tail=tail)
    released, blocked = "", False
    for piece in chunks:
        step = await gate.feed(GenerationChunk(text=piece))
        released += step.text
        blocked = blocked or step.blocked
    if not blocked:
        step = await gate.finish()
        released += step.text
        blocked = step.blocked
    return released, blocked


def _chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:])] or [""]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(phrase=st.sampled_from(PHRASES), split=st.integers(1, 60), lead=st.sampled_from(LEADS),
       trail=st.sampled_from(TRAILS), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_any_split_across_the_boundary_is_refused(phrase, split, lead, trail, cuts):
    k = 1 + split % (len(phrase) - 1)  # the prompt ends after phrase[:k], the output starts with phrase[k:]
    output = phrase[k:] + trail
    released, blocked = asyncio.run(_gate(lead + phrase[:k], _chunked(output, cuts)))
    assert blocked, (lead + phrase[:k], output)
    assert MATCHER.first_match(lead + phrase[:k] + released, min_end=len(lead) + k) is None


@settings(max_examples=150, deadline=None)
@given(phrase=st.sampled_from(PHRASES), lead=st.sampled_from(LEADS), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_a_name_wholly_inside_the_prompt_is_no_reason_to_refuse(phrase, lead, cuts):
    output = " is a question I cannot settle here."
    released, blocked = asyncio.run(_gate(lead + phrase, _chunked(output, cuts)))
    assert not blocked and released == output


def test_prompt_tail_of_each_request_kind():
    params = SamplingParams()
    assert prompt_tail(GenerationRequest(params, prompt="by J.R.R. Tol")) == "by J.R.R. Tol"
    chat = [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "J.R.R. Tol"}]
    assert prompt_tail(GenerationRequest(params, messages=chat)) == "J.R.R. Tol"
    assert prompt_tail(GenerationRequest(params, messages=chat[:1])) == ""


def test_invisible_padding_after_the_prompt_tail_does_not_hide_it():
    released, blocked = asyncio.run(_gate("written by J.R.R. Tol" + "\u200b" * 5000, ["kien wrote it."]))
    assert blocked and released == ""
