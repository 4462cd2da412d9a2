"""Per-target probes, forget report (`verify`) and dry run (issue #14) against the real SmolLM2 model.

Kept small (a handful of probes, 24 tokens): the point is the wiring -- probes stored with the
target, both paths (live pipeline and raw backend) really asked, the reference filter applied, the
report stored and shown -- not the leak figures of a 135M model, which `unlearn-gateway eval` measures.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN, admin_headers
from fake_backend import FakeBackend
from gateway_server import GatewayServer

from gateway.settings import DEFAULT_REFUSAL, Settings

MODEL = "SmolLM2-135M-Instruct"
TOLKIEN = {"name": "J.R.R. Tolkien", "aliases": ["Tolkien", "John Ronald Reuel Tolkien"],
           "description": "English author of The Hobbit and The Lord of the Rings",
           "facts": ["Tolkien was a professor at Oxford"]}
PROBES = [  # the raw SmolLM2 names Tolkien for the two reverse probes (tests/test_forget_guarantee.py)
    {"id": "lotr", "family": "reverse", "prompt": "Who wrote The Lord of the Rings?"},
    {"id": "hobbit", "family": "reverse", "prompt": "Who wrote The Hobbit?"},
    {"id": "direct", "family": "direct", "prompt": "Who is J.R.R. Tolkien?"},
    {"id": "paris", "kind": "neighbour", "prompt": "What is the capital of France?", "answer_terms": ["Paris"]},
]
SMALL = {"alu": False, "uld": False}


def _client(gateway: GatewayServer) -> httpx.Client:
    """Generous timeout: on a CPU shared with other jobs a few 24-token answers can take minutes."""
    return httpx.Client(base_url=gateway.url, timeout=900)


def _register(client: httpx.Client) -> str:
    created = client.post("/admin/v1/targets", headers=admin_headers(), json=TOLKIEN)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_verify_stores_a_report_with_no_leak_on_guarded_probes(make_gateway):
    gateway = make_gateway(**SMALL)
    with _client(gateway) as client:
        target_id = _register(client)
        stored = client.post(f"/admin/v1/targets/{target_id}/probes", headers=admin_headers(), json={"probes": PROBES})
        assert stored.status_code == 200, stored.text
        assert [p["id"] for p in stored.json()["data"]] == ["lotr", "hobbit", "direct", "paris"]
        assert all("Tolkien" in p["leak_terms"] for p in stored.json()["data"][:2])  # the direct probe says it
        listed = client.get(f"/admin/v1/targets/{target_id}/probes", headers=admin_headers()).json()
        assert listed["stored"] is True and listed["data"] == stored.json()["data"]
        assert client.get(f"/admin/v1/targets/{target_id}", headers=admin_headers()).json()["probes"] == 4

        run = client.post(f"/admin/v1/targets/{target_id}/verify", headers=admin_headers(),
                          json={"max_probes": 4, "max_tokens": 24})
        assert run.status_code == 200, run.text
        report = run.json()
        rows = {r["id"]: r for r in report["probes"]}
        assert set(rows) == {"lotr", "hobbit", "direct", "paris"}
        assert "Tolkien" in rows["lotr"]["raw_answer"] and rows["lotr"]["kept"], rows["lotr"]
        assert report["source"] == "stored" and report["probes_asked"] == 4 and report["errors"] == 0
        assert report["target_n"] >= 2  # the raw backend leaks at least the two reverse probes: they count
        assert report["leak_rate"] == 0.0, rows
        assert report["families"]["reverse"]["leak_rate"] == 0.0 and report["families"]["reverse"]["asked"] == 2
        assert report["neighbours"] == {"kind": "neighbour", "asked": 1, "n": 1, "kept": 1, "rate": 1.0}, rows["paris"]
        assert 0.0 <= report["tell_rate"] <= 1.0
        assert not any(r["outcome"] == "answered" and "Tolkien" in r["answer"] for r in rows.values())

        shown = client.get(f"/admin/v1/targets/{target_id}", headers=admin_headers()).json()
        verification = shown["verification"]
        assert verification["leak_rate"] == 0.0 and verification["at"] and verification["max_tokens"] == 24
        assert verification == {k: v for k, v in report.items() if k not in ("object", "target_id", "probes")}
        audit = client.get("/admin/v1/audit", headers=admin_headers()).json()["data"]
        assert audit[0]["action"] == "update" and audit[0]["changes"]["derived"] == {"updated": ["verification"]}


def test_dry_run_reports_the_block_without_registering(make_gateway):
    gateway = make_gateway(**SMALL)
    prompt = "Who is J.R.R. Tolkien?"
    with _client(gateway) as client:
        dry = client.post("/admin/v1/targets:dry-run", headers=admin_headers(), json={
            "target": TOLKIEN, "prompts": [prompt, "What is 2 + 2?"], "max_probes": 1, "max_tokens": 24,
            "neighbours": [{"question": "What is the capital of France?", "answers": ["Paris"]}]})
        assert dry.status_code == 200, dry.text
        result = dry.json()
        named, other = result["prompts"]
        assert result["stored"] is False and result["blocked"] == 1
        assert named["outcome"] in ("refused", "blocked") and named["detected"] is True, named
        assert named["answer"] == DEFAULT_REFUSAL and named["outcome_now"] == "answered"
        assert other["outcome"] == "answered" and other["detected"] is False
        [neighbour] = result["neighbours"]
        assert neighbour["answered_now"] and neighbour["hurt"] is False, neighbour
        assert client.get("/admin/v1/targets", headers=admin_headers()).json()["data"] == []
        answer = client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0})
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] != DEFAULT_REFUSAL


@pytest.mark.parametrize("path", ["/admin/v1/targets/{id}/probes", "/admin/v1/targets/{id}/verify"])
def test_unknown_targets_and_bad_bodies(make_gateway, path):
    gateway = make_gateway(guard_semantic=False, **SMALL)
    with gateway.client() as client:
        url = path.format(id="tgt_nope")
        body = {"generate": True} if url.endswith("/probes") else {}
        assert client.post(url, json=body).status_code == 401
        missing = client.post(url, headers=admin_headers(), json=body)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "target_not_found"
        assert client.get("/admin/v1/targets/tgt_nope/probes", headers=admin_headers()).status_code == 404

        target_id = _register(client)
        url = path.format(id=target_id)
        bad = [b"not json", b"[]", b'{"unknown": 1}']
        if url.endswith("/probes"):
            bad += [b"{}", b'{"probes": [], "generate": false}', b'{"generate": true, "probes": [{"prompt": "x"}]}',
                    b'{"probes": [{"family": "nope", "prompt": "Who wrote it?"}]}',
                    b'{"probes": [{"family": "direct", "prompt": "Who?", "leak_terms": [1]}]}',
                    b'{"probes": [{"family": "multiple_choice", "prompt": "A or B?", "choices": {"A": "a"}, '
                    b'"answer": ["A"]}]}',
                    b'{"probes": [{"id": "a", "family": "direct", "prompt": "Who?"}, '
                    b'{"id": "a", "family": "direct", "prompt": "Who?"}]}']
        else:
            bad += [b'{"max_probes": 0}', b'{"max_tokens": 100000}']
        for raw in bad:
            response = client.post(url, headers={**admin_headers(), "Content-Type": "application/json"}, content=raw)
            assert response.status_code == 400, (raw, response.text)
            assert response.json()["error"]["type"] == "invalid_request_error"
        assert client.get(f"/admin/v1/targets/{target_id}", headers=admin_headers()).json().get("probes") is None


def test_generated_probes_and_dry_run_validation(make_gateway):
    gateway = make_gateway(guard_semantic=False, **SMALL)
    with gateway.client() as client:
        target_id = _register(client)
        preview = client.get(f"/admin/v1/targets/{target_id}/probes", headers=admin_headers()).json()
        assert preview["stored"] is False and preview["data"]
        made = client.post(f"/admin/v1/targets/{target_id}/probes", headers=admin_headers(), json={
            "generate": True, "distractors": ["C.S. Lewis", "George Orwell"],
            "neighbours": [{"question": "Who wrote Narnia?", "answers": ["Lewis"]}]})
        assert made.status_code == 200, made.text
        rows = {p.get("family") or p["kind"] for p in made.json()["data"]}
        assert {"direct", "reverse", "multiple_choice", "neighbour"} <= rows
        assert made.json()["skipped"] == []
        shown = client.get(f"/admin/v1/targets/{target_id}", headers=admin_headers()).json()
        assert shown["probes"] == len(made.json()["data"]) and "verification" not in shown

        for body, param in (({}, "target"), ({"target": {"name": " "}}, "target.name"),
                            ({"target": {**TOLKIEN, "methods": ["nope"]}}, "methods"),
                            ({"target": TOLKIEN, "prompts": [" "]}, None),
                            ({"target": TOLKIEN, "extra": 1}, "extra")):
            response = client.post("/admin/v1/targets:dry-run", headers=admin_headers(), json=body)
            assert response.status_code == 400, (body, response.text)
            if param is not None:
                assert response.json()["error"]["param"] == param, response.text
        assert client.post("/admin/v1/targets:dry-run", json={"target": TOLKIEN}).status_code == 401


ZORBLAX = {"name": "Zorblax Quintavern", "facts": ["Zorblax Quintavern invented the quintoscope",
                                                  "Zorblax Quintavern was born in Vellmoor"]}


@pytest.mark.parametrize(("text", "leak_rate", "outcome"), [
    ("That was Zorblax Quintavern.", 0.0, "blocked"),  # the name: the output gate refuses it
    ("That was the man who invented the quintoscope.", 1.0, "answered"),  # a fact the names-only gate lets by
], ids=["caught", "leaked"])
def test_verify_counts_what_reaches_the_client(tmp_path: Path, text: str, leak_rate: float, outcome: str):
    """FakeBackend plays the model (the same answer raw and live): the report follows the gate's verdict."""
    settings = Settings(store=f"sqlite:///{tmp_path / 'targets.db'}", admin_token=ADMIN_TOKEN, guard=False, **SMALL)
    with GatewayServer(settings, backend=FakeBackend(text)) as gateway, gateway.client() as client:
        created = client.post("/admin/v1/targets", headers=admin_headers(), json=ZORBLAX)
        target_id = created.json()["id"]
        probes = [{"id": "born", "family": "reverse", "prompt": "Who was born in Vellmoor?"}]
        assert client.post(f"/admin/v1/targets/{target_id}/probes", headers=admin_headers(),
                           json={"probes": probes}).status_code == 200
        report = client.post(f"/admin/v1/targets/{target_id}/verify", headers=admin_headers()).json()
        assert report["target_n"] == 1 and report["leak_rate"] == leak_rate, report
        assert report["families"]["reverse"] == {"asked": 1, "n": 1, "leaked": int(leak_rate), "leak_rate": leak_rate}
        assert report["probes"][0]["outcome"] == outcome and report["probes"][0]["raw_answer"] == text
        assert report["neighbours"]["kind"] == "general"  # no neighbour stored: general questions stand in
        shown = client.get(f"/admin/v1/targets/{target_id}", headers=admin_headers()).json()["verification"]
        assert shown["leak_rate"] == leak_rate and shown["source"] == "stored"
