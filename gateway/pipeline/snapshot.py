"""An immutable view of the forget targets, refreshed when the store's version moves.

Every request asks `SnapshotProvider.current()`, which costs one `store.version()`
read. When the number changed (an admin call here or on another replica) the
targets are reloaded and a fresh snapshot replaces the old one atomically, so
the very next request enforces the change. Derived structures (matchers, tries,
embeddings) are memoised on the snapshot and die with it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.store.base import StoreUnavailable, TargetStore
from gateway.store.models import ForgetTarget

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class TenantTargets:
    """The active targets one tenant's requests are checked against."""

    tenant: str
    active: list[ForgetTarget]
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: str, build: Callable[[], T]) -> T:
        """Build a derived structure once per snapshot (e.g. a matcher), then reuse it."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def memoized(self, key: str) -> Any:
        """What `memo` built under `key`, or None (lets callers skip a thread hop once it exists)."""
        return self._memo.get(key)

    def by_id(self, target_id: str) -> ForgetTarget | None:
        index = self.memo("by-id", lambda: {t.id: t for t in self.active})
        return index.get(target_id)


@dataclass
class TargetSnapshot:
    version: int
    targets: list[ForgetTarget]
    _tenants: dict[str, TenantTargets] = field(default_factory=dict, repr=False)

    def for_tenant(self, tenant: str) -> TenantTargets:
        view = self._tenants.get(tenant)
        if view is None:
            active = [t for t in self.targets if t.tenant == tenant and t.is_active]
            view = self._tenants[tenant] = TenantTargets(tenant, active)
        return view


class SnapshotProvider:
    """Keeps the current snapshot in step with the store; fails closed unless told otherwise."""

    def __init__(self, store: TargetStore, *, fail_open: bool = False):
        self._store = store
        self._fail_open = fail_open
        self._snapshot: TargetSnapshot | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> TargetSnapshot | None:
        return self._snapshot

    async def current(self) -> TargetSnapshot:
        try:
            version = await self._store.version()
            snapshot = self._snapshot
            if snapshot is not None and snapshot.version == version:
                return snapshot
            async with self._lock:  # one reload at a time; waiters reuse its result
                snapshot = self._snapshot
                if snapshot is None or snapshot.version != version:
                    # Tag with the version read *before* listing: a change racing the list makes
                    # the next request reload again, never skip a change.
                    snapshot = TargetSnapshot(version=version, targets=await self._store.list())
                    self._snapshot = snapshot
                    gc.freeze()  # the targets (and their stored embeddings) live until the next change
                return snapshot
        except StoreUnavailable:
            if not self._fail_open:
                raise
            log.error("FAIL-OPEN: target store unreadable; serving with the last known targets (%s)",
                      "none" if self._snapshot is None else f"version {self._snapshot.version}")
            return self._snapshot or TargetSnapshot(version=-1, targets=[])
