"""Wire and storage types of forget targets.

One set of pydantic models serves the admin API, both store backends and the
request pipeline, so a target means the same thing everywhere it travels.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PHRASE_CHARS = 200
MAX_LIST_ITEMS = 256
MAX_DOCUMENT_CHARS = 200_000
TENANT_PATTERN = r"^[A-Za-z0-9_.:-]+$"


class TargetStatus(str, Enum):
    """`disabled` keeps a target on record but stops enforcing it."""

    active = "active"
    disabled = "disabled"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _clean_phrases(values: list[str]) -> list[str]:
    """Strip, drop empties and duplicates (case-insensitive), keep order."""
    seen: set[str] = set()
    cleaned: list[str] = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        if len(value) > MAX_PHRASE_CHARS:
            raise ValueError(f"each entry must be at most {MAX_PHRASE_CHARS} characters")
        key = value.casefold()
        if key not in seen:
            seen.add(key)
            cleaned.append(value)
    return cleaned


def _clean_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise ValueError("name must not be blank")
    return value


def _clean_aliases(values: list[str] | None) -> list[str] | None:
    return None if values is None else _clean_phrases(values)


def _clean_facts(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = [v.strip() for v in values if v.strip()]
    if any(len(v) > 2_000 for v in out):
        raise ValueError("each fact must be at most 2000 characters")
    return out


def _clean_documents(values: list[str] | None) -> list[str] | None:
    if values is not None and any(len(v) > MAX_DOCUMENT_CHARS for v in values):
        raise ValueError(f"each document must be at most {MAX_DOCUMENT_CHARS} characters")
    return values


def _clean_methods(values: list[str] | None) -> list[str] | None:
    """Lower-case and de-duplicate; which names exist is checked by the method registry."""
    if values is None:
        return None
    out: list[str] = []
    for v in values:
        v = v.strip().lower()
        if v and v not in out:
            out.append(v)
    if not out:
        raise ValueError("methods must name at least one method (or be omitted)")
    return out


class TargetCreate(BaseModel):
    """Body of `POST /admin/v1/targets`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_PHRASE_CHARS)
    aliases: list[str] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    description: str = Field(default="", max_length=4_000)
    facts: list[str] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    documents: list[str] = Field(default_factory=list, max_length=64)
    methods: list[str] | None = None
    tenant: str = Field(default="default", min_length=1, max_length=128, pattern=TENANT_PATTERN)

    _name = field_validator("name")(classmethod(lambda cls, v: _clean_name(v)))
    _aliases = field_validator("aliases")(classmethod(lambda cls, v: _clean_aliases(v)))
    _facts = field_validator("facts")(classmethod(lambda cls, v: _clean_facts(v)))
    _documents = field_validator("documents")(classmethod(lambda cls, v: _clean_documents(v)))
    _methods = field_validator("methods")(classmethod(lambda cls, v: _clean_methods(v)))


class TargetPatch(BaseModel):
    """Body of `PATCH /admin/v1/targets/{id}`: every field optional; tenant is fixed at creation."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=MAX_PHRASE_CHARS)
    aliases: list[str] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    description: str | None = Field(default=None, max_length=4_000)
    facts: list[str] | None = Field(default=None, max_length=MAX_LIST_ITEMS)
    documents: list[str] | None = Field(default=None, max_length=64)
    methods: list[str] | None = None
    status: TargetStatus | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: _clean_name(v)))
    _aliases = field_validator("aliases")(classmethod(lambda cls, v: _clean_aliases(v)))
    _facts = field_validator("facts")(classmethod(lambda cls, v: _clean_facts(v)))
    _documents = field_validator("documents")(classmethod(lambda cls, v: _clean_documents(v)))
    _methods = field_validator("methods")(classmethod(lambda cls, v: _clean_methods(v)))


_PUBLIC_JOB_FIELDS = ("status", "error", "trained_at", "protected_by", "metrics")


class ForgetTarget(BaseModel):
    """A stored forget target as the store returns it."""

    id: str
    name: str
    aliases: list[str] = Field(default_factory=list)
    description: str = ""
    facts: list[str] = Field(default_factory=list)
    documents: list[str] = Field(default_factory=list)
    methods: list[str]
    tenant: str = "default"
    status: TargetStatus = TargetStatus.active
    created_at: datetime
    created_by: str
    updated_at: datetime
    derived: dict[str, Any] = Field(default_factory=dict)
    """Data methods derive from the target (embeddings, adapter jobs); internal, never shown to clients."""

    def public(self) -> dict[str, Any]:
        """The admin API's view: everything an admin set or the store owns, not the derived bulk.

        Background jobs of methods (ULD training) show up as `jobs`, whitelisted fields only; stored
        probes as their count (`probes`) and the last forget report as `verification`.
        """
        view = self.model_dump(mode="json", exclude={"derived"})
        jobs = {method: {k: v for k, v in data.items() if k in _PUBLIC_JOB_FIELDS}
                for method, data in self.derived.items() if isinstance(data, dict) and "status" in data}
        if jobs:
            view["jobs"] = jobs
        if isinstance(self.derived.get("probes"), list):  # stored eval probes: their count, not the bulk
            view["probes"] = len(self.derived["probes"])
        if isinstance(self.derived.get("verification"), dict):  # the last forget report (admin/verify)
            view["verification"] = self.derived["verification"]
        return view

    @property
    def surface_names(self) -> list[str]:
        """The strings that must never reach a client: name first, then aliases."""
        return [self.name, *self.aliases]

    @property
    def is_active(self) -> bool:
        return self.status is TargetStatus.active


class AuditEntry(BaseModel):
    """One admin change: who did what to which target, and when."""

    id: int
    at: datetime
    actor: str
    action: str  # "create" | "update" | "delete"
    target_id: str
    tenant: str
    changes: dict[str, Any] = Field(default_factory=dict)
