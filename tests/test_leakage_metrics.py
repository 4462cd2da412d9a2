"""Leakage metrics, request ids and the refusal's finish_reason, at the HTTP level (no model).

FakeBackend ignores logits hooks and always says the same text, so a text naming a target is
exactly what the last-line output gate must catch: a near-leak.
"""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from conftest import admin_headers
from fake_backend import FAKE_MODEL
from redis_server import RedisServer, redis_binary

from gateway.metrics import DETECTION_KINDS, STAGE_ACTIONS

NAME = "Zorblax Quintavern"


@pytest.fixture
def start(fake_gateway):
    return fake_gateway


def register(client: httpx.Client, tenant: str = "default") -> None:
    created = client.post("/admin/v1/targets", headers=admin_headers(), json={"name": NAME, "tenant": tenant})
    assert created.status_code == 201, created.text


def chat(client: httpx.Client, prompt: str, **extra) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": FAKE_MODEL, "messages": [{"role": "user", "content": prompt}],
                                                     **extra})


def value(scraped: str, name: str, **labels: str) -> float:
    """A sample's value; every label must match (order as exported does not matter)."""
    for line in scraped.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(match[3])
    raise AssertionError(f"no sample {name}{labels}")


def test_detection_kinds_follow_guards_scores():
    from guards.guard_method import CUE_SCORE, FUZZY_SCORE

    assert DETECTION_KINDS == {1.0: "name", CUE_SCORE: "cue_term", FUZZY_SCORE: "misspelling"}


def test_known_series_start_at_zero(start):
    server = start(metrics_token="scrape")
    with server.client() as client:
        scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape"}).text
    for method in ("output_gate", "guard"):
        assert value(scraped, "unlearn_near_leaks_total", tenant="default", method=method) == 0
        assert value(scraped, "unlearn_protected_answers_total", tenant="default", method=method) == 0
        for stage, actions in STAGE_ACTIONS.items():
            for action in actions:
                assert value(scraped, "unlearn_interventions_total", tenant="default", stage=stage, method=method,
                             action=action) == 0
    assert value(scraped, "unlearn_fail_open_answers_total", tenant="default") == 0
    assert value(scraped, "unlearn_targets_in_play_total", tenant="default", kind="semantic") == 0
    assert "process_resident_memory_bytes" in scraped
    assert "acme" not in scraped  # with client keys the tenants come from configuration, not traffic


def test_tenants_of_the_api_keys_are_initialised(start):
    server = start(api_keys="k1:acme,k2:globex", metrics_token="scrape")
    with server.client() as client:
        scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape"}).text
    for tenant in ("acme", "globex", "default"):
        assert value(scraped, "unlearn_answers_total", tenant=tenant, outcome="refused") == 0


def test_gate_catch_is_a_near_leak_of_every_protecting_method(start):
    server = start(text=f"It was {NAME} of course.")
    with server.client() as client:
        register(client)
        clean = chat(client, "Tell me a story.")  # names nothing: no plan refusal, the gate catches it
        assert clean.status_code == 200 and clean.json()["choices"][0]["finish_reason"] == "stop"
        scraped = client.get("/metrics").text
    assert value(scraped, "unlearn_near_leaks_total", tenant="default", method="output_gate") == 1
    assert value(scraped, "unlearn_near_leaks_total", tenant="default", method="guard") == 1
    assert value(scraped, "unlearn_interventions_total", tenant="default", stage="gate", method="output_gate",
                 action="refused") == 1
    assert value(scraped, "unlearn_protected_answers_total", tenant="default", method="guard") == 1
    assert value(scraped, "unlearn_answers_total", tenant="default", outcome="refused") == 1
    assert value(scraped, "unlearn_refusals_total", stage="gate") == 1
    assert NAME.split()[0] not in scraped  # no target id or name in any label (not opted in)


def test_plan_refusal_counts_detection_kind_and_finish_reason(start):
    server = start(refusal_finish_reason="content_filter")
    with server.client() as client:
        register(client)
        refused = chat(client, f"Who is {NAME}?")
        assert refused.json()["choices"][0]["finish_reason"] == "content_filter"
        streamed = chat(client, f"Who is {NAME}?", stream=True)
        assert '"finish_reason":"content_filter"' in streamed.text.replace(" ", "")
        answered = chat(client, "Tell me a story.")
        assert answered.json()["choices"][0]["finish_reason"] == "stop"  # only refusals change
        scraped = client.get("/metrics").text
    assert value(scraped, "unlearn_targets_in_play_total", tenant="default", kind="name") == 2
    assert value(scraped, "unlearn_interventions_total", tenant="default", stage="plan", method="guard",
                 action="refused") == 2
    assert value(scraped, "unlearn_near_leaks_total", tenant="default", method="guard") == 0
    assert value(scraped, "unlearn_answers_total", tenant="default", outcome="answered") == 1
    assert value(scraped, "unlearn_time_to_first_token_seconds_count") == 1


