"""Admin operations on forget targets: validation against the method registry, then the store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.errors import APIError
from gateway.pipeline.methods import MethodRegistry
from gateway.store.base import StoreState, TargetStore
from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch, utcnow

log = logging.getLogger(__name__)

_DERIVED_FROM = ("name", "aliases", "description", "facts", "documents", "methods")


class TargetAdmin:
    def __init__(self, store: TargetStore, methods: MethodRegistry):
        self.store = store
        self.methods = methods

    def resolve_methods(self, requested: list[str] | None) -> list[str]:
        available = self.methods.available
        if requested is None:
            return self.methods.selectable
        unknown = [m for m in requested if m not in available]
        if unknown:
            raise APIError(400, f"Unknown or unavailable method(s) {unknown}; available: {available}.",
                           code="invalid_request", param="methods")
        return requested

    async def _derive(self, target: ForgetTarget) -> dict[str, Any]:
        return (await self._derive_many([target]))[0]

    async def _derive_many(self, targets: list[ForgetTarget]) -> list[dict[str, Any]]:
        """Each enabled method's registration-time data (embeddings...), computed off the event loop,
        one call per method for the whole batch (one embedding pass).

        A failure refuses the admin call: a target the methods cannot prepare is not stored.
        """
        derived: list[dict[str, Any]] = [{} for _ in targets]
        for method in self.methods:
            try:
                results = await asyncio.to_thread(method.derive_many, targets)
            except APIError:  # the method refuses a target itself (e.g. ULD on a backend without hooks)
                raise
            except Exception as exc:
                log.exception("method %s could not prepare %d target(s)", method.name, len(targets))
                raise APIError(503, "The targets could not be prepared for enforcement; retry shortly.",
                               code="service_unavailable") from exc
            for out, data in zip(derived, results):
                if data is not None:
                    out[method.name] = dict(data)
        return derived

    @staticmethod
    def _draft(spec: TargetCreate, methods: list[str], actor: str) -> ForgetTarget:
        now = utcnow()
        return ForgetTarget(id="draft", methods=methods, created_at=now, updated_at=now, created_by=actor,
                            **spec.model_dump(exclude={"methods"}))

    async def create(self, spec: TargetCreate, actor: str) -> ForgetTarget:
        methods = self.resolve_methods(spec.methods)
        derived = await self._derive(self._draft(spec, methods, actor))
        return await self.store.create(spec, methods=methods, actor=actor, derived=derived)

    async def create_many(self, specs: list[TargetCreate], actor: str) -> list[ForgetTarget]:
        """All or nothing: the batch is prepared, then stored in one transaction (one version bump)."""
        methods = [self.resolve_methods(spec.methods) for spec in specs]
        derived = await self._derive_many([self._draft(s, m, actor) for s, m in zip(specs, methods)])
        return await self.store.create_many(list(zip(specs, methods, derived)), actor=actor)

    async def accept_store(self) -> StoreState:
        """An operator accepts the store as it is now, after a reset or a restore (see README)."""
        state = await self.store.accept_epoch()
        log.warning("operator accepted target store epoch %s at version %d", state.epoch, state.version)
        return state

    async def list(self, tenant: str | None) -> list[ForgetTarget]:
        return await self.store.list(tenant)

    async def get(self, target_id: str) -> ForgetTarget:
        target = await self.store.get(target_id)
        if target is None:
            raise APIError(404, f"No target with id '{target_id}'.", code="target_not_found", param="id")
        return target

    async def update(self, target_id: str, patch: TargetPatch, actor: str) -> ForgetTarget:
        if patch.methods is not None:
            patch = patch.model_copy(update={"methods": self.resolve_methods(patch.methods)})
        derived = None
        changed = patch.model_dump(exclude_unset=True, exclude_none=True)
        if any(field in changed for field in _DERIVED_FROM):
            current = await self.get(target_id)
            derived = await self._derive(current.model_copy(update=changed))
        target = await self.store.update(target_id, patch, actor=actor, derived=derived)
        if target is None:
            raise APIError(404, f"No target with id '{target_id}'.", code="target_not_found", param="id")
        return target

    async def delete(self, target_id: str, actor: str) -> None:
        if not await self.store.delete(target_id, actor=actor):
            raise APIError(404, f"No target with id '{target_id}'.", code="target_not_found", param="id")

    async def audit(self, tenant: str | None, limit: int) -> list[AuditEntry]:
        return await self.store.audit(tenant=tenant, limit=limit)
