"""A tenant's targets as immutable shards, so one change costs work in proportion to the change.

Rebuilding every matcher, trie and index of a tenant on each admin change stalls a
replica for seconds at 10k targets. Instead a tenant's targets are a tuple of
`Shard`s, each an immutable batch of targets with its own memo of derived
structures, plus `owner`: for every live target id, the serial of the shard that
holds its current version. A change adds one small shard and re-points (or drops)
the ids it touched; a hit found in a shard counts only when that shard still owns
the id (`is_live`). Tenants a change does not touch keep their objects.

Shards left with dead entries, or too many shards, are merged by a background
compaction (`compaction_plan`, `merge`, `rebase`), run off the event loop by the
snapshot provider.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from gateway.store.models import ForgetTarget

T = TypeVar("T")

MAX_SHARDS = 8
"""More shards than this and the tenant is compacted (every query walks every shard)."""

_serials = itertools.count(1)


class Shard:
    """An immutable batch of one tenant's active targets and the structures derived from them."""

    __slots__ = ("serial", "targets", "by_id", "_memo")

    def __init__(self, targets: Iterable[ForgetTarget]):
        self.serial = next(_serials)
        self.targets: tuple[ForgetTarget, ...] = tuple(targets)
        self.by_id: dict[str, ForgetTarget] = {t.id: t for t in self.targets}
        self._memo: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.targets)

    def memo(self, key: str, build: Callable[[tuple[ForgetTarget, ...]], T]) -> T:
        """Build a structure over this shard's targets once (a matcher, a trie), then reuse it."""
        if key not in self._memo:
            self._memo[key] = build(self.targets)
        return self._memo[key]

    def memoized(self, key: str) -> Any:
        """What `memo` built under `key`, or None (lets callers skip a thread hop once it exists)."""
        return self._memo.get(key)


