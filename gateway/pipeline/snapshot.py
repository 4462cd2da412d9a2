"""An immutable view of the forget targets, kept in step with the store by deltas.

Every request asks `SnapshotProvider.current()`, which costs one `store.state()`
read (epoch + version). When the version moved (an admin call here or on another
replica), only the targets the store's change log names are fetched, and the next
snapshot is derived from the current one (`TenantTargets.apply`: one small shard
per change, untouched tenants keep their objects). The request that saw the new
version waits for that (milliseconds), so the very next request after an admin
201 enforces the change on every replica.

Structures derived from targets live on shards (`gateway.pipeline.shards`) and are
built off the event loop by the methods' `index` hook: for a change, only its
shard; at start-up, everything before `/readyz` turns ready. A background
compaction merges shards when there are too many or some hold dead entries.

A store whose epoch changed (it lost its data: Redis restarted without
persistence) or whose version went backwards (restored from an older backup) is
never trusted silently: requests fail closed (503, metric, loud log) until an
operator accepts the store as it is (`POST /admin/v1/store:accept`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.metrics import GatewayMetrics
from gateway.pipeline.shards import Shard, TenantTargets
from gateway.store.base import StoreState, StoreUnavailable, TargetStore
from gateway.store.models import ForgetTarget

__all__ = ["SnapshotProvider", "StoreReset", "TargetSnapshot", "TenantTargets"]

log = logging.getLogger(__name__)

Indexer = Callable[[TenantTargets], None]
"""Builds the per-shard structures of a tenant's targets; runs in a worker thread."""


BIG_MERGE_TARGETS = 20_000
BIG_MERGE_INTERVAL = 30.0
"""A compaction merging this many targets or more (a rebuild of a big tenant's main shard, seconds of
CPU) runs at most once per interval: under a stream of deletes or renames the old names of targets
in that shard keep being gated for up to this long (plus the rebuild), instead of the replica
rebuilding without pause. Smaller merges run as soon as they are due."""


class StoreReset(StoreUnavailable):
    """The store is not the one the snapshot came from (new epoch, or its version went back)."""


@dataclass(frozen=True)
class TargetSnapshot:
    version: int
    epoch: str
    tenants: dict[str, TenantTargets] = field(default_factory=dict)

    @classmethod
    def from_targets(cls, version: int, epoch: str, targets: Iterable[ForgetTarget]) -> TargetSnapshot:
        by_tenant: dict[str, list[ForgetTarget]] = {}
        for target in targets:
            if target.is_active:
                by_tenant.setdefault(target.tenant, []).append(target)
        return cls(version, epoch, {tenant: TenantTargets(tenant, ts) for tenant, ts in by_tenant.items()})

    def for_tenant(self, tenant: str) -> TenantTargets:
        view = self.tenants.get(tenant)
        return view if view is not None else TenantTargets(tenant)

    @property
    def targets(self) -> list[ForgetTarget]:
        """Every active target of every tenant (O(targets): background work only)."""
        return [t for view in self.tenants.values() for t in view.active]

    @property
    def active_count(self) -> int:
        return sum(len(view) for view in self.tenants.values())

    def apply(self, version: int, changed: Iterable[str], records: Iterable[ForgetTarget]) -> tuple[
            TargetSnapshot, list[TenantTargets]]:
        """The snapshot after a delta, and the tenants it touched (their new shards need indexing)."""
        fresh = {t.id: t for t in records}
        per_tenant: dict[str, dict[str, ForgetTarget | None]] = {}
        for target_id in changed:
            record = fresh.get(target_id)
            if record is not None:
                tenant = record.tenant
            else:  # deleted: the tenant that had it live (tenants are few; ids never move)
                tenant = next((name for name, view in self.tenants.items() if target_id in view.owner), None)
                if tenant is None:
                    continue  # never live here (created disabled, or created and deleted in between)
            per_tenant.setdefault(tenant, {})[target_id] = record
        tenants = dict(self.tenants)
        touched = []
        for tenant, changes in per_tenant.items():
            view = self.for_tenant(tenant).apply(changes)
            touched.append(view)
            if len(view):
                tenants[tenant] = view
            else:
                tenants.pop(tenant, None)
        return TargetSnapshot(version, self.epoch, tenants), touched

    def with_tenant(self, view: TenantTargets) -> TargetSnapshot:
        return TargetSnapshot(self.version, self.epoch, {**self.tenants, view.tenant: view})


