"""Forget-target store on one SQLite file.

Good for a single host: several gateway processes may share the file (WAL mode
lets readers run beside a writer, `busy_timeout` makes writers queue instead of
failing). DB work runs in worker threads so the event loop never blocks on
disk, and each call opens its own short-lived connection, so there is no
connection state to share between threads or to go stale.

The one exception is `version()`, which every chat request calls: it reads one
row through a long-lived connection, on the event loop, with no busy wait
(~5 µs instead of ~350 µs for a thread hop plus a fresh connection). If that
read would wait on a lock, or the file was replaced, it falls back to the
normal path.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.store import _records
from gateway.store.base import StoreUnavailable
from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch, utcnow

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 5.0

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
"""


class SqliteTargetStore:
    """`TargetStore` on a SQLite file; the file and its parent folders are created on first use."""

    def __init__(self, path: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        """`busy_timeout`: seconds a write waits for another process's write before failing."""
        self.path = Path(path).expanduser().absolute()
        self._busy_timeout = busy_timeout
        self.url = f"sqlite:///{self.path}"
        # Serialises this process's writers so they queue on a lock, not on SQLite's
        # sleeping busy handler; other processes are handled by busy_timeout.
        self._write_lock = threading.Lock()
        self._ready = False
        self._closed = False
        self._version_conn: sqlite3.Connection | None = None
        self._version_inode: int | None = None

    # -- plumbing -----------------------------------------------------------

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        # mode=rw after setup: a file deleted under us is an error, not a silent new empty DB.
        mode = "rwc" if create else "rw"
        conn = sqlite3.connect(
            f"{self.path.as_uri()}?mode={mode}",
            uri=True,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        return conn

    def _setup(self) -> None:
        """Create folders, file and schema once; retried on the next call if it fails."""
        if self._ready:  # fast path: reads must not queue behind this process's writers
            return
        with self._write_lock:
            if self._ready:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect(create=True)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()
            self._ready = True

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._setup()
        conn = self._connect(create=False)
        try:
            return fn(conn)
        finally:
            conn.close()

    def _write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` inside one IMMEDIATE transaction: all of it commits, or none."""
        self._setup()
        with self._write_lock:
            conn = self._connect(create=False)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            finally:
                conn.close()

    async def _run(self, what: str, sync: Callable[..., T], fn: Callable[[sqlite3.Connection], Any]) -> T:
        if self._closed:
            raise StoreUnavailable(f"sqlite store {self.path}: {what} on a closed store")
        try:
            return await asyncio.to_thread(sync, fn)
        except (sqlite3.Error, OSError, ValueError) as exc:
            # ValueError: a stored record pydantic cannot read back; fail closed on it too.
            raise StoreUnavailable(f"sqlite store {self.path}: {what} failed: {exc}") from exc

    async def _read(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(what, self._read_sync, fn)

    async def _write(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(what, self._write_sync, fn)

    @staticmethod
    def _bump_and_audit(
        conn: sqlite3.Connection, *, actor: str, action: str, target: ForgetTarget, changes: dict[str, Any]
    ) -> None:
        conn.execute("UPDATE meta SET version = version + 1")
        conn.execute(
            "INSERT INTO audit (at, actor, action, target_id, tenant, changes) VALUES (?, ?, ?, ?, ?, ?)",
            (utcnow().isoformat(), actor, action, target.id, target.tenant, json.dumps(changes)),
        )

    @staticmethod
    def _load(conn: sqlite3.Connection, target_id: str) -> ForgetTarget | None:
        row = conn.execute("SELECT payload FROM targets WHERE id = ?", (target_id,)).fetchone()
        return None if row is None else _records.load_target(row[0])

    # -- TargetStore ----------------------------------------------------------

    async def create(
        self, spec: TargetCreate, *, methods: list[str], actor: str, derived: dict[str, Any] | None = None
    ) -> ForgetTarget:
        target = _records.new_target(spec, methods=methods, actor=actor, derived=derived)

        def work(conn: sqlite3.Connection) -> ForgetTarget:
            conn.execute(
                "INSERT INTO targets (id, tenant, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (target.id, target.tenant, _records.dump_target(target),
                 target.created_at.isoformat(), target.updated_at.isoformat()),
            )
            self._bump_and_audit(conn, actor=actor, action="create", target=target,
                                 changes=_records.created_changes(target))
            return target

        return await self._write("create", work)

    async def get(self, target_id: str) -> ForgetTarget | None:
        return await self._read("get", lambda conn: self._load(conn, target_id))

    async def list(self, tenant: str | None = None) -> list[ForgetTarget]:
        def work(conn: sqlite3.Connection) -> list[ForgetTarget]:
            # rowid order is insertion order: oldest first, with no timestamp ties.
            if tenant is None:
                rows = conn.execute("SELECT payload FROM targets ORDER BY rowid").fetchall()
            else:
                rows = conn.execute(
                    "SELECT payload FROM targets WHERE tenant = ? ORDER BY rowid", (tenant,)
                ).fetchall()
            return [_records.load_target(row[0]) for row in rows]

        return await self._read("list", work)

    async def update(
        self, target_id: str, patch: TargetPatch, *, actor: str, derived: dict[str, Any] | None = None
    ) -> ForgetTarget | None:
        def work(conn: sqlite3.Connection) -> ForgetTarget | None:
            current = self._load(conn, target_id)
            if current is None:
                return None
            updated, changes = _records.apply_patch(current, patch, derived=derived)
            if not changes:
                return current
            conn.execute(
                "UPDATE targets SET payload = ?, updated_at = ? WHERE id = ?",
                (_records.dump_target(updated), updated.updated_at.isoformat(), target_id),
            )
            self._bump_and_audit(conn, actor=actor, action="update", target=updated, changes=changes)
            return updated

        return await self._write("update", work)

    async def delete(self, target_id: str, *, actor: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            current = self._load(conn, target_id)
            if current is None:
                return False
            conn.execute("DELETE FROM targets WHERE id = ?", (target_id,))
            self._bump_and_audit(conn, actor=actor, action="delete", target=current,
                                 changes=_records.deleted_changes(current))
            return True

        return await self._write("delete", work)

    async def version(self) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT version FROM meta").fetchone()[0])

        if not self._closed:
            try:
                return work(self._version_reader())
            except (sqlite3.Error, OSError):
                self._drop_version_reader()  # busy, replaced or broken: the thread path decides
        return await self._read("version", work)

    def _version_reader(self) -> sqlite3.Connection:
        """The long-lived connection for `version()`, reopened when the file is replaced."""
        inode = os.stat(self.path).st_ino
        if self._version_conn is None or inode != self._version_inode:
            self._drop_version_reader()
            self._setup()
            conn = self._connect(create=False)
            conn.execute("PRAGMA busy_timeout = 0")  # never wait on the event loop
            self._version_conn, self._version_inode = conn, inode
        return self._version_conn

    def _drop_version_reader(self) -> None:
        if self._version_conn is not None:
            self._version_conn.close()
        self._version_conn = self._version_inode = None

    async def audit(self, *, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        if limit <= 0:
            return []

        def work(conn: sqlite3.Connection) -> list[AuditEntry]:
            cols = "id, at, actor, action, target_id, tenant, changes"
            if tenant is None:
                rows = conn.execute(f"SELECT {cols} FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {cols} FROM audit WHERE tenant = ? ORDER BY id DESC LIMIT ?", (tenant, limit)
                ).fetchall()
            return [
                AuditEntry(id=r[0], at=r[1], actor=r[2], action=r[3], target_id=r[4], tenant=r[5],
                           changes=json.loads(r[6]))
                for r in rows
            ]

        return await self._read("audit", work)

    async def ping(self) -> None:
        await self._read("ping", lambda conn: conn.execute("SELECT version FROM meta").fetchone())

    async def close(self) -> None:
        """Refuses later use; only the version reader is held open between calls."""
        self._closed = True
        self._drop_version_reader()
