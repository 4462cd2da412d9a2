"""Forget-target storage: one protocol, a SQLite and a Redis backend, chosen by URL."""

from gateway.store.base import StoreUnavailable, TargetStore
from gateway.store.factory import open_store
from gateway.store.models import (
    AuditEntry,
    ForgetTarget,
    TargetCreate,
    TargetPatch,
    TargetStatus,
    utcnow,
)

__all__ = [
    "AuditEntry",
    "ForgetTarget",
    "StoreUnavailable",
    "TargetCreate",
    "TargetPatch",
    "TargetStatus",
    "TargetStore",
    "open_store",
    "utcnow",
]
