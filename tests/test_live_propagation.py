"""Propagation between replicas on one real redis-server, over real HTTP (no model: a fake backend).

A change registered through replica A must be enforced by replica B's very next request, one
by one and in bulk; a delete through A must lift it on B; a Redis that restarts empty must
make both fail closed until an operator accepts it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import ADMIN_TOKEN, admin_headers
from fake_backend import FAKE_MODEL, FakeBackend
from gateway_server import GatewayServer
from redis_server import RedisServer

from gateway.settings import DEFAULT_REFUSAL, Settings

TARGETS = "/admin/v1/targets"


def replica(store: str) -> tuple[GatewayServer, FakeBackend]:
    backend = FakeBackend()
    settings = Settings(store=store, admin_token=ADMIN_TOKEN, guard_semantic=False, alu=False, uld=False)
    return GatewayServer(settings, backend=backend).start(), backend


@pytest.fixture
def pair(redis_url: str) -> Iterator[tuple[GatewayServer, GatewayServer, FakeBackend]]:
    a, _ = replica(redis_url)
    b, b_backend = replica(redis_url)
    yield a, b, b_backend
    a.stop(), b.stop()


def answer(server: GatewayServer, backend: FakeBackend, model_says: str) -> httpx.Response:
    """B's answer to an innocent prompt when its model would say `model_says`."""
    backend.text = model_says
    return httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": FAKE_MODEL, "messages": [{"role": "user", "content": "Tell me something."}], "max_tokens": 50})


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_each_change_through_a_is_enforced_by_bs_next_request(pair) -> None:
    a, b, b_model = pair
    for i in range(15):
        name = f"Zelda Quarterfield{chr(ord('a') + i)}"
        says = f"The answer is {name}, of course."
        assert content(answer(b, b_model, says)) == says  # not a target yet
        created = httpx.post(a.url + TARGETS, json={"name": name}, headers=admin_headers(), timeout=30)
        assert created.status_code == 201
        assert content(answer(b, b_model, says)) == DEFAULT_REFUSAL  # no wait, no retry
        if i % 3 == 0:
            renamed = f"Other Name{chr(ord('a') + i)}"
            patched = httpx.patch(f"{a.url}{TARGETS}/{created.json()['id']}", json={"name": renamed},
                                  headers=admin_headers(), timeout=30)
            assert patched.status_code == 200
            assert content(answer(b, b_model, f"It is {renamed}.")) == DEFAULT_REFUSAL
        if i % 2 == 0:
            deleted = httpx.delete(f"{a.url}{TARGETS}/{created.json()['id']}", headers=admin_headers(), timeout=30)
            assert deleted.status_code == 200
            assert content(answer(b, b_model, says)) == says  # lifted at once (its shard held only it)


def test_a_batch_through_a_is_enforced_by_b_at_once(pair) -> None:
    a, b, b_model = pair
    names = [f"Batchperson Number{i:03d}" for i in range(200)]
    response = httpx.post(a.url + TARGETS + ":batch", json={"targets": [{"name": n} for n in names]},
                          headers=admin_headers(), timeout=60)
    assert response.status_code == 201 and len(response.json()["data"]) == 200
    for name in names[::37]:
        assert content(answer(b, b_model, f"Say hi to {name}.")) == DEFAULT_REFUSAL


def test_a_redis_restarted_empty_fails_closed_until_accepted() -> None:
    with RedisServer() as server:
        a, _ = replica(server.url(0))
        b, b_model = replica(server.url(0))
        try:
            for name in ("Secret Personone", "Secret Persontwo"):
                httpx.post(a.url + TARGETS, json={"name": name}, headers=admin_headers()).raise_for_status()
            assert content(answer(b, b_model, "Secret Personone!")) == DEFAULT_REFUSAL
            server.stop()
            server.restart()  # nothing on disk: every target is gone, the version counts from 0 again
            for name in ("New Personthree", "New Personfour"):  # version 2 again, as before the reset
                httpx.post(a.url + TARGETS, json={"name": name}, headers=admin_headers()).raise_for_status()
            for replica_ in (a, b):
                failed = httpx.post(replica_.url + "/v1/chat/completions", timeout=30, json={
                    "model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}]})
                assert failed.status_code == 503, failed.text
                assert failed.json()["error"]["code"] == "service_unavailable"
            metrics = httpx.get(b.url + "/metrics").text
            assert "unlearn_store_reset_pending 1.0" in metrics
            accepted = httpx.post(a.url + "/admin/v1/store:accept", headers=admin_headers())
            assert accepted.status_code == 200 and accepted.json()["accepted"] is True
            assert content(answer(b, b_model, "New Personthree!")) == DEFAULT_REFUSAL  # the new targets
            assert content(answer(b, b_model, "Secret Personone!")) == "Secret Personone!"  # the lost ones
        finally:
            a.stop(), b.stop()


def test_batch_validation_reports_every_bad_item_and_stores_nothing(pair) -> None:
    a, _, _ = pair
    items = [{"name": "Good One"}, {"name": ""}, {"name": "Good Two"}, {"name": "X", "methods": ["nope"]}, "str"]
    response = httpx.post(a.url + TARGETS + ":batch", json={"targets": items}, headers=admin_headers())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == "targets[1]"
    assert [e["index"] for e in error["errors"]] == [1, 3, 4]
    assert error["errors"][0]["param"] == "name"
    assert httpx.get(a.url + TARGETS, headers=admin_headers()).json()["data"] == []
    for body in ({"targets": []}, {"targets": {}}, {"items": [{"name": "a"}]}, {"targets": [{"name": "a"}] * 10_001}):
        bad = httpx.post(a.url + TARGETS + ":batch", json=body, headers=admin_headers())
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "targets"
    assert httpx.post(a.url + TARGETS + ":batch", json={"targets": [{"name": "a"}]}).status_code == 401


def test_readyz_waits_for_the_indexes_healthz_does_not(pair) -> None:
    a, _, _ = pair
    assert httpx.get(a.url + "/healthz").status_code == 200
    ready = httpx.get(a.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["targets"] is True
