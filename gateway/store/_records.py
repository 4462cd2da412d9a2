"""Backend-neutral record logic.

Both stores build, patch and audit targets through these helpers, so a target
created on SQLite and one created on Redis are byte-for-byte the same record and
the audit trail reads the same whichever backend wrote it.
"""

from __future__ import annotations

import uuid
from typing import Any

from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch, utcnow

# Fields an admin chooses; the rest (id, created_*, updated_at) the store owns.
_CONTENT_FIELDS = {"name", "aliases", "description", "facts", "documents", "methods", "tenant", "status"}


def new_target_id() -> str:
    return f"tgt_{uuid.uuid4().hex}"


def new_target(
    spec: TargetCreate, *, methods: list[str], actor: str, derived: dict[str, Any] | None = None
) -> ForgetTarget:
    """A fresh target; `methods` and method-owned `derived` data are stored as given."""
    now = utcnow()
    return ForgetTarget(
        id=new_target_id(),
        name=spec.name,
        aliases=list(spec.aliases),
        description=spec.description,
        facts=list(spec.facts),
        documents=list(spec.documents),
        methods=list(methods),
        tenant=spec.tenant,
        created_at=now,
        created_by=actor,
        updated_at=now,
        derived=dict(derived or {}),
    )


def created_changes(target: ForgetTarget) -> dict[str, Any]:
    """Audit `changes` of a create: every field the admin set, as JSON."""
    return target.model_dump(mode="json", include=_CONTENT_FIELDS)


def deleted_changes(target: ForgetTarget) -> dict[str, Any]:
    """Audit `changes` of a delete: the name, so the log stays readable after the row is gone."""
    return {"name": target.name}


def apply_patch(
    target: ForgetTarget, patch: TargetPatch, *, derived: dict[str, Any] | None = None
) -> tuple[ForgetTarget, dict[str, Any]]:
    """Apply the fields set in `patch`; return the new target and {field: {from, to}}.

    Fields explicitly set to null count as "not given" (none of them is nullable on a
    stored target). When no field actually changes, the target comes back untouched
    and `changes` is empty, so callers can skip the write, the version bump and the audit.
    """
    wanted = {k: v for k, v in patch.model_dump(mode="json", exclude_unset=True).items() if v is not None}
    current = target.model_dump(mode="json")
    changes = {
        field: {"from": current[field], "to": value}
        for field, value in wanted.items()
        if current.get(field) != value
    }
    new_derived = {**current["derived"], **(derived or {})}
    if new_derived != current["derived"]:  # method data (embeddings, jobs): audit the keys, not the bulk
        changes["derived"] = {"updated": sorted(k for k in new_derived if new_derived[k] != current["derived"].get(k))}
    if not changes:
        return target, {}
    updated = {**current, **{f: c["to"] for f, c in changes.items() if f != "derived"},
               "derived": new_derived, "updated_at": utcnow()}
    return ForgetTarget.model_validate(updated), changes


def dump_target(target: ForgetTarget) -> str:
    return target.model_dump_json()


def load_target(raw: str | bytes) -> ForgetTarget:
    return ForgetTarget.model_validate_json(raw)


def audit_entry(
    entry_id: int, *, actor: str, action: str, target: ForgetTarget, changes: dict[str, Any]
) -> AuditEntry:
    return AuditEntry(
        id=entry_id,
        at=utcnow(),
        actor=actor,
        action=action,
        target_id=target.id,
        tenant=target.tenant,
        changes=changes,
    )
