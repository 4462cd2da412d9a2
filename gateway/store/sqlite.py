"""Forget-target store on one SQLite file.

Good for a single host: several gateway processes may share the file (WAL mode
lets readers run beside a writer, `busy_timeout` makes writers queue instead of
failing). DB work runs in worker threads so the event loop never blocks on
disk, and each call opens its own short-lived connection, so there is no
connection state to share between threads or to go stale.

The one exception is `state()` (and `version()`), which every chat request
calls: it reads one row through a long-lived connection, on the event loop,
with no busy wait (~5 µs instead of ~350 µs for a thread hop plus a fresh
connection). If that read would wait on a lock, or the file was replaced, it
falls back to the normal path.

Every write also records (target id, version) in `changes`, one row per target
(its latest change), so replicas fetch only what moved. `meta.epoch` is a random
id written when the file is created: a replaced file shows up as a new epoch.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.store import _records
from gateway.store._sqlite_schema import create_schema
from gateway.store.base import CHANGE_LOG_MAX, NewTarget, StoreState, StoreUnavailable
from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch, utcnow

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 5.0
_TRIM_EVERY = 1_000  # versions between two looks at the change log's size
_IN_CHUNK = 500  # ids per `IN (...)` query (SQLite caps bound parameters)

_STATE_SQL = "SELECT epoch, version, accepted_epoch FROM meta"


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
        self._shm_path = self.path.with_name(self.path.name + "-shm")

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
                    create_schema(conn)
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

    def _shm_fault(self) -> str | None:
        """Why no connection may touch the file now, or None.

        SQLite maps the WAL index (`-shm`) shared and writable, and all connections of a process
        share that mapping. Once the file is immutable (`chattr +i`) or its mount read-only, the
        kernel answers the next write to a clean mapped page with SIGBUS, which kills the process
        (no Python handler can resume it). So while the -shm exists and is not writable, no
        connection is opened, used or closed, and callers get StoreUnavailable (503) instead.
        """
        if os.access(self._shm_path, os.W_OK) or not os.path.exists(self._shm_path):
            return None
        return f"{self._shm_path.name} is not writable (immutable file or read-only mount)"

    async def _run(self, what: str, sync: Callable[..., T], fn: Callable[[sqlite3.Connection], Any]) -> T:
        if self._closed:
            raise StoreUnavailable(f"sqlite store {self.path}: {what} on a closed store")
        if (fault := self._shm_fault()) is not None:
            raise StoreUnavailable(f"sqlite store {self.path}: {what} refused: {fault}")
        try:
            return await asyncio.to_thread(sync, fn)
        except (sqlite3.Error, OSError, ValueError) as exc:
            # ValueError: a stored record pydantic cannot read back; fail closed on it too.
            raise StoreUnavailable(f"sqlite store {self.path}: {what} failed: {exc}") from exc

    async def _read(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(what, self._read_sync, fn)

    async def _write(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(what, self._write_sync, fn)

    @classmethod
    def _bump_and_audit(
        cls, conn: sqlite3.Connection, *, actor: str, action: str, target: ForgetTarget, changes: dict[str, Any]
    ) -> None:
        cls._log(conn, cls._bump(conn), actor=actor, action=action, target=target, changes=changes)

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> int:
        """The next version; trims the change log now and then (replicas behind its floor reload all)."""
        conn.execute("UPDATE meta SET version = version + 1")
        version = int(conn.execute("SELECT version FROM meta").fetchone()[0])
        if version % _TRIM_EVERY == 0:
            row = conn.execute("SELECT version FROM changes ORDER BY version DESC LIMIT 1 OFFSET ?",
                               (CHANGE_LOG_MAX,)).fetchone()
            if row is not None:
                conn.execute("DELETE FROM changes WHERE version <= ?", (row[0],))
                conn.execute("UPDATE meta SET log_floor = MAX(log_floor, ?)", (row[0],))
        return version

    @staticmethod
    def _log(conn: sqlite3.Connection, version: int, *, actor: str, action: str, target: ForgetTarget,
             changes: dict[str, Any]) -> None:
        """Audit entry + change-log row of one target, in the caller's transaction."""
        conn.execute(
            "INSERT INTO audit (at, actor, action, target_id, tenant, changes) VALUES (?, ?, ?, ?, ?, ?)",
            (utcnow().isoformat(), actor, action, target.id, target.tenant, json.dumps(changes)),
        )
        conn.execute("INSERT INTO changes (target_id, version) VALUES (?, ?) "
                     "ON CONFLICT (target_id) DO UPDATE SET version = excluded.version", (target.id, version))

    @staticmethod
    def _insert(conn: sqlite3.Connection, target: ForgetTarget) -> None:
        conn.execute(
            "INSERT INTO targets (id, tenant, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (target.id, target.tenant, _records.dump_target(target),
             target.created_at.isoformat(), target.updated_at.isoformat()),
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
            self._insert(conn, target)
            self._bump_and_audit(conn, actor=actor, action="create", target=target,
                                 changes=_records.created_changes(target))
            return target

        return await self._write("create", work)

    async def create_many(self, items: list[NewTarget], *, actor: str) -> list[ForgetTarget]:
        targets = [_records.new_target(spec, methods=methods, actor=actor, derived=derived)
                   for spec, methods, derived in items]
        if not targets:
            return []

        def work(conn: sqlite3.Connection) -> list[ForgetTarget]:
            version = self._bump(conn)
            for target in targets:
                self._insert(conn, target)
                self._log(conn, version, actor=actor, action="create", target=target,
                          changes=_records.created_changes(target))
            return targets

        return await self._write("create_many", work)

    async def get_many(self, target_ids: list[str]) -> list[ForgetTarget]:
        def work(conn: sqlite3.Connection) -> list[ForgetTarget]:
            found: list[ForgetTarget] = []
            for start in range(0, len(target_ids), _IN_CHUNK):
                chunk = target_ids[start:start + _IN_CHUNK]
                rows = conn.execute(f"SELECT payload FROM targets WHERE id IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall()
                found.extend(_records.load_target(row[0]) for row in rows)
            return found

        return await self._read("get_many", work) if target_ids else []

    async def changes_since(self, version: int) -> list[str] | None:
        def work(conn: sqlite3.Connection) -> list[str] | None:
            conn.execute("BEGIN")  # floor and rows from one read transaction
            try:
                if version < int(conn.execute("SELECT log_floor FROM meta").fetchone()[0]):
                    return None
                rows = conn.execute("SELECT target_id FROM changes WHERE version > ?", (version,)).fetchall()
                return [row[0] for row in rows]
            finally:
                conn.execute("COMMIT")

        return await self._read("changes_since", work)

    async def accept_epoch(self) -> StoreState:
        def work(conn: sqlite3.Connection) -> StoreState:
            conn.execute("UPDATE meta SET accepted_epoch = epoch")
            return self._state_of(conn)

        return await self._write("accept_epoch", work)

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
        return (await self.state()).version

    @staticmethod
    def _state_of(conn: sqlite3.Connection) -> StoreState:
        epoch, version, accepted = conn.execute(_STATE_SQL).fetchone()
        return StoreState(epoch=epoch, version=int(version), accepted_epoch=accepted)

    async def state(self) -> StoreState:
        work = self._state_of
        if not self._closed and self._shm_fault() is None:  # a faulty file: `_read` says why
            try:
                return work(self._version_reader())
            except (sqlite3.Error, OSError):
                self._drop_version_reader()  # busy, replaced or broken: the thread path decides
        return await self._read("state", work)

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
        conn = self._version_conn
        self._version_conn = self._version_inode = None
        if conn is None:
            return
        if self._shm_fault() is None:
            conn.close()
        else:
            # Closing the last connection checkpoints through the -shm (SIGBUS, see `_shm_fault`), and
            # so would the garbage collector: a reference never released keeps it open until the
            # process exits, when the kernel, not SQLite, lets go of the file.
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))

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
