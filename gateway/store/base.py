"""The one protocol every forget-target store implements.

The gateway never caches targets blindly: before each request it reads
`state()` (one cheap read: the store's epoch and version) and, when the version
moved, fetches only the targets the change log names (`changes_since` +
`get_many`). That is what makes an admin change enforced on the very next
request, on every replica that shares the store, without pub/sub timing races.

The epoch is a random id written at the store's first use. A store that lost its
data (Redis restarted without persistence, a SQLite file replaced) comes back
with a new epoch, so a replica can tell "no targets" from "targets forgotten".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch


class StoreUnavailable(RuntimeError):
    """The store could not be read or written; callers fail closed on it."""


CHANGE_LOG_MAX = 500_000
"""Change-log entries a store keeps (one per target id, its latest change); older ones are
trimmed and a replica that is further behind reloads everything."""


@dataclass(frozen=True)
class StoreState:
    """What a replica reads before every request, in one round trip."""

    epoch: str
    version: int
    accepted_epoch: str | None = None
    """The epoch an operator accepted after a reset (`accept_epoch`); None when never."""


NewTarget = tuple[TargetCreate, list[str], dict[str, Any] | None]
"""One item of `create_many`: the spec, its resolved methods and its derived data."""


@runtime_checkable
class TargetStore(Protocol):
    """Persistence of forget targets plus an append-only audit log."""

    url: str

    async def create(
        self, spec: TargetCreate, *, methods: list[str], actor: str, derived: dict[str, Any] | None = None
    ) -> ForgetTarget:
        """Persist a new target (methods already resolved, `derived` computed by the methods) and audit it."""
        ...

    async def get(self, target_id: str) -> ForgetTarget | None: ...

    async def list(self, tenant: str | None = None) -> list[ForgetTarget]:
        """All targets (of one tenant when given), oldest first."""
        ...

    async def update(
        self, target_id: str, patch: TargetPatch, *, actor: str, derived: dict[str, Any] | None = None
    ) -> ForgetTarget | None:
        """Apply the fields set in `patch` and merge `derived`; None when the id is unknown."""
        ...

    async def delete(self, target_id: str, *, actor: str) -> bool: ...

    async def create_many(self, items: list[NewTarget], *, actor: str) -> list[ForgetTarget]:
        """Persist all items in one transaction (all or none) with one version bump, audited per target."""
        ...

    async def get_many(self, target_ids: list[str]) -> list[ForgetTarget]:
        """The targets that exist among `target_ids` (unknown ids are skipped), in no set order."""
        ...

    async def version(self) -> int:
        """A number that grows on every change, as seen by every replica."""
        ...

    async def state(self) -> StoreState:
        """Epoch and version in one read; the first read of a fresh store writes its epoch."""
        ...

    async def changes_since(self, version: int) -> list[str] | None:
        """Ids of the targets created, changed or deleted after `version`; None when the change
        log no longer reaches back that far (the caller reloads everything)."""
        ...

    async def accept_epoch(self) -> StoreState:
        """Record that an operator accepts the store's current epoch (after a reset or restore)."""
        ...

    async def audit(self, *, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Most recent audit entries first."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""
        ...

    async def close(self) -> None: ...
