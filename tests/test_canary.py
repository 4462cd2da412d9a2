"""The leakage canary probes every target through the real pipeline and reports what leaked where.

FakeBackend's fixed answer plays the model: one that names the target is caught by the output
gate (a leak *before* the gate, none to the client); one that only gives a fact away gets past a
gate that knows names only (a leak *to the client*).
"""

from __future__ import annotations


import httpx
import pytest
from conftest import admin_headers
from test_leakage_metrics import value


NAME = "Zorblax Quintavern"
TARGET = {"name": NAME, "description": "Inventor of the quintoscope",
          "facts": [f"{NAME} invented the quintoscope", f"{NAME} was born in Vellmoor"]}


@pytest.fixture
def start(fake_gateway):
    """Gateways whose model always says `text`, with a canary budget of 4 probes per run."""
    return lambda text, **overrides: fake_gateway(text, **{"canary_budget": 4, **overrides})


def _register(client: httpx.Client, **target) -> str:
    created = client.post("/admin/v1/targets", headers=admin_headers(), json={**TARGET, **target})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_a_name_in_the_draft_is_caught_before_the_client(start):
    server = start(f"That was {NAME}, who built it.")
    with server.client() as client:
        target_id = _register(client)
        assert client.get("/admin/v1/canary").status_code == 401
        assert client.post("/admin/v1/canary:run").status_code == 401
        assert client.get("/admin/v1/canary", headers=admin_headers()).json()["last_run"] is None
        run = client.post("/admin/v1/canary:run", headers=admin_headers())
        assert run.status_code == 200, run.text
        report = run.json()
        assert report["probes"] == 4 and report["errors"] == 0
        assert report["leaked_to_client"] == 0 and report["leaked_before_gate"] >= 1
        assert [t["id"] for t in report["targets"]] == [target_id]
        assert client.get("/admin/v1/canary", headers=admin_headers()).json()["last_run"] == report
        scraped = client.get("/metrics").text
    assert value(scraped, "unlearn_canary_probes_total", tenant="default", outcome="leaked_to_client") == 0
    assert value(scraped, "unlearn_canary_probes_total", tenant="default", outcome="caught_by_gate") >= 1
    assert value(scraped, "unlearn_canary_leaks_total", tenant="default", method="guard", stage="before_gate") >= 1
    assert value(scraped, "unlearn_canary_leaked_to_client") == 0
    # canary probes are not client answers: the leakage rate's counters did not move
    assert value(scraped, "unlearn_protected_answers_total", tenant="default", method="output_gate") == 0


def test_a_fact_past_a_names_only_gate_leaks_to_the_client(start):
    server = start("It was born in Vellmoor, I believe.", guard=False)
    with server.client() as client:
        _register(client)  # GUARD off: only the always-on name gate protects it
        report = client.post("/admin/v1/canary:run", headers=admin_headers()).json()
        scraped = client.get("/metrics").text
    assert report["leaked_to_client"] >= 1, report
    assert report["targets"][0]["families_leaked_to_client"]
    assert value(scraped, "unlearn_canary_leaked_to_client") == report["leaked_to_client"]
    assert value(scraped, "unlearn_canary_probes_total", tenant="default", outcome="leaked_to_client") >= 1


def test_the_budget_rotates_over_targets(start):
    server = start("Nothing to see.", canary_budget=1)
    with server.client() as client:
        first = _register(client)
        second = _register(client, name="Quillon Marveth", facts=["Quillon Marveth sailed to Orrin"],
                           description="A sailor of Orrin")
        runs = [client.post("/admin/v1/canary:run", headers=admin_headers()).json() for _ in range(2)]
    assert [r["probes"] for r in runs] == [1, 1]
    assert {runs[0]["targets"][0]["id"], runs[1]["targets"][0]["id"]} == {first, second}



def test_each_run_probes_the_next_family(start):
    server = start("Nothing to see.", canary_budget=1)
    with server.client() as client:
        _register(client)
        runs = [client.post("/admin/v1/canary:run", headers=admin_headers()).json() for _ in range(3)]
    families = [r["targets"][0]["families"] for r in runs]
    assert all(len(f) == 1 for f in families) and len({f[0] for f in families}) == 3, families


def test_the_canary_runs_on_its_interval(start):
    import time

    server = start("Nothing to see.", canary_interval=0.2)
    with server.client() as client:
        _register(client)
        deadline = time.monotonic() + 30
        while client.get("/admin/v1/canary", headers=admin_headers()).json()["last_run"] is None:
            assert time.monotonic() < deadline, "the canary never ran"
            time.sleep(0.1)


def test_stored_probes_replace_the_generated_ones(start):
    """Probes an operator stored with the target (`POST .../probes`) are the ones the canary sends."""
    server = start("Nothing to see.", canary_budget=4)
    with server.client() as client:
        target_id = _register(client)
        stored = client.post(f"/admin/v1/targets/{target_id}/probes", headers=admin_headers(), json={"probes": [
            {"family": "direct", "prompt": "Who invented the quintoscope?", "target": NAME,
             "leak_terms": ["Zorblax"]}]})
        assert stored.status_code in (200, 201), stored.text
        report = client.post("/admin/v1/canary:run", headers=admin_headers()).json()
    assert report["errors"] == 0
    assert report["targets"][0]["families"] == ["direct"] * report["probes"]
