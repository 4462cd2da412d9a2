"""`top_logprobs` reveal nothing about which targets exist (issue 12 item 2), on the real SmolLM2.

An attacker boosts candidate name tokens with `logit_bias` and counts the returned
alternatives: a tenant with a target must get exactly as many as a tenant without
one, the sampled token stays in its own list with its true logprob, and an
ordinary answer keeps all the alternatives it asked for.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from conftest import admin_headers
from gateway.backends.base import GenerationChunk, TokenLogprob
from gateway.backends.sampling import alternatives_shown, alternatives_to_fetch
from gateway.pipeline.choice_filter import ChoiceFilter
from guards.output_gate import ForbiddenMatcher

MODEL = "SmolLM2-135M-Instruct"
TOLKIEN = {"name": "J.R.R. Tolkien", "aliases": ["Tolkien", "John Ronald Reuel Tolkien"]}
KEYS = {"with": "key-with-targets", "without": "key-without-targets"}


@pytest.fixture
def two_tenants(make_gateway, engine):
    gateway = make_gateway(api_keys=f"{KEYS['with']}:secretive,{KEYS['without']}:plain")
    body = {**TOLKIEN, "tenant": "secretive"}
    httpx.post(gateway.url + "/admin/v1/targets", json=body, headers=admin_headers()).raise_for_status()
    tokenizer = engine.tokenizer
    candidates = [" Tol", " Tolk", " Tolkien", "Tol", " To", " T"]  # what an attacker probes
    bias = {str(i): 8 for text in candidates for i in tokenizer.encode(text)[:1]}
    return gateway, bias


def _post(gateway, tenant: str, path: str, body: dict) -> dict:
    response = httpx.post(gateway.url + path, json={"model": MODEL, **body}, timeout=120,
                          headers={"Authorization": f"Bearer {KEYS[tenant]}"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("top", [3, 5])
def test_alternative_counts_do_not_depend_on_targets(two_tenants, top):
    gateway, bias = two_tenants
    for prompt in ["The Hobbit was written by J.R.R.", "Middle-earth was invented by J.R.R. Tol"]:
        body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": top, "logit_bias": bias}
        counts = {}
        for tenant in KEYS:
            choice = _post(gateway, tenant, "/v1/completions", body)["choices"][0]
            counts[tenant] = [len(alts) for alts in choice["logprobs"]["top_logprobs"]]
        assert counts["with"] == counts["without"] == [top], counts


def test_every_entry_has_the_requested_alternatives_and_its_own_token(two_tenants):
    gateway, _ = two_tenants
    body = {"messages": [{"role": "user", "content": "Give me a tip for sleeping well."}], "max_tokens": 25,
            "temperature": 0, "logprobs": True, "top_logprobs": 20}
    for tenant in KEYS:
        entries = _post(gateway, tenant, "/v1/chat/completions", body)["choices"][0]["logprobs"]["content"]
        assert entries
        for entry in entries:
            assert len(entry["top_logprobs"]) == 20, entry
            own = [alt for alt in entry["top_logprobs"] if alt["token"] == entry["token"]]
            assert own and own[0]["logprob"] == entry["logprob"], entry  # greedy: the sampled token is the best


def test_only_alternatives_that_complete_a_name_are_dropped():
    """Offline: after "by J.R.R." the alternative " Tolkien" goes, " Tol" (a mere prefix) stays; the list
    is refilled from the backend's margin and cut to the requested 3; the sampled token is never dropped."""
    gate = ChoiceFilter([ForbiddenMatcher(["J.R.R. Tolkien", "Tolkien"])], prompt_tail="written by J.R.R.",
                        top_logprobs=3)
    top = ((" Tolkien", -0.1, []), (" Tol", -1.0, []), (" Lewis", -2.0, []), (" Martin", -3.0, []),
           (" Smith", -4.0, []))
    lp = TokenLogprob(" Tol", -1.0, [], top)

    async def run():
        step = await gate.feed(GenerationChunk(text=" Tol", logprobs=[lp]))
        return step, await gate.finish()

    step, tail = asyncio.run(run())
    released = [*step.logprobs, *tail.logprobs]
    assert [alt[0] for alt in released[0].top] == [" Tol", " Lewis", " Martin"]
    assert released[0].logprob == -1.0


@pytest.mark.parametrize("requested, cap", [(20, 20), (5, 5), (3, 20), (5, None)])
def test_at_an_upstream_cap_the_count_still_ignores_what_was_dropped(requested, cap):
    """An upstream returns at most `cap` alternatives (20; OpenAI's legacy completions 5). Asked for all
    of them, there is no margin to refill from: the count shown is fixed by the request and the cap
    alone, so an answer whose alternatives include a name's completion has as many as one without."""
    fetched = alternatives_to_fetch(requested, cap)
    shown = alternatives_shown(requested, cap)
    assert 1 <= shown <= requested and fetched >= shown
    if cap is None or requested + 1 < cap:
        assert shown == requested  # below the cap the client gets exactly what it asked for

    fillers = [(f" Word{i}", -1.0 - i, []) for i in range(fetched)]
    counts = []
    for first in (" Tolkien", " Lewis"):  # with and without an alternative that completes a name
        top = tuple([(first, -0.1, []), *fillers][:fetched])
        gate = ChoiceFilter([ForbiddenMatcher(["J.R.R. Tolkien"])], prompt_tail="written by J.R.R.",
                            top_logprobs=shown)

        async def run(gate=gate, top=top):
            step = await gate.feed(GenerationChunk(text=" Word0", logprobs=[TokenLogprob(" Word0", -1.0, [], top)]))
            return [*step.logprobs, *(await gate.finish()).logprobs]

        counts.append(len(asyncio.run(run())[0].top))
    assert counts == [shown, shown]
