"""Admin changes are enforced on the very next request, on every replica sharing the store."""

from __future__ import annotations

import httpx
import pytest

from conftest import admin_headers
from test_forget_guarantee import chat, leaks

TARGET = {"name": "J.R.R. Tolkien", "aliases": ["Tolkien"]}
PROMPT = "Who wrote The Lord of the Rings?"


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_register_on_one_replica_enforced_on_the_other_then_lifted(make_gateway, redis_url, sqlite_url, backend):
    store = redis_url if backend == "redis" else sqlite_url
    a = make_gateway(store=store)
    b = make_gateway(store=store)
    before, _ = chat(b.url, PROMPT, stream=False)
    assert leaks(before), "the raw model should name the author"

    created = httpx.post(a.url + "/admin/v1/targets", json=TARGET, headers=admin_headers())
    assert created.status_code == 201
    # No restart, no wait: the very next request on either replica is protected.
    for url in (b.url, a.url):
        text, _ = chat(url, PROMPT, stream=False)
        assert not leaks(text)
    streamed, _ = chat(b.url, PROMPT, stream=True)
    assert not leaks(streamed)

    disabled = httpx.patch(f"{a.url}/admin/v1/targets/{created.json()['id']}", json={"status": "disabled"},
                           headers=admin_headers())
    assert disabled.status_code == 200
    assert chat(b.url, PROMPT, stream=False)[0] == before

    httpx.patch(f"{a.url}/admin/v1/targets/{created.json()['id']}", json={"status": "active"},
                headers=admin_headers()).raise_for_status()
    assert not leaks(chat(b.url, PROMPT, stream=False)[0])
    deleted = httpx.delete(f"{b.url}/admin/v1/targets/{created.json()['id']}", headers=admin_headers())
    assert deleted.status_code == 200
    assert chat(a.url, PROMPT, stream=False)[0] == before


def test_store_down_fails_closed(make_gateway, redis_server, redis_url):
    gateway = make_gateway(store=redis_url)
    httpx.post(gateway.url + "/admin/v1/targets", json=TARGET, headers=admin_headers()).raise_for_status()
    redis_server.stop()
    try:
        body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 5}
        for stream in (False, True):
            response = httpx.post(gateway.url + "/v1/chat/completions", json={**body, "stream": stream},
                                  timeout=30)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "service_unavailable"
        assert httpx.get(gateway.url + "/readyz").status_code == 503
        assert httpx.get(gateway.url + "/healthz").status_code == 200
    finally:
        redis_server.start()


def test_fail_open_serves_with_last_known_targets(make_gateway, redis_server, redis_url):
    gateway = make_gateway(store=redis_url, fail_open=True)
    httpx.post(gateway.url + "/admin/v1/targets", json=TARGET, headers=admin_headers()).raise_for_status()
    assert not leaks(chat(gateway.url, PROMPT, stream=False)[0])  # snapshot now holds the target
    redis_server.stop()
    try:
        text, _ = chat(gateway.url, PROMPT, stream=False)
        assert text and not leaks(text)  # answered, and still with the targets it last saw
    finally:
        redis_server.start()
