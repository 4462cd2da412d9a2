"""The SQLite store's schema, and the upgrade of files written by earlier releases."""

from __future__ import annotations

import sqlite3
import uuid

_SCHEMA = """
CREATE TABLE IF NOT EXISTS targets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS targets_by_tenant ON targets (tenant);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    changes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit (tenant, id);
CREATE TABLE IF NOT EXISTS meta (version INTEGER NOT NULL);
INSERT INTO meta (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM meta);
CREATE TABLE IF NOT EXISTS changes (target_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS changes_by_version ON changes (version);
"""
# Added after the first release: older files get them on open (log_floor = their version, as
# their changes before it were never logged).
_META_COLUMNS = {"epoch": "TEXT", "accepted_epoch": "TEXT", "log_floor": "INTEGER NOT NULL DEFAULT 0"}


def create_schema(conn: sqlite3.Connection) -> None:
    """Create what is missing, inside the caller's transaction; a new file gets a fresh epoch."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    have = {row[1] for row in conn.execute("PRAGMA table_info(meta)")}
    for column, decl in _META_COLUMNS.items():
        if column not in have:
            conn.execute(f"ALTER TABLE meta ADD COLUMN {column} {decl}")
    conn.execute("UPDATE meta SET epoch = ?, log_floor = version WHERE epoch IS NULL", (uuid.uuid4().hex,))
