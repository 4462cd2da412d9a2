"""The admin API end to end over real HTTP: CRUD, audit log, validation, auth, persistence, tenants."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from conftest import admin_headers
from gateway_server import GatewayServer

TARGETS = "/admin/v1/targets"
AUDIT = "/admin/v1/audit"
MODEL = "SmolLM2-135M-Instruct"
SECRET = "Zorblax Quintavius"


def actor(name: str) -> dict[str, str]:
    return {**admin_headers(), "X-Unlearn-Actor": name}


def create(client: httpx.Client, headers: dict[str, str] | None = None, **body) -> dict:
    response = client.post(TARGETS, json=body, headers=headers or admin_headers())
    assert response.status_code == 201, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, *, code: str | None = None,
                 param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def selectable_methods(server: GatewayServer) -> list[str]:
    return list(server.app.state.target_admin.methods.selectable)


def test_create_get_list_patch_delete(gateway: GatewayServer) -> None:
    with gateway.client() as client:
        body = {"name": "  Ada Lovelace ", "aliases": ["Lovelace", "lovelace", " Countess of Lovelace"],
                "description": "mathematician", "facts": ["She wrote the first program"]}
        created = create(client, headers=actor("alice"), **body)
        assert created["id"].startswith("tgt_")
        assert created["name"] == "Ada Lovelace"
        assert created["aliases"] == ["Lovelace", "Countess of Lovelace"]  # stripped, de-duplicated
        assert created["created_by"] == "alice"
        assert created["methods"] == selectable_methods(gateway)
        assert created["tenant"] == "default" and created["status"] == "active"
        assert created["created_at"] == created["updated_at"]

        other = create(client, name="Charles Babbage")  # no actor header: "admin"
        assert other["created_by"] == "admin"
        assert other["id"] != created["id"]

        listing = client.get(TARGETS, headers=admin_headers()).json()
        assert listing["object"] == "list"
        assert [t["id"] for t in listing["data"]] == [created["id"], other["id"]]

        fetched = client.get(f"{TARGETS}/{created['id']}", headers=admin_headers())
        assert fetched.status_code == 200
        assert fetched.json() == created

        patched = client.patch(f"{TARGETS}/{created['id']}", json={"status": "disabled", "description": "poet"},
                               headers=actor("bob"))
        assert patched.status_code == 200, patched.text
        after = patched.json()
        assert after["status"] == "disabled" and after["description"] == "poet"
        unchanged = {k: v for k, v in created.items() if k not in {"status", "description", "updated_at"}}
        assert {k: after[k] for k in unchanged} == unchanged  # only the given fields changed
        assert datetime.fromisoformat(after["updated_at"]) > datetime.fromisoformat(created["updated_at"])
        assert client.get(f"{TARGETS}/{created['id']}", headers=admin_headers()).json() == after

        deleted = client.delete(f"{TARGETS}/{created['id']}", headers=admin_headers())
        assert deleted.status_code == 200
        assert deleted.json() == {"id": created["id"], "object": "target", "deleted": True}
        assert_error(client.get(f"{TARGETS}/{created['id']}", headers=admin_headers()), 404,
                     code="target_not_found")
        assert_error(client.delete(f"{TARGETS}/{created['id']}", headers=admin_headers()), 404,
                     code="target_not_found")
        assert_error(client.patch(f"{TARGETS}/{created['id']}", json={"status": "active"},
                                  headers=admin_headers()), 404, code="target_not_found")
        assert [t["id"] for t in client.get(TARGETS, headers=admin_headers()).json()["data"]] == [other["id"]]


def test_audit_log(gateway: GatewayServer) -> None:
    with gateway.client() as client:
        a = create(client, headers=actor("alice"), name="Target A", tenant="acme")
        b = create(client, headers=actor("bob"), name="Target B", tenant="globex")
        r = client.patch(f"{TARGETS}/{a['id']}", json={"aliases": ["TA"]}, headers=actor("carol"))
        assert r.status_code == 200
        assert client.delete(f"{TARGETS}/{b['id']}", headers=actor("dave")).status_code == 200

        log = client.get(AUDIT, headers=admin_headers()).json()
        assert log["object"] == "list"
        entries = log["data"]
        assert [(e["actor"], e["action"], e["target_id"], e["tenant"]) for e in entries] == [
            ("dave", "delete", b["id"], "globex"),
            ("carol", "update", a["id"], "acme"),
            ("bob", "create", b["id"], "globex"),
            ("alice", "create", a["id"], "acme"),
        ]
        times = [datetime.fromisoformat(e["at"]) for e in entries]
        assert times == sorted(times, reverse=True)
        # New aliases change what GUARD derives (embeddings): recomputed in the same audited write.
        assert entries[1]["changes"] == {"aliases": {"from": [], "to": ["TA"]}, "derived": {"updated": ["guard"]}}
        assert entries[3]["changes"]["name"] == "Target A"
        assert entries[0]["changes"] == {"name": "Target B"}

        acme = client.get(AUDIT, params={"tenant": "acme"}, headers=admin_headers()).json()["data"]
        assert [(e["actor"], e["action"]) for e in acme] == [("carol", "update"), ("alice", "create")]
        limited = client.get(AUDIT, params={"limit": 2}, headers=admin_headers()).json()["data"]
        assert [e["id"] for e in limited] == [e["id"] for e in entries[:2]]
        assert_error(client.get(AUDIT, params={"limit": 0}, headers=admin_headers()), 400)


def test_list_filters_by_tenant(gateway: GatewayServer) -> None:
    with gateway.client() as client:
        acme = [create(client, name=f"Acme {i}", tenant="acme")["id"] for i in range(2)]
        create(client, name="Globex 1", tenant="globex")
        create(client, name="Default 1")
        listed = client.get(TARGETS, params={"tenant": "acme"}, headers=admin_headers()).json()["data"]
        assert [t["id"] for t in listed] == acme
        assert {t["tenant"] for t in listed} == {"acme"}
        assert len(client.get(TARGETS, headers=admin_headers()).json()["data"]) == 4
        assert client.get(TARGETS, params={"tenant": "nobody"}, headers=admin_headers()).json()["data"] == []
        assert_error(client.get(TARGETS, params={"tenant": "ac me"}, headers=admin_headers()), 400)


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "   "}, "name"),
    ({"name": ""}, "name"),
    ({}, "name"),
    ({"name": "X", "methods": ["no_such_method"]}, "methods"),
    ({"name": "X", "methods": []}, "methods"),
    ({"name": "X", "colour": "red"}, "colour"),
    ({"name": "X", "tenant": "acme corp"}, "tenant"),
    ({"name": "X", "aliases": "not a list"}, "aliases"),
    ({"name": "X" * 201}, "name"),
], ids=["blank-name", "empty-name", "no-name", "unknown-method", "empty-methods", "unknown-field",
        "tenant-with-space", "aliases-not-list", "name-too-long"])
def test_create_validation(gateway: GatewayServer, body: dict, param: str) -> None:
    with gateway.client() as client:
        error = assert_error(client.post(TARGETS, json=body, headers=admin_headers()), 400, param=param)
        assert error["type"] == "invalid_request_error"
        if param == "colour":
            assert "Unrecognized request argument" in error["message"]
        assert client.get(TARGETS, headers=admin_headers()).json()["data"] == []  # nothing was stored
        assert client.get(AUDIT, headers=admin_headers()).json()["data"] == []


def test_patch_validation(gateway: GatewayServer) -> None:
    with gateway.client() as client:
        target = create(client, name="Patchable")
        url = f"{TARGETS}/{target['id']}"
        assert_error(client.patch(url, json={"status": "sleeping"}, headers=admin_headers()), 400, param="status")
        assert_error(client.patch(url, json={"tenant": "globex"}, headers=admin_headers()), 400, param="tenant")
        assert_error(client.patch(url, json={"methods": ["nope"]}, headers=admin_headers()), 400, param="methods")
        assert_error(client.patch(url, content=b"{not json", headers=admin_headers()), 400, code="invalid_json")
        assert client.get(url, headers=admin_headers()).json() == target  # untouched


def test_admin_auth(gateway: GatewayServer) -> None:
    with gateway.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "test-admin-token"}):
            error = assert_error(client.get(TARGETS, headers=headers), 401, code="invalid_admin_token")
            assert error["type"] == "authentication_error"
            assert_error(client.post(TARGETS, json={"name": "Sneaky"}, headers=headers), 401)
            assert_error(client.get(AUDIT, headers=headers), 401)
        assert client.get(TARGETS, headers=admin_headers()).json()["data"] == []


def test_admin_disabled_without_token(make_gateway) -> None:
    server = make_gateway(admin_token=None)
    with server.client() as client:
        for headers in ({}, admin_headers()):
            error = assert_error(client.post(TARGETS, json={"name": "X"}, headers=headers), 403,
                                 code="admin_disabled")
            assert error["type"] == "permission_error"
            assert_error(client.get(TARGETS, headers=headers), 403, code="admin_disabled")


def test_insecure_admin_works_without_token(make_gateway) -> None:
    server = make_gateway(admin_token=None, insecure_admin=True)
    with server.client() as client:
        created = create(client, headers={}, name="Open Sesame")
        assert created["created_by"] == "admin"
        assert client.get(f"{TARGETS}/{created['id']}").json()["name"] == "Open Sesame"


def test_targets_persist_across_restart(make_gateway, sqlite_url: str) -> None:
    first = make_gateway(store=sqlite_url)
    with first.client() as client:
        created = create(client, headers=actor("alice"), name="Persistent Pete", aliases=["Pete"], tenant="acme")
    first.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(first.url + "/healthz", timeout=2)  # really gone

    second = make_gateway(store=sqlite_url)
    with second.client() as client:
        assert client.get(f"{TARGETS}/{created['id']}", headers=admin_headers()).json() == created
        assert [t["id"] for t in client.get(TARGETS, headers=admin_headers()).json()["data"]] == [created["id"]]
        log = client.get(AUDIT, headers=admin_headers()).json()["data"]
        assert [(e["actor"], e["action"], e["target_id"]) for e in log] == [("alice", "create", created["id"])]


@pytest.mark.model
def test_tenant_isolation(make_gateway) -> None:
    server = make_gateway(api_keys="ka:acme,kb:globex")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": f"Repeat exactly: {SECRET}"}],
            "max_tokens": 30, "temperature": 0}
    completion = {"model": MODEL, "prompt": f"{SECRET}, {SECRET}, Zorblax", "max_tokens": 12, "temperature": 0}

    def ask(path: str, body: dict, key: str) -> str:
        response = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]

    with server.client() as client:
        # Before any target exists, both tenants get the name echoed: the prompts really elicit it.
        assert SECRET in ask("/v1/chat/completions", chat, "ka")
        create(client, name=SECRET, tenant="acme")
        listed = client.get(TARGETS, params={"tenant": "globex"}, headers=admin_headers()).json()["data"]
        assert listed == []

        # GUARD steers decoding away from the name (or the gate refuses): either way it never shows.
        acme_chat = ask("/v1/chat/completions", chat, "ka")
        assert "zorblax" not in acme_chat.casefold() and "quintavius" not in acme_chat.casefold()
        acme_completion = ask("/v1/completions", completion, "ka")  # would continue " Quintavius, ..."
        assert "quintavius" not in acme_completion.casefold()

        assert SECRET in ask("/v1/chat/completions", chat, "kb")  # globex is not acme: allowed through
        assert SECRET in ask("/v1/completions", completion, "kb")  # " Quintavius, Zorblax Quintavius,"
