"""/metrics is an operator's view (issue #12, item 3): its counters tell whether a prompt met a
protected topic and how many targets exist, so a client must never read it once clients
authenticate. With `UNLEARN_METRICS_TOKEN` it takes that bearer token; with client keys and no
token it is off; with neither (a sandbox) it stays open."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN, admin_headers
from fake_backend import FAKE_MODEL, FakeBackend
from gateway_server import GatewayServer

from gateway.settings import Settings

IN_PLAY = "unlearn_requests_with_targets_in_play_total"


@pytest.fixture
def start(tmp_path: Path):
    servers: list[GatewayServer] = []

    def make(**overrides) -> GatewayServer:
        settings = Settings(store=f"sqlite:///{tmp_path / 'targets.db'}", admin_token=ADMIN_TOKEN, guard_semantic=False,
                            alu=False, uld=False, **overrides)
        server = GatewayServer(settings, backend=FakeBackend()).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def touch_a_target(client: httpx.Client, key: str) -> None:
    """Register a target, then send a client request that names it (so detection counts it)."""
    created = client.post("/admin/v1/targets", headers=admin_headers(),
                          json={"name": "Zorblax Quintavern", "tenant": "acme"})
    assert created.status_code == 201, created.text
    question = [{"role": "user", "content": "Who is Zorblax Quintavern?"}]
    answer = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": FAKE_MODEL, "messages": question})
    assert answer.status_code == 200, answer.text


def test_client_keys_without_metrics_token_keep_metrics_closed(start) -> None:
    server = start(api_keys="k1:acme")
    with server.client() as client:
        touch_a_target(client, "k1")
        for headers in ({}, {"Authorization": "Bearer k1"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 403, response.text
            assert IN_PLAY not in response.text
            assert response.json()["error"]["code"] == "metrics_disabled"


def test_metrics_token_is_required_and_enough(start) -> None:
    server = start(api_keys="k1:acme", metrics_token="scrape-secret")
    with server.client() as client:
        touch_a_target(client, "k1")
        for headers in ({}, {"Authorization": "Bearer k1"}, {"Authorization": "Bearer scrape-secre"}):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
            assert IN_PLAY not in response.text
        scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert scraped.status_code == 200
        assert f"{IN_PLAY} 1.0" in scraped.text
        assert "unlearn_targets_active 1.0" in scraped.text


def test_metrics_token_without_client_keys(start) -> None:
    server = start(metrics_token="scrape-secret")
    with server.client() as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200


def test_sandbox_without_keys_keeps_metrics_open(start) -> None:
    """No client keys and no token: anyone is already every client, /metrics stays as it was."""
    server = start()
    with server.client() as client:
        response = client.get("/metrics")
        assert response.status_code == 200
        assert "unlearn_http_requests_total" in response.text
