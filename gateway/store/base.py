"""The one protocol every forget-target store implements.

The gateway never caches targets blindly: before each request it reads
`version()` (one cheap read) and reloads its snapshot when the number moved.
That is what makes an admin change enforced on the very next request, on every
replica that shares the store, without pub/sub timing races.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch


class StoreUnavailable(RuntimeError):
    """The store could not be read or written; callers fail closed on it."""


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

    async def version(self) -> int:
        """A number that grows on every change, as seen by every replica."""
        ...

    async def audit(self, *, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Most recent audit entries first."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""
        ...

    async def close(self) -> None: ...