class SnapshotProvider:
    """Keeps the current snapshot in step with the store; fails closed unless told otherwise."""

    def __init__(self, store: TargetStore, *, fail_open: bool = False, indexer: Indexer | None = None,
                 metrics: GatewayMetrics | None = None):
        self._store = store
        self._fail_open = fail_open
        self._indexer = indexer
        self._metrics = metrics
        self._snapshot: TargetSnapshot | None = None
        self._lock = asyncio.Lock()
        self._compaction: asyncio.Task | None = None
        self._last_big_merge = -BIG_MERGE_INTERVAL
        self._reset_seen: StoreState | None = None
        self.ready = False
        """True once the first snapshot is loaded and indexed (`/readyz`)."""
        self.store_ok = False
        """Whether the last store read succeeded; with `last_store_success` (epoch s), store staleness."""
        self.last_store_success = 0.0
        self.served_fail_open = False
        """Set by `current()` when it returned the last known targets because the store was unreadable:
        read it right after the call (no await in between) to count a fail-open answer."""

    @property
    def loaded(self) -> TargetSnapshot | None:
        return self._snapshot

    async def current(self) -> TargetSnapshot:
        try:
            state = await self._store.state()
            self.store_ok, self.last_store_success, self.served_fail_open = True, time.time(), False
            snapshot = self._snapshot
            if snapshot is not None and snapshot.version == state.version and snapshot.epoch == state.epoch:
                return snapshot
            async with self._lock:  # one refresh at a time; waiters reuse its result
                snapshot = self._snapshot
                if snapshot is None or snapshot.version != state.version or snapshot.epoch != state.epoch:
                    started = time.perf_counter()
                    snapshot = await self._refresh(snapshot, state)
                    if self._metrics is not None:
                        self._metrics.snapshot_rebuild.observe(time.perf_counter() - started)
                        self._metrics.target_set_version.set(snapshot.version)
                return snapshot
        except StoreUnavailable as exc:
            if not isinstance(exc, StoreReset):  # a reset store answered: it is readable, just not trusted
                self.store_ok = False
            if not self._fail_open:
                raise
            self.served_fail_open = True
            log.error("FAIL-OPEN: target store unreadable; serving with the last known targets (%s)",
                      "none" if self._snapshot is None else f"version {self._snapshot.version}")
            return self._snapshot or TargetSnapshot(version=-1, epoch="")

    async def warm(self, retry_seconds: float = 1.0) -> None:
        """Load and index the first snapshot (start-up, in the background); then `ready` is True.
        Retries while the store is down: requests meanwhile fail closed on their own."""
        failures = 0
        while True:
            try:
                snapshot = await self.current()
                break
            except StoreUnavailable as exc:
                if failures == 0:
                    log.error("target store unavailable at start (requests fail closed until it returns): %s", exc)
                failures += 1
                await asyncio.sleep(retry_seconds)
        started = time.perf_counter()
        await asyncio.to_thread(self._index_all, list(snapshot.tenants.values()))
        gc.freeze()  # the indexes live until a compaction: keep them out of every full GC pass
        self.ready = True
        log.info("targets indexed: %d active at version %d in %.1f s", snapshot.active_count, snapshot.version,
                 time.perf_counter() - started)

    async def close(self) -> None:
        if self._compaction is not None:
            self._compaction.cancel()
            await asyncio.gather(self._compaction, return_exceptions=True)

    # -- refreshing ------------------------------------------------------------------------------

    async def _refresh(self, snapshot: TargetSnapshot | None, state: StoreState) -> TargetSnapshot:
        # Tag with the state read *before* fetching: a change racing the fetch makes the next
        # request refresh again (its records are fetched twice), never skip a change.
        if snapshot is not None and (snapshot.epoch != state.epoch or state.version < snapshot.version):
            self._check_reset(snapshot, state)
            snapshot = None
        changed = None if snapshot is None else await self._store.changes_since(snapshot.version)
        if snapshot is None or changed is None:
            fresh = TargetSnapshot.from_targets(state.version, state.epoch, await self._store.list())
            gc.freeze()  # the targets (and their stored embeddings) live until the next change
        else:
            fresh, touched = snapshot.apply(state.version, changed, await self._store.get_many(changed))
            if self._indexer is not None and touched:
                await asyncio.to_thread(self._index_all, touched)  # only the new small shards are built
            gc.freeze()  # cheap (no traversal); what the old generation freed is still freed by refcount
        self._snapshot = fresh
        self._schedule_compaction()
        return fresh

    def _check_reset(self, snapshot: TargetSnapshot, state: StoreState) -> None:
        """Raise StoreReset unless an operator accepted the store's current epoch."""
        if state.accepted_epoch == state.epoch:
            log.warning("target store epoch %s (version %d) accepted by an operator; reloading all targets",
                        state.epoch, state.version)
            self._set_reset_pending(False)
            return
        if self._reset_seen != state:
            self._reset_seen = state
            if self._metrics is not None:
                self._metrics.store_resets.inc()
            log.critical(
                "TARGET STORE RESET: the store now has epoch %s version %d, but this replica's targets came from "
                "epoch %s version %d. The store lost or rolled back data; requests fail closed (503) until an "
                "operator restores the targets and accepts the store (POST /admin/v1/store:accept).",
                state.epoch, state.version, snapshot.epoch, snapshot.version)
        self._set_reset_pending(True)
        raise StoreReset("the target store was reset or rolled back; waiting for an operator to accept it")

    def _set_reset_pending(self, pending: bool) -> None:
        if self._metrics is not None:
            self._metrics.store_reset_pending.set(1 if pending else 0)

    def _index_all(self, views: list[TenantTargets]) -> None:
        if self._indexer is not None:
            for view in views:
                self._indexer(view)

    # -- compaction ----------------------------------------------------------------------------

    def _schedule_compaction(self) -> None:
        snapshot = self._snapshot
        if snapshot is None or (self._compaction is not None and not self._compaction.done()):
            return
        if any(view.compaction_plan() for view in snapshot.tenants.values()):
            self._compaction = asyncio.get_running_loop().create_task(self._compact())

    async def _compact(self) -> None:
        """Merge the shards of tenants that need it, off the event loop, until none does."""
        try:
            while (snapshot := self._snapshot) is not None:
                plans = [(view, view.compaction_plan()) for view in snapshot.tenants.values()]
                plans = [(view, shards) for view, shards in plans if shards]
                if not plans:
                    return
                for view, shards in plans:
                    big = sum(len(s) for s in shards) >= BIG_MERGE_TARGETS
                    wait = self._last_big_merge + BIG_MERGE_INTERVAL - time.monotonic() if big else 0.0
                    if wait > 0:  # dead entries in a big shard over-block a while longer; CPU stays for requests
                        await asyncio.sleep(wait)
                        break  # plan again from the latest snapshot
                    merged = await asyncio.to_thread(self._build_merged, view, shards)
                    if big:
                        self._last_big_merge = time.monotonic()
                    async with self._lock:  # `rebase` copies `owner`: O(targets) but no thread hop
                        current = self._snapshot
                        if current is None or current.epoch != snapshot.epoch:
                            return
                        now = current.tenants.get(view.tenant)
                        if now is not None:
                            self._snapshot = current.with_tenant(now.rebase(shards, merged))
                gc.freeze()  # the merged shards live long: keep them out of the young generations' scans
        except Exception:
            log.exception("target compaction failed; shards stay as they are until the next change")

    def _build_merged(self, view: TenantTargets, shards: tuple[Shard, ...]) -> Shard:
        merged = view.merge(shards)
        self._index_all([TenantTargets(view.tenant, shards=(merged,))])
        return merged