class TenantTargets:
    """The active targets one tenant's requests are checked against: shards + who owns each live id."""

    def __init__(self, tenant: str, active: Iterable[ForgetTarget] = (), *,
                 shards: tuple[Shard, ...] | None = None, owner: dict[str, int] | None = None,
                 live: dict[int, int] | None = None):
        """`TenantTargets(tenant, active)` puts all `active` targets in one shard; the keyword form is
        how `apply` and `rebase` derive a new generation from an old one (`live`: live ids per shard)."""
        if shards is None:
            batch = [t for t in active if t.is_active]
            shards = (Shard(batch),) if batch else ()
        self.tenant = tenant
        self.shards = shards
        self.owner = owner if owner is not None else {t.id: s.serial for s in shards for t in s.targets}
        self._live = live if live is not None else dict(Counter(self.owner.values()))
        self._by_serial = {s.serial: s for s in shards}
        self._memo: dict[str, Any] = {}

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.owner)

    def is_live(self, shard: Shard, target_id: str) -> bool:
        """Is `shard`'s copy of `target_id` the current one (not deleted, disabled or replaced since)?"""
        return self.owner.get(target_id) == shard.serial

    def live_hits(self, shard: Shard, hits: Mapping[str, float]) -> Iterator[tuple[str, float]]:
        """The (target id, score) pairs of `hits` found in `shard` that are still live."""
        return ((tid, score) for tid, score in hits.items() if self.owner.get(tid) == shard.serial)

    def by_id(self, target_id: str) -> ForgetTarget | None:
        shard = self._by_serial.get(self.owner.get(target_id, 0))
        return None if shard is None else shard.by_id.get(target_id)

    @property
    def active(self) -> list[ForgetTarget]:
        """Every live target, oldest shard first. O(targets): not for the per-request path."""
        return self.memo("active", lambda: self.select("all", lambda t: True))

    def select(self, key: str, keep: Callable[[ForgetTarget], bool]) -> list[ForgetTarget]:
        """Live targets that `keep` accepts; each shard filters once (memo `key`), so a change only
        filters its own small shard and the cost here is the size of the result."""
        return [t for shard in self.shards for t in shard.memo("select:" + key, lambda ts: [t for t in ts if keep(t)])
                if self.owner.get(t.id) == shard.serial]

    def any_selected(self, key: str, keep: Callable[[ForgetTarget], bool]) -> bool:
        """Whether `select(key, keep)` would be non-empty, stopping at the first live one."""
        return any(self.owner.get(t.id) == shard.serial
                   for shard in self.shards
                   for t in shard.memo("select:" + key, lambda ts: [t for t in ts if keep(t)]))

    def memo(self, key: str, build: Callable[[], T]) -> T:
        """Build something over this generation as a whole once (small, per-request-kind things)."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def memoized(self, key: str) -> Any:
        return self._memo.get(key)

    @property
    def dead(self) -> int:
        """Entries in shards whose target is no longer live there (over-matched until compaction)."""
        return sum(len(s) - self._live.get(s.serial, 0) for s in self.shards)

    # -- deriving the next generation ---------------------------------------------------------

    def apply(self, changes: Mapping[str, ForgetTarget | None]) -> TenantTargets:
        """The next generation after `changes` (id -> its new record, None when deleted).

        Costs a copy of `owner` plus one shard of the changed targets; shards left with no
        live target are dropped at once (their names stop matching right away).
        """
        owner = dict(self.owner)
        live = dict(self._live)
        for target_id in changes:
            serial = owner.pop(target_id, None)
            if serial is not None:
                live[serial] -= 1
        fresh = [t for t in changes.values() if t is not None and t.is_active]
        shards = self.shards
        if fresh:
            shard = Shard(fresh)
            shards = (*shards, shard)
            owner.update((t.id, shard.serial) for t in fresh)
            live[shard.serial] = len(shard)
        shards = tuple(s for s in shards if live.get(s.serial, 0) > 0)
        return TenantTargets(self.tenant, shards=shards, owner=owner,
                             live={s.serial: live[s.serial] for s in shards})

    def compaction_plan(self) -> tuple[Shard, ...]:
        """The shards worth merging now: those holding dead entries and, past `MAX_SHARDS`, all
        but the largest; the largest too once the rest reach half its size (tiered, so a stream
        of new targets does not rebuild the big shard every few changes)."""
        if not self.shards:
            return ()
        dirty = {s.serial for s in self.shards if self._live.get(s.serial, 0) < len(s)}
        if len(self.shards) <= MAX_SHARDS and not dirty:
            return ()
        base = max(self.shards, key=len)
        picked = set(dirty)
        if len(self.shards) > MAX_SHARDS:
            picked |= {s.serial for s in self.shards if s is not base}
        if base.serial in picked or 2 * sum(len(s) for s in self.shards if s.serial in picked) >= len(base):
            return self.shards  # the big one is rebuilt anyway: fold the small ones in too
        return tuple(s for s in self.shards if s.serial in picked)

    def merge(self, shards: tuple[Shard, ...]) -> Shard:
        """One fresh shard of the live targets of `shards` (structures not built yet)."""
        return Shard(t for s in shards for t in s.targets if self.owner.get(t.id) == s.serial)

    def rebase(self, replaced: tuple[Shard, ...], merged: Shard) -> TenantTargets:
        """Swap `merged` (built from `replaced` in an older generation) in for `replaced`.

        Changes applied since stay: their shards are kept, and an id that `replaced` held
        but was changed since keeps pointing at its newer shard (its copy in `merged` is dead).
        Costs a copy of `owner` plus the size of `merged`, not a pass over every target.
        """
        gone = {s.serial for s in replaced}
        owner = dict(self.owner)
        moved = 0
        for target in merged.targets:
            if owner.get(target.id) in gone:
                owner[target.id] = merged.serial
                moved += 1
        live = {serial: n for serial, n in self._live.items() if serial not in gone}
        live[merged.serial] = moved
        shards = tuple(s for s in (merged, *self.shards) if s.serial not in gone and live.get(s.serial, 0) > 0)
        return TenantTargets(self.tenant, shards=shards, owner=owner, live={s.serial: live[s.serial] for s in shards})
