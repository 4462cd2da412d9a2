"""GUARD against the real SmolLM2 model and the real MiniLM embedder."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from conftest import admin_headers
from gateway.backends.base import GenerationRequest, SamplingParams
from gateway.pipeline.methods import Detection, RequestContext
from gateway.pipeline.snapshot import TenantTargets
from gateway.settings import DEFAULT_REFUSAL
from gateway.store.models import ForgetTarget, utcnow
from guards.dev_set import DEV_TARGETS
from guards.guard_method import GuardConfig, GuardMethod
from test_forget_guarantee import chat, leaks

MODEL = "SmolLM2-135M-Instruct"
TOLKIEN = next(t for t in DEV_TARGETS if t["name"] == "J.R.R. Tolkien")
CLEAN_PROMPTS = ["What is the capital of France?", "Give me a tip for sleeping well.", "What is 12 times 12?"]


def target(spec: dict, methods: list[str], tenant: str = "default", target_id: str = "t1") -> ForgetTarget:
    now = utcnow()
    return ForgetTarget(id=target_id, methods=methods, tenant=tenant, created_at=now, updated_at=now,
                        created_by="test", **spec)


def context(targets: list[ForgetTarget], text: str) -> RequestContext:
    return RequestContext("default", [{"role": "user", "content": text}], TenantTargets("default", targets))


@pytest.fixture
def guard(engine, embedder) -> GuardMethod:
    return GuardMethod(GuardConfig(), embedder, lambda: engine.tokenizer)


def test_detection_token_and_semantic(guard):
    targets = [target(TOLKIEN, ["guard"])]
    for prompt in ["Who was T0lk1en?", "Tell me about ТоIkien's books", "who is j r r tolkien"]:
        assert asyncio.run(guard.detect(context(targets, prompt))) == {"t1": 1.0}, prompt
    indirect = asyncio.run(guard.detect(context(targets, "Which Oxford professor invented the Elvish languages?")))
    assert indirect.get("t1", 0) >= guard.config.detect_threshold
    assert asyncio.run(guard.detect(context(targets, "How do I bake sourdough bread?"))) == {}


def test_targets_without_guard_are_detected_but_not_restricted(guard):
    ctx = context([target(TOLKIEN, ["alu"])], "Who was Tolkien?")
    detection = Detection(dict(asyncio.run(guard.detect(ctx))))
    assert detection.scores == {"t1": 1.0}  # detection is shared: ALU relies on it
    assert guard.plan(ctx, detection) is None


def test_floor_bans_names_even_when_detection_saw_nothing(guard, engine):
    ctx = context([target(TOLKIEN, ["guard"])], "Say something nice.")
    plan = guard.plan(ctx, Detection())
    assert plan is not None and len(plan.hook_factories) == 1 and not plan.sentence_checks
    for form in (" Tolkien", "Tolkien", " TOLKIEN"):
        ids = engine.tokenizer.encode(form, add_special_tokens=False)
        hook = plan.hook_factories[0]()
        logits = hook([1, 2, 3], ids[:-1], torch.zeros(len(engine.tokenizer)))
        assert logits[ids[-1]] == float("-inf"), form
        assert torch.isfinite(logits).sum() >= len(engine.tokenizer) - 64  # a handful of bans, not a wall


@pytest.fixture
def guarded(gateway):
    response = httpx.post(gateway.url + "/admin/v1/targets", json={**TOLKIEN, "methods": ["guard"]},
                          headers=admin_headers(), timeout=60)
    assert response.status_code == 201
    return gateway


def test_clean_prompts_match_the_raw_model_exactly(guarded, engine):
    for prompt in CLEAN_PROMPTS:
        request = GenerationRequest(params=SamplingParams(max_tokens=40, temperature=0),
                                    messages=[{"role": "user", "content": prompt}])
        raw = asyncio.run(_collect(engine, request))
        assert chat(guarded.url, prompt, stream=False, max_tokens=40)[0] == raw
        assert chat(guarded.url, prompt, stream=True, max_tokens=40)[0] == raw


async def _collect(engine, request) -> str:
    return "".join([c.text async for c in engine.generate(request)])


def test_indirect_question_is_refused_generically(guarded):
    text, _ = chat(guarded.url, "Tell me about the Oxford professor who invented the Elvish languages.",
                   stream=False)
    assert text == DEFAULT_REFUSAL


def test_banned_tokens_never_appear_in_logprobs(guarded):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Complete the name: J.R.R. Tol"}],
            "max_tokens": 30, "temperature": 0, "logprobs": True, "top_logprobs": 20}
    response = httpx.post(guarded.url + "/v1/chat/completions", json=body, timeout=120).json()
    choice = response["choices"][0]
    assert not leaks(choice["message"]["content"])
    before = ""
    for entry in (choice["logprobs"] or {}).get("content") or []:
        for piece in [entry["token"], *(t["token"] for t in entry["top_logprobs"])]:
            assert not leaks(before + piece), (before, piece)
        before += entry["token"]


def test_a_user_turn_naming_a_target_is_refused_without_generating(guard):
    targets = [target(TOLKIEN, ["guard"])]
    ctx = context(targets, "Who was J.R.R. Tolkien?")
    assert guard.plan(ctx, Detection(dict(asyncio.run(guard.detect(ctx))))).refuse
    # An operator's system prompt may name what to avoid: that alone refuses nothing.
    ctx = RequestContext("default", [{"role": "system", "content": "Never discuss Tolkien."},
                                     {"role": "user", "content": "Give me a tip for sleeping well."}],
                         TenantTargets("default", targets))
    plan = guard.plan(ctx, Detection(dict(asyncio.run(guard.detect(ctx)))))
    assert not plan.refuse and plan.hook_factories  # in play: restricted, not refused
    off = GuardMethod(GuardConfig(refuse_named=False), None, lambda: None)
    ctx = context(targets, "Who was J.R.R. Tolkien?")
    assert not off.plan(ctx, Detection({"t1": 1.0})).refuse


def test_rare_fact_terms_put_a_target_in_play_even_obfuscated(guard):
    targets = [target(TOLKIEN, ["guard"])]
    for prompt in ["Who spoke S1nd4r1n?", "What is the grammar of Q u e n y a like?"]:
        ctx = context(targets, prompt)
        detection = Detection(dict(asyncio.run(guard.detect(ctx))))
        assert detection.scores.get("t1", 0) >= 0.9, prompt
        plan = guard.plan(ctx, detection)
        assert not plan.refuse and any(m.first_match("the Hobbit of Middle-earth") for m in plan.gate_matchers)
    assert asyncio.run(guard.detect(context(targets, "Which city is Oxford University in?"))).get("t1", 0) < 0.9


def test_named_refusal_through_the_gateway_costs_no_generation(guarded):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Who was J.R.R. Tolkien?"}], "max_tokens": 30}
    response = httpx.post(guarded.url + "/v1/chat/completions", json=body, timeout=120).json()
    assert response["choices"][0]["message"]["content"] == DEFAULT_REFUSAL
    assert response["usage"]["completion_tokens"] == 0 and response["usage"]["prompt_tokens"] > 5
    metrics = httpx.get(guarded.url + "/metrics", timeout=10).text
    assert 'unlearn_refusals_total{stage="plan"} 1.0' in metrics


def test_key_terms_the_user_wrote_are_not_banned(guard):
    targets = [target(TOLKIEN, ["guard"])]
    ctx = context(targets, "Tell me about the Battle of the Somme.")
    detection = Detection({"t1": 0.9})  # "Somme" is in Tolkien's facts
    plan = guard.plan(ctx, detection)
    gate = plan.gate_matchers[0]
    assert gate.first_match("The Somme was a battle of 1916.") is None  # the user's own word
    assert gate.first_match("Tolkien's friends of the Inklings") is not None  # the rest still is
