"""One behavioural suite for every TargetStore backend, run against real SQLite files and a real Redis."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port

from gateway.store import (
    ForgetTarget,
    StoreUnavailable,
    TargetCreate,
    TargetPatch,
    TargetStatus,
    TargetStore,
    open_store,
)
from gateway.store.redis import RedisTargetStore
from gateway.store.sqlite import SqliteTargetStore

Opener = Callable[[], TargetStore]


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    # Resolved lazily so a sqlite-only run never starts redis-server.
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
async def open_new(store_url: str) -> AsyncIterator[Opener]:
    """Opens another store object on the same backend (a second replica); all closed at teardown."""
    opened: list[TargetStore] = []

    def opener() -> TargetStore:
        opened.append(open_store(store_url))
        return opened[-1]

    yield opener
    for store in opened:
        await store.close()


@pytest.fixture
def store(open_new: Opener) -> TargetStore:
    return open_new()


def spec(name: str = "Jane Doe", **kw: object) -> TargetCreate:
    return TargetCreate(name=name, **kw)  # type: ignore[arg-type]


async def make(
    store: TargetStore, name: str = "Jane Doe", actor: str = "alice", **kw: object
) -> ForgetTarget:
    return await store.create(spec(name, **kw), methods=["suppress"], actor=actor)


# -- CRUD -------------------------------------------------------------------------


async def test_store_satisfies_protocol(store: TargetStore) -> None:
    assert isinstance(store, TargetStore)
    assert store.url


async def test_create_then_get_roundtrips(store: TargetStore) -> None:
    created = await store.create(
        spec("Jane Doe", aliases=["J. Doe", "jane"], description="d", facts=["born 1970"], documents=["doc"]),
        methods=["Suppress", "steer"],
        actor="alice",
    )
    assert created.id.startswith("tgt_") and len(created.id) == 36
    assert created.methods == ["Suppress", "steer"]  # stored as given
    assert created.created_by == "alice" and created.tenant == "default"
    assert created.status is TargetStatus.active
    assert created.created_at == created.updated_at and created.created_at.tzinfo is not None
    assert await store.get(created.id) == created
    assert await store.get("tgt_unknown") is None


async def test_list_is_oldest_first_and_filters_by_tenant(store: TargetStore) -> None:
    a = await make(store, "A", tenant="acme")
    b = await make(store, "B")
    c = await make(store, "C", tenant="acme")
    assert [t.id for t in await store.list()] == [a.id, b.id, c.id]
    assert [t.id for t in await store.list("acme")] == [a.id, c.id]
    assert [t.id for t in await store.list("default")] == [b.id]
    assert await store.list("nobody") == []


async def test_update_changes_only_the_fields_set(store: TargetStore) -> None:
    target = await make(store, aliases=["JD"], description="old")
    updated = await store.update(
        target.id, TargetPatch(description="new", status=TargetStatus.disabled), actor="bob"
    )
    assert updated is not None
    assert updated.description == "new" and updated.status is TargetStatus.disabled
    assert (updated.name, updated.aliases, updated.methods) == (target.name, target.aliases, target.methods)
    assert (updated.created_at, updated.created_by, updated.tenant) == (target.created_at, "alice", "default")
    assert updated.updated_at > target.updated_at
    assert await store.get(target.id) == updated


async def test_derived_data_is_stored_merged_and_versioned(store: TargetStore) -> None:
    target = await store.create(spec(), methods=["guard"], actor="alice", derived={"guard": {"v": [0.5, 0.25]}})
    assert (await store.get(target.id)).derived == {"guard": {"v": [0.5, 0.25]}}
    version = await store.version()
    updated = await store.update(target.id, TargetPatch(), actor="trainer", derived={"uld": {"status": "queued"}})
    assert updated.derived == {"guard": {"v": [0.5, 0.25]}, "uld": {"status": "queued"}}
    assert await store.version() == version + 1  # replicas must see new derived data too
    entry = (await store.audit(limit=1))[0]
    assert entry.changes == {"derived": {"updated": ["uld"]}}
    assert "derived" not in target.public()


async def test_update_unknown_and_noop(store: TargetStore) -> None:
    assert await store.update("tgt_unknown", TargetPatch(name="x"), actor="bob") is None
    target = await make(store)
    version = await store.version()
    same = await store.update(target.id, TargetPatch(name=target.name), actor="bob")
    assert same == target
    assert await store.version() == version  # nothing changed: no bump, no audit
    assert len(await store.audit()) == 1


async def test_delete(store: TargetStore) -> None:
    keep, gone = await make(store, "Keep"), await make(store, "Gone")
    assert await store.delete(gone.id, actor="bob") is True
    assert await store.get(gone.id) is None
    assert [t.id for t in await store.list()] == [keep.id]
    assert await store.delete(gone.id, actor="bob") is False
    assert await store.delete("tgt_unknown", actor="bob") is False


async def test_version_grows_on_every_change_and_not_on_reads(store: TargetStore) -> None:
    v0 = await store.version()
    target = await make(store)
    v1 = await store.version()
    await store.update(target.id, TargetPatch(name="Renamed"), actor="bob")
    v2 = await store.version()
    await store.delete(target.id, actor="bob")
    v3 = await store.version()
    assert v0 < v1 < v2 < v3
    await store.get(target.id), await store.list(), await store.audit(), await store.ping()
    await store.delete(target.id, actor="bob")  # unknown id: not a change
    assert await store.version() == v3


# -- audit ------------------------------------------------------------------------


async def test_audit_records_who_did_what(store: TargetStore) -> None:
    target = await make(store, "Jane", actor="alice", aliases=["JD"])
    await store.update(target.id, TargetPatch(name="Janet", aliases=["JD"]), actor="bob")
    await store.delete(target.id, actor="carol")
    delete, update, create = await store.audit()
    assert [e.action for e in (create, update, delete)] == ["create", "update", "delete"]
    assert [e.actor for e in (create, update, delete)] == ["alice", "bob", "carol"]
    assert {e.target_id for e in (create, update, delete)} == {target.id}
    assert create.id < update.id < delete.id
    assert create.at <= update.at <= delete.at
    assert create.changes["name"] == "Jane" and create.changes["aliases"] == ["JD"]
    assert create.changes["methods"] == ["suppress"] and create.changes["tenant"] == "default"
    assert update.changes == {"name": {"from": "Jane", "to": "Janet"}}  # aliases were set but unchanged
    assert delete.changes == {"name": "Janet"}


async def test_audit_tenant_filter_and_limit(store: TargetStore) -> None:
    for i in range(5):
        await make(store, f"acme-{i}", tenant="acme")
        await make(store, f"other-{i}", tenant="other")
    acme = await store.audit(tenant="acme")
    assert [e.changes["name"] for e in acme] == [f"acme-{i}" for i in reversed(range(5))]
    assert {e.tenant for e in acme} == {"acme"}
    assert [e.changes["name"] for e in await store.audit(limit=3)] == ["other-4", "acme-4", "other-3"]
    assert len(await store.audit(tenant="acme", limit=2)) == 2
    assert await store.audit(limit=0) == []
    assert await store.audit(tenant="nobody") == []


# -- sharing, persistence, concurrency --------------------------------------------


async def test_reopened_store_keeps_everything(open_new: Opener) -> None:
    first = open_new()
    target = await make(first)
    await first.update(target.id, TargetPatch(description="kept"), actor="bob")
    version, audit = await first.version(), await first.audit()
    await first.close()
    second = open_new()
    assert [t.description for t in await second.list()] == ["kept"]
    assert await second.version() == version
    assert await second.audit() == audit


async def test_two_store_objects_share_state(open_new: Opener) -> None:
    replica_a, replica_b = open_new(), open_new()
    target = await make(replica_a)
    assert await replica_b.get(target.id) == target
    assert await replica_b.version() == await replica_a.version()
    await replica_b.update(target.id, TargetPatch(name="Changed"), actor="bob")
    assert (await replica_a.get(target.id)).name == "Changed"  # type: ignore[union-attr]
    assert await replica_a.version() == await replica_b.version()


async def test_concurrent_creates_all_land(open_new: Opener) -> None:
    store = open_new()
    before = await store.version()
    created = await asyncio.gather(*(make(store, f"n{i}") for i in range(20)))
    assert {t.id for t in await store.list()} == {t.id for t in created}
    assert await store.version() == before + 20
    assert len(await store.audit(limit=100)) == 20


async def test_concurrent_writes_from_two_replicas(open_new: Opener) -> None:
    a, b = open_new(), open_new()
    target = await make(a)
    before = await a.version()
    await asyncio.gather(
        *(a.update(target.id, TargetPatch(facts=[f"a{i}"]), actor="a") for i in range(10)),
        *(b.update(target.id, TargetPatch(description=f"b{i}"), actor="b") for i in range(10)),
        *(make(b, f"x{i}") for i in range(5)),
    )
    assert await b.version() == before + 25
    entries = await a.audit(limit=100)
    assert len(entries) == 26
    assert [e.id for e in entries] == sorted((e.id for e in entries), reverse=True)
    final = await a.get(target.id)
    assert final is not None and final.facts[0].startswith("a") and final.description.startswith("b")


# -- failure: every operation says StoreUnavailable --------------------------------


async def assert_unavailable(store: TargetStore) -> None:
    ops: list[Callable[[], Awaitable[object]]] = [
        store.ping,
        store.version,
        lambda: store.get("tgt_x"),
        store.list,
        lambda: store.list("acme"),
        lambda: store.create(spec(), methods=["suppress"], actor="a"),
        lambda: store.update("tgt_x", TargetPatch(name="y"), actor="a"),
        lambda: store.delete("tgt_x", actor="a"),
        store.audit,
    ]
    for op in ops:
        with pytest.raises(StoreUnavailable):
            await op()


async def test_sqlite_unreachable_path(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    store = open_store(f"sqlite:///{tmp_path / 'a_file' / 'targets.db'}")
    await assert_unavailable(store)


async def test_sqlite_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "targets.db"
    store = SqliteTargetStore(str(path))
    await make(store)
    path.write_bytes(b"this is not a database" * 500)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    await assert_unavailable(store)


async def test_sqlite_locked_past_timeout(tmp_path: Path) -> None:
    path = tmp_path / "targets.db"
    store = SqliteTargetStore(str(path), busy_timeout=0.1)
    await store.ping()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await make(store)
    finally:
        other.execute("ROLLBACK")
        other.close()
    await make(store)  # and it recovers once the lock is gone


async def test_sqlite_two_processes_share_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    script = textwrap.dedent(f"""
        import asyncio
        from gateway.store import TargetCreate, open_store
        async def main():
            store = open_store({url!r})
            for i in range(15):
                await store.create(TargetCreate(name=f"child{{i}}"), methods=["suppress"], actor="child")
        asyncio.run(main())
    """)
    store = open_store(url)
    await store.ping()
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        for i in range(15):
            await make(store, f"parent{i}")
    finally:
        assert await asyncio.to_thread(child.wait, 60) == 0
    assert len(await store.list()) == 30
    assert await store.version() == 30


async def test_redis_closed_port() -> None:
    store = open_store(f"redis://127.0.0.1:{free_port()}/0")
    await assert_unavailable(store)
    await store.close()


async def test_redis_unresponsive_server_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        store = RedisTargetStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", op_timeout=0.2)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.version()
        await store.close()


async def test_redis_goes_down_and_comes_back() -> None:
    with RedisServer() as server:
        store = open_store(server.url(0))
        await make(store)
        server.stop()
        await assert_unavailable(store)
        server.restart()  # empty again: the test server keeps nothing on disk
        await store.ping()
        assert await store.list() == []
        await make(store)
        assert await store.version() == 1
        await store.close()


async def test_redis_prefixes_keep_stores_apart(redis_url: str) -> None:
    a, b = open_store(f"{redis_url}?prefix=one"), open_store(f"{redis_url}?prefix=two")
    await make(a)
    assert await b.list() == [] and await b.version() == 0
    assert len(await a.list()) == 1
    await a.close(), await b.close()


# -- factory ------------------------------------------------------------------------


def test_factory_sqlite_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store("sqlite:///data/t.db", base_dir=tmp_path)
    assert isinstance(store, SqliteTargetStore) and store.path == tmp_path / "data" / "t.db"
    monkeypatch.chdir(tmp_path)
    assert open_store("sqlite:///rel.db").path == tmp_path / "rel.db"  # type: ignore[attr-defined]
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db", base_dir=Path("/elsewhere"))
    assert absolute.path == tmp_path / "abs.db"  # type: ignore[attr-defined]
    assert absolute.url == f"sqlite:///{tmp_path}/abs.db"


async def test_factory_sqlite_creates_parent_folders(tmp_path: Path) -> None:
    store = open_store("sqlite:///deep/er/t.db", base_dir=tmp_path)
    await make(store)
    assert (tmp_path / "deep" / "er" / "t.db").is_file()


def test_factory_redis_forms() -> None:
    plain = open_store("redis://localhost:6379/2")
    assert isinstance(plain, RedisTargetStore) and plain.prefix == "unlearn"
    secret = open_store("rediss://:hunter2@cache.example:6380/0?prefix=gw.eu")
    assert isinstance(secret, RedisTargetStore) and secret.prefix == "gw.eu"
    assert "hunter2" not in secret.url
    assert isinstance(open_store("redis://cache"), RedisTargetStore)


@pytest.mark.parametrize(
    "url",
    [
        "", "targets.db", "postgres://db/x", "sqlite://t.db", "sqlite:///", "sqlite:///:memory:",
        "sqlite:///t.db?mode=ro", "redis://", "redis://host/notanumber", "redis://host:99999/0",
        "redis://host/0?prefix=bad prefix", "unix:///tmp/redis.sock",
    ],
)
def test_factory_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="accepted forms"):
        open_store(url)