def test_near_leaks_by_target_only_when_opted_in(start):
    for opted_in in (False, True):
        server = start(text=f"It was {NAME}.", metrics_target_ids=opted_in)
        with server.client() as client:
            created = client.post("/admin/v1/targets", headers=admin_headers(), json={
                "name": NAME, "facts": [f"{NAME} invented the quintoscope"]})
            target_id = created.json()["id"]
            chat(client, "What is a quintoscope?")  # a cue term: in play, not named, so the gate catches it
            scraped = client.get("/metrics").text
            client.delete(f"/admin/v1/targets/{target_id}", headers=admin_headers())
        server.stop()
        assert value(scraped, "unlearn_targets_in_play_total", tenant="default", kind="cue_term") == 1
        assert value(scraped, "unlearn_near_leaks_total", tenant="default", method="guard") == 1
        if opted_in:
            assert value(scraped, "unlearn_near_leaks_by_target_total", tenant="default", target=target_id) == 1
        else:
            assert "unlearn_near_leaks_by_target" not in scraped and target_id not in scraped


def test_fail_open_answers_and_store_health_are_counted(start):
    with RedisServer(redis_binary()) as redis:
        server = start(store=redis.url(0), fail_open=True)
        with server.client() as client:
            register(client)
            assert chat(client, "Tell me a story.").status_code == 200
            healthy = client.get("/metrics").text
            redis.stop()
            assert chat(client, "Tell me a story.").status_code == 200
            down = client.get("/metrics").text
            redis.start()
    assert value(healthy, "unlearn_store_up") == 1 and value(healthy, "unlearn_store_staleness_seconds") == 0
    assert value(healthy, "unlearn_fail_open_answers_total", tenant="default") == 0
    assert value(healthy, "unlearn_target_set_version") >= 1
    assert value(down, "unlearn_fail_open_answers_total", tenant="default") == 1
    assert value(down, "unlearn_store_up") == 0 and value(down, "unlearn_store_staleness_seconds") > 0


def test_request_id_is_echoed_or_made_and_logged(start, caplog):
    server = start()
    with server.client() as client:
        given = client.get("/healthz", headers={"x-request-id": "client-id-42"})
        made = chat(client, "hi")
        odd = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
        missing = client.post("/v1/chat/completions", content=b"{")  # errors carry one too
    assert given.headers["x-request-id"] == "client-id-42"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert odd.headers["x-request-id"] != "bad id\twith spaces"
    assert missing.status_code >= 400 and missing.headers["x-request-id"]
    from gateway.middleware import REQUEST_ID

    with caplog.at_level(logging.INFO):
        token = REQUEST_ID.set("abc123")
        try:
            logging.getLogger("gateway.test").info("inside a request")
        finally:
            REQUEST_ID.reset(token)
    assert "[request_id=abc123] inside a request" in caplog.text


def test_a_hook_that_changes_the_top_token_counts_as_a_decode_intervention():
    import asyncio

    import torch

    from gateway.backends.base import GenerationChunk, GenerationRequest, SamplingParams
    from gateway.backends.sampling import apply_hooks
    from gateway.metrics import GatewayMetrics
    from gateway.pipeline.methods import Detection, MethodPlan, RequestContext
    from gateway.pipeline.pipeline import RequestPlan, collect
    from gateway.pipeline.snapshot import TenantTargets

    class TwoSteps:
        """Decodes two tokens from fixed scores through the request's hooks (token 0 is the favourite)."""

        supports_logits_hooks = True
        tokenizer = None

        async def generate(self, request):
            output: list[int] = []
            for step in range(2):
                scores = apply_hooks(torch.tensor([5.0, 1.0, 0.0]), request.logits_hooks, [], output)
                output.append(int(torch.argmax(scores)))
                yield GenerationChunk(text=f" t{output[-1]}", finish_reason="stop" if step else None,
                                      completion_tokens=len(output))

    def ban_zero(prompt_ids, output_ids, logits):
        logits[0] = float("-inf")  # in place, as hooks may
        return logits

    def leave(prompt_ids, output_ids, logits):
        return logits

    def rescore_same_top(prompt_ids, output_ids, logits):
        return logits * 0.5 - 3  # a new tensor, every score moved, the same favourite

    def rescore_new_top(prompt_ids, output_ids, logits):
        return logits.flip(0)  # a new tensor whose favourite is another token

    metrics = GatewayMetrics()
    ctx = RequestContext("default", [{"role": "user", "content": "hi"}], TenantTargets("default", []))
    plans = {"bystander": MethodPlan(hook_factories=[lambda: leave, lambda: rescore_same_top]),
             "steerer": MethodPlan(hook_factories=[lambda: ban_zero])}
    plan = RequestPlan(ctx, Detection(), plans, "no", metrics)
    request = GenerationRequest(SamplingParams(), messages=ctx.conversation)
    answer = asyncio.run(collect(plan.run(TwoSteps(), request)))
    assert answer.text == " t1 t1"
    assert asyncio.run(collect(RequestPlan(ctx, Detection(), {"rescorer": MethodPlan(hook_factories=[
        lambda: rescore_new_top])}, "no", metrics).run(TwoSteps(), GenerationRequest(
            SamplingParams(), messages=ctx.conversation)))).text == " t2 t2"
    scraped = metrics.render().decode()
    assert value(scraped, "unlearn_interventions_total", stage="decode", method="steerer", action="changed") == 1
    assert value(scraped, "unlearn_interventions_total", stage="decode", method="rescorer", action="changed") == 1
    assert "bystander" not in scraped.split("unlearn_interventions_total", 1)[1].split("# HELP", 1)[0]
    assert value(scraped, "unlearn_answers_total", tenant="default", outcome="answered") == 2
