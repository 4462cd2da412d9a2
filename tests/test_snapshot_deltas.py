"""Incremental snapshots: a change fetches only what moved and derives the next snapshot from the last.

Runs on a real SQLite store; no model is loaded (the indexer is the output gate's name matchers).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.metrics import GatewayMetrics
from gateway.pipeline.shards import MAX_SHARDS, TenantTargets
from gateway.pipeline.snapshot import SnapshotProvider, StoreReset
from gateway.store import TargetCreate, TargetPatch, TargetStatus, open_store
from guards.gate_method import OutputGateMethod, shard_names, targets_named_in


class CountingStore:
    """The real store, counting full listings and fetched ids."""

    def __init__(self, store):
        self._store = store
        self.listed = 0
        self.fetched: list[str] = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def list(self, tenant=None):
        self.listed += 1
        return await self._store.list(tenant)

    async def get_many(self, ids):
        self.fetched.extend(ids)
        return await self._store.get_many(ids)


@pytest.fixture
async def store(tmp_path: Path):
    opened = open_store(f"sqlite:///{tmp_path}/t.db")
    yield CountingStore(opened)
    await opened.close()


def provider(store, **kw) -> SnapshotProvider:
    return SnapshotProvider(store, indexer=OutputGateMethod().index, **kw)


# Distinct by more than one edit: the gate also catches one-letter misspellings of a name.
SURNAMES = ["Abernathy", "Bergstrom", "Castellano", "Dubois", "Eriksen", "Fitzgerald", "Gonzaga", "Hollander",
            "Ivanova", "Jablonski", "Kowalczyk", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrescu", "Quiroga",
            "Rasmussen", "Szabo", "Takahashi"]


def person(kind: str, i: int) -> str:
    return f"{kind} {SURNAMES[i % len(SURNAMES)]}" + (f" {i // len(SURNAMES)}" if i >= len(SURNAMES) else "")


async def add(store, name: str, tenant: str = "default", **kw):
    return await store.create(TargetCreate(name=name, tenant=tenant, **kw), methods=["guard"], actor="t")


async def test_a_change_fetches_only_the_changed_target(store) -> None:
    for i in range(5):
        await add(store, person("Numbered", i))
    other = await add(store, "Other Tenant Person", tenant="acme")
    snapshots = provider(store)
    first = await snapshots.current()
    assert store.listed == 1 and first.active_count == 6
    new = await add(store, "Zelda Quarterfield")
    second = await snapshots.current()
    assert store.listed == 1 and store.fetched == [new.id]  # a delta, not a reload
    assert second.for_tenant("acme") is first.for_tenant("acme")  # untouched tenant kept as is
    view = second.for_tenant("default")
    assert len(view.shards) == 2 and len(view) == 6
    assert view.shards[0] is first.for_tenant("default").shards[0]  # old shard (and its matchers) reused
    assert shard_names(view.shards[1]) is not None and view.shards[1].memoized("output-gate:names")  # indexed
    assert targets_named_in(view, "about Zelda Quarterfield") == {new.id: 1.0}
    assert view.by_id(other.id) is None and second.for_tenant("acme").by_id(other.id) is not None
    await snapshots.close()


async def test_deletes_updates_and_disables_stop_matching_at_once(store) -> None:
    keep = await add(store, "Keeper Wolanski")
    gone = await add(store, "Vanished Okonkwo")
    renamed = await add(store, "Old Name")
    snapshots = provider(store)
    await snapshots.current()
    await store.delete(gone.id, actor="t")
    await store.update(renamed.id, TargetPatch(name="New Name"), actor="t")
    view = (await snapshots.current()).for_tenant("default")
    text = "Keeper Wolanski, Vanished Okonkwo, Old Name and New Name"
    assert targets_named_in(view, text) == {keep.id: 1.0, renamed.id: 1.0}
    assert view.by_id(gone.id) is None and view.by_id(renamed.id).name == "New Name"
    assert view.dead == 2  # the base shard still holds both old copies until compaction
    await store.update(keep.id, TargetPatch(status=TargetStatus.disabled), actor="t")
    view = (await snapshots.current()).for_tenant("default")
    assert targets_named_in(view, text) == {renamed.id: 1.0}
    await snapshots.close()


async def test_a_shard_left_without_live_targets_is_dropped(store) -> None:
    await add(store, "Base Person")
    snapshots = provider(store)
    await snapshots.current()
    lone = await add(store, "Solitary Marchetti")
    assert len((await snapshots.current()).for_tenant("default").shards) == 2
    await store.delete(lone.id, actor="t")
    view = (await snapshots.current()).for_tenant("default")
    assert len(view.shards) == 1  # its names stop gating output right away, no compaction needed
    gate = OutputGateMethod().plan(_ctx(view), None)
    assert all(m.first_match("Solitary Marchetti") is None for m in gate.gate_matchers)
    await snapshots.close()


def _ctx(view: TenantTargets):
    from gateway.pipeline.methods import RequestContext

    return RequestContext("default", [{"role": "user", "content": "hi"}], view)


async def test_compaction_merges_shards_off_the_request_path(store) -> None:
    base = [await add(store, person("Based", i)) for i in range(3)]
    snapshots = provider(store)
    await snapshots.current()
    added = []
    for i in range(MAX_SHARDS + 2):
        added.append(await add(store, person("Added", i + 10)))
        await snapshots.current()
    await store.delete(base[0].id, actor="t")
    await snapshots.current()
    await asyncio.wait_for(snapshots._compaction, 10)  # noqa: SLF001 -- the background task itself
    view = snapshots.loaded.for_tenant("default")
    assert len(view.shards) == 1 and view.dead == 0 and len(view) == 2 + MAX_SHARDS + 2
    assert view.shards[0].memoized("output-gate:names") is not None  # built before it was swapped in
    named = targets_named_in(view, " ".join(t.name for t in [*base, *added]))
    assert set(named) == {t.id for t in [*base[1:], *added]}
    gate = OutputGateMethod().plan(_ctx(view), None)
    assert all(m.first_match(base[0].name) is None for m in gate.gate_matchers)  # deleted: no longer gated
    await snapshots.close()


async def test_changes_during_compaction_are_kept(store) -> None:
    base = [await add(store, person("Based", i)) for i in range(MAX_SHARDS + 2)]
    snapshots = provider(store)
    await snapshots.current()
    await store.delete(base[0].id, actor="t")
    await snapshots.current()  # schedules a compaction (dead entry in the base shard)
    late = await add(store, "Late Person")
    await store.update(base[1].id, TargetPatch(name="Renamed Person"), actor="t")
    await snapshots.current()
    if snapshots._compaction is not None:  # noqa: SLF001
        await asyncio.wait_for(snapshots._compaction, 10)  # noqa: SLF001
    view = snapshots.loaded.for_tenant("default")
    named = targets_named_in(view, f"Late Person, Renamed Person, {base[1].name}, {base[0].name}, {base[2].name}")
    assert named == {late.id: 1.0, base[1].id: 1.0, base[2].id: 1.0}
    await snapshots.close()


async def test_a_store_with_a_new_epoch_fails_closed_until_accepted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    first = open_store(url)
    await add(first, "Secret Person")
    metrics = GatewayMetrics()
    snapshots = provider(first, metrics=metrics)
    await snapshots.current()
    await first.close()
    for f in tmp_path.glob("t.db*"):
        f.unlink()  # the data is gone; a fresh file answers with version 0 or more
    store = open_store(url)
    snapshots._store = store  # noqa: SLF001 -- same URL, reopened: what a replica sees after the loss
    for _ in range(2):
        with pytest.raises(StoreReset):
            await snapshots.current()
    assert metrics.store_resets._value.get() == 1  # noqa: SLF001 -- counted once, not per request
    assert metrics.store_reset_pending._value.get() == 1  # noqa: SLF001
    assert targets_named_in(snapshots.loaded.for_tenant("default"), "Secret Person")  # old snapshot kept
    accepted = await store.accept_epoch()
    snapshot = await snapshots.current()
    assert snapshot.epoch == accepted.epoch and snapshot.active_count == 0
    assert metrics.store_reset_pending._value.get() == 0  # noqa: SLF001
    await store.close()


async def test_a_version_that_goes_back_fails_closed(store) -> None:
    await add(store, "Someone")
    snapshots = provider(store)
    snapshot = await snapshots.current()
    from gateway.store.base import StoreState

    state = await store.state()

    async def rolled_back():
        return StoreState(epoch=state.epoch, version=snapshot.version - 1)

    store.state = rolled_back  # what a restore from an older backup looks like
    with pytest.raises(StoreReset):
        await snapshots.current()
    await snapshots.close()


async def test_warm_marks_ready_after_indexing(store) -> None:
    await add(store, "Some Person")
    snapshots = provider(store)
    assert not snapshots.ready
    await snapshots.warm()
    assert snapshots.ready
    view = snapshots.loaded.for_tenant("default")
    assert view.shards[0].memoized("output-gate:names") is not None
    await snapshots.close()


async def test_under_churn_a_change_builds_only_its_own_shard(store) -> None:
    """No request after a change pays for a rebuild of the targets it did not touch."""
    built: list[int] = []
    gate = OutputGateMethod()

    def spying_index(view: TenantTargets) -> None:
        built.extend(len(s) for s in view.shards if s.memoized("output-gate:names") is None)
        gate.index(view)

    await store.create_many([(TargetCreate(name=person("Based", i)), ["guard"], None) for i in range(300)], actor="t")
    snapshots = SnapshotProvider(store, indexer=spying_index)
    await snapshots.warm()
    assert built == [300]
    built.clear()
    for i in range(MAX_SHARDS - 1):
        await add(store, person("Churned", i))
        await snapshots.current()
    assert built == [1] * (MAX_SHARDS - 1) and store.listed == 1
    await snapshots.close()


async def test_big_merges_are_spaced_out(store, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.pipeline import snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "BIG_MERGE_TARGETS", 3)
    monkeypatch.setattr(snapshot_module, "BIG_MERGE_INTERVAL", 3600.0)
    base = [await add(store, person("Based", i)) for i in range(4)]
    snapshots = provider(store)
    await snapshots.current()
    await store.delete(base[0].id, actor="t")
    await snapshots.current()
    await asyncio.wait_for(snapshots._compaction, 10)  # noqa: SLF001 -- the first big merge runs at once
    assert snapshots.loaded.for_tenant("default").dead == 0
    await store.delete(base[1].id, actor="t")
    await snapshots.current()
    await asyncio.sleep(0.2)
    view = snapshots.loaded.for_tenant("default")
    assert view.dead == 1 and not snapshots._compaction.done()  # noqa: SLF001 -- waiting for its turn
    assert targets_named_in(view, base[1].name) == {}  # detection already ignores it
    await snapshots.close()
