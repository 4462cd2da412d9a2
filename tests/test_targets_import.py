"""`unlearn-gateway targets import`: files go through `targets:batch`, batch by batch, all or nothing each."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN, admin_headers
from fake_backend import FakeBackend
from gateway_server import GatewayServer
from typer.testing import CliRunner

from gateway.cli import app
from gateway.settings import Settings


@pytest.fixture
def server(sqlite_url: str):
    settings = Settings(store=sqlite_url, admin_token=ADMIN_TOKEN, guard_semantic=False, alu=False, uld=False)
    gateway = GatewayServer(settings, backend=FakeBackend()).start()
    yield gateway
    gateway.stop()


def names(server: GatewayServer) -> list[str]:
    return [t["name"] for t in httpx.get(server.url + "/admin/v1/targets", headers=admin_headers()).json()["data"]]


def run(server: GatewayServer, path: Path, *extra: str):
    return CliRunner().invoke(app, ["targets", "import", str(path), "--url", server.url, "--token", ADMIN_TOKEN,
                                    *extra])


def test_import_jsonl_in_batches(server: GatewayServer, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"name": f"Imported Person{i:02d}", "facts": ["a fact"]}) for i in range(25)))
    result = run(server, path, "--batch-size", "10")
    assert result.exit_code == 0, result.output
    assert sorted(names(server)) == [f"Imported Person{i:02d}" for i in range(25)]


def test_import_csv_splits_list_columns(server: GatewayServer, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("name,aliases,tenant\nAda Lovelace,Lovelace|Countess of Lovelace,acme\nAlan Turing,,\n")
    assert run(server, path).exit_code == 0
    targets = httpx.get(server.url + "/admin/v1/targets", headers=admin_headers()).json()["data"]
    ada = next(t for t in targets if t["name"] == "Ada Lovelace")
    assert ada["aliases"] == ["Lovelace", "Countess of Lovelace"] and ada["tenant"] == "acme"


def test_a_bad_line_stops_the_import_and_names_it(server: GatewayServer, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [json.dumps({"name": f"Good Person{i}"}) for i in range(4)]
    lines[2] = json.dumps({"name": "   "})
    path.write_text("\n".join(lines))
    result = run(server, path, "--batch-size", "2")
    assert result.exit_code == 1
    assert f"{path}:3" in result.output  # the file line of the bad item
    assert names(server) == ["Good Person0", "Good Person1"]  # the first batch; nothing of the bad one
