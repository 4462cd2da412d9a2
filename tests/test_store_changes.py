"""Store identity (epoch), change log and bulk create, on real SQLite files and a real Redis."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis_server import RedisServer

from gateway.store import StoreUnavailable, TargetCreate, TargetPatch, TargetStore, open_store
from gateway.store import sqlite as sqlite_module
from gateway.store.sqlite import SqliteTargetStore


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TargetStore]:
    opened = open_store(request.getfixturevalue(f"{request.param}_url"))
    yield opened
    await opened.close()


def spec(name: str, **kw: object) -> TargetCreate:
    return TargetCreate(name=name, **kw)  # type: ignore[arg-type]


async def test_state_is_stable_and_versioned(store: TargetStore) -> None:
    first = await store.state()
    assert first.epoch and first.version == 0 and first.accepted_epoch is None
    target = await store.create(spec("A"), methods=["guard"], actor="a")
    second = await store.state()
    assert (second.epoch, second.version) == (first.epoch, 1)
    assert await store.version() == 1
    assert await store.changes_since(0) == [target.id]
    assert await store.changes_since(1) == []


async def test_change_log_names_creates_updates_and_deletes(store: TargetStore) -> None:
    a = await store.create(spec("A"), methods=["guard"], actor="x")
    b = await store.create(spec("B"), methods=["guard"], actor="x")
    v = await store.version()
    await store.update(a.id, TargetPatch(description="new"), actor="x")
    await store.delete(b.id, actor="x")
    c = await store.create(spec("C"), methods=["guard"], actor="x")
    assert sorted(await store.changes_since(v) or []) == sorted([a.id, b.id, c.id])
    assert await store.changes_since(v + 2) == [c.id]
    fetched = await store.get_many([a.id, b.id, c.id, "tgt_unknown"])
    assert sorted(t.id for t in fetched) == sorted([a.id, c.id])  # b is deleted: skipped
    assert await store.get_many([]) == []


async def test_create_many_is_one_version_and_keeps_order(store: TargetStore) -> None:
    before = await make_one(store)
    made = await store.create_many([(spec(f"T{i}", tenant="acme"), ["guard"], {"guard": {"n": i}})
                                    for i in range(25)], actor="bulk")
    assert len(made) == 25 and len({t.id for t in made}) == 25
    assert await store.version() == 2
    assert [t.id for t in await store.list()] == [before.id, *(t.id for t in made)]
    assert made[3].derived == {"guard": {"n": 3}} and made[3].tenant == "acme"
    assert sorted(await store.changes_since(1) or []) == sorted(t.id for t in made)
    audit = await store.audit(limit=100)
    assert len(audit) == 26 and {e.action for e in audit} == {"create"}
    assert await store.create_many([], actor="bulk") == []
    assert await store.version() == 2


async def make_one(store: TargetStore):
    return await store.create(spec("First"), methods=["guard"], actor="a")


async def test_accept_epoch_records_the_current_epoch(store: TargetStore) -> None:
    state = await store.state()
    accepted = await store.accept_epoch()
    assert accepted.epoch == state.epoch == accepted.accepted_epoch
    assert (await store.state()).accepted_epoch == state.epoch


async def test_sqlite_create_many_is_all_or_nothing(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(sqlite_url)
    await make_one(store)
    real_insert = SqliteTargetStore._insert
    calls = {"n": 0}

    def failing_insert(conn: sqlite3.Connection, target) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise sqlite3.OperationalError("disk I/O error")
        real_insert(conn, target)

    monkeypatch.setattr(SqliteTargetStore, "_insert", staticmethod(failing_insert))
    with pytest.raises(StoreUnavailable):
        await store.create_many([(spec(f"T{i}"), ["guard"], None) for i in range(5)], actor="bulk")
    assert [t.name for t in await store.list()] == ["First"]
    assert await store.version() == 1 and len(await store.audit()) == 1
    await store.close()


async def test_sqlite_replaced_file_is_a_new_epoch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    store = open_store(url)
    await make_one(store)
    old = await store.state()
    await store.close()
    for f in tmp_path.glob("t.db*"):
        f.unlink()
    fresh = open_store(url)
    new = await fresh.state()
    assert new.epoch != old.epoch and new.version == 0
    await fresh.close()


async def test_sqlite_file_from_before_the_change_log_reloads_fully(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema of the first release, two changes made
        conn.executescript("CREATE TABLE meta (version INTEGER NOT NULL); INSERT INTO meta VALUES (2);")
    store = open_store(f"sqlite:///{path}")
    state = await store.state()
    assert state.epoch and state.version == 2
    assert await store.changes_since(1) is None  # those changes were never logged
    assert await store.changes_since(2) == []
    await store.close()


async def test_sqlite_trims_the_log_and_raises_its_floor(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "CHANGE_LOG_MAX", 3)
    monkeypatch.setattr(sqlite_module, "_TRIM_EVERY", 1)
    store = open_store(sqlite_url)
    made = [await store.create(spec(f"T{i}"), methods=["guard"], actor="a") for i in range(6)]
    assert await store.changes_since(1) is None
    assert sorted(await store.changes_since(3) or []) == sorted(t.id for t in made[3:])
    await store.close()


async def test_redis_trims_the_log_and_raises_its_floor(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.store import redis as redis_module

    monkeypatch.setattr(redis_module, "CHANGE_LOG_MAX", 3)
    store = open_store(redis_url)
    made = [await store.create(spec(f"T{i}"), methods=["guard"], actor="a") for i in range(6)]
    assert await store.changes_since(1) is None
    assert sorted(await store.changes_since(3) or []) == sorted(t.id for t in made[3:])
    await store.close()


async def test_redis_restarted_empty_is_a_new_epoch() -> None:
    with RedisServer() as server:
        store = open_store(server.url(0))
        await make_one(store)
        await make_one(store)
        old = await store.state()
        server.stop()
        server.restart()  # the test server keeps nothing on disk: all data lost
        await make_one(store)
        await make_one(store)
        new = await store.state()
        # Same version number, different store: the epoch is what tells them apart.
        assert new.version == old.version == 2 and new.epoch != old.epoch
        assert new.accepted_epoch is None
        await store.close()


async def test_redis_lists_in_pages_by_score(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.store import redis as redis_module

    monkeypatch.setattr(redis_module, "_MGET_CHUNK", 3)  # pages of 30 ids, MGETs of 3
    store = open_store(redis_url)
    made = [await store.create(spec(f"N{i}"), methods=["guard"], actor="x") for i in range(35)]
    made += await store.create_many([(spec(f"B{i}"), ["guard"], None) for i in range(40)], actor="x")
    await store.delete(made[31].id, actor="x")
    assert [t.id for t in await store.list()] == [t.id for t in made if t.id != made[31].id]
    await store.close()
