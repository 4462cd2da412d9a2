"""Admin operations on forget targets: validation against the method registry, then the store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.errors import APIError
from gateway.pipeline.methods import MethodRegistry
from gateway.store.base import TargetStore
from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch, utcnow

log = logging.getLogger(__name__)

_DERIVED_FROM = ("name", "aliases", "description", "facts", "documents", "methods")


class TargetAdmin:
    def __init__(self, store: TargetStore, methods: MethodRegistry):
        self.store = store
        self.methods = methods

    def _resolve_methods(self, requested: list[str] | None) -> list[str]:
        available = self.methods.available
        if requested is None:
            return self.methods.selectable
        unknown = [m for m in requested if m not in available]
        if unknown:
            raise APIError(400, f"Unknown or unavailable method(s) {unknown}; available: {available}.",
                           code="invalid_request", param="methods")
        return requested

    async def _derive(self, target: ForgetTarget) -> dict[str, Any]:
        """Each enabled method's registration-time data (embeddings...), computed off the event loop.

        A failure refuses the admin call: a target the methods cannot prepare is not stored.
        """
        derived: dict[str, Any] = {}
        for method in self.methods:  # each method decides whether the target concerns it
            try:
                data = await asyncio.to_thread(method.derive, target)
            except APIError:  # the method refuses the target itself (e.g. ULD on a backend without hooks)
                raise
            except Exception as exc:
                log.exception("method %s could not prepare target %s", method.name, target.id)
                raise APIError(503, "The target could not be prepared for enforcement; retry shortly.",
                               code="service_unavailable") from exc
            if data is not None:
                derived[method.name] = dict(data)
        return derived

    async def create(self, spec: TargetCreate, actor: str) -> ForgetTarget:
        methods = self._resolve_methods(spec.methods)
        now = utcnow()
        draft = ForgetTarget(id="draft", methods=methods, created_at=now, updated_at=now, created_by=actor,
                             **spec.model_dump(exclude={"methods"}))
        return await self.store.create(spec, methods=methods, actor=actor, derived=await self._derive(draft))

    async def list(self, tenant: str | None) -> list[ForgetTarget]:
        return await self.store.list(tenant)

    async def get(self, target_id: str) -> ForgetTarget:
        target = await self.store.get(target_id)
        if target is None:
            raise APIError(404, f"No target with id '{target_id}'.", code="target_not_found", param="id")
        return target

    async def update(self, target_id: str, patch: TargetPatch, actor: str) -> ForgetTarget:
        if patch.methods is not None:
            patch = patch.model_copy(update={"methods": self._resolve_methods(patch.methods)})
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
