"""Forget-target store on Redis, for replicas spread over several hosts.

Keys (all under one prefix, so several gateways can share a Redis):
  {prefix}:target:{id}  JSON of one target
  {prefix}:targets      sorted set of ids, scored by the version their create produced
                        (insertion order without clock-skew or same-microsecond ties)
  {prefix}:version      INCR on every change
  {prefix}:audit        list of JSON audit entries, newest first (LPUSH)
  {prefix}:audit:seq    INCR counter that numbers audit entries

Every write is WATCH {prefix}:version + read + MULTI/EXEC: the target change,
the version bump and the audit entry land together or not at all, and because
every write moves the version, writes are serialised, so audit ids grow in the
same order as the audit list.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError

from gateway.store import _records
from gateway.store.base import StoreUnavailable
from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch

T = TypeVar("T")

MAX_WRITE_ATTEMPTS = 100
_AUDIT_SCAN_CHUNK = 500


def redact_url(url: str) -> str:
    """The URL with any password replaced, so it is safe to show in logs and health output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisTargetStore:
    """`TargetStore` on Redis; connects lazily, so constructing it never fails on a dead server."""

    def __init__(
        self,
        url: str,
        prefix: str = "unlearn",
        *,
        connect_timeout: float = 2.0,
        op_timeout: float = 2.0,
        max_connections: int = 32,
    ) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
        # One quick retry lets a pooled connection that died with a Redis restart be
        # replaced transparently; no backoff, so a dead server fails fast.
        self._redis: Redis = Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=op_timeout,
            retry=Retry(NoBackoff(), 1),
            max_connections=max_connections,
            decode_responses=True,
        )
        self._version_key = f"{prefix}:version"
        self._ids_key = f"{prefix}:targets"
        self._audit_key = f"{prefix}:audit"
        self._audit_seq_key = f"{prefix}:audit:seq"

    def _target_key(self, target_id: str) -> str:
        return f"{self.prefix}:target:{target_id}"

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError, ValueError) as exc:
            # ValueError: a stored record pydantic cannot read back; fail closed on it too.
            raise StoreUnavailable(f"redis store {self.url}: {what} failed: {exc}") from exc

    async def _transact(self, what: str, attempt: Callable[[Pipeline], Awaitable[T]], *watch: str) -> T:
        """Run `attempt` under WATCH(version, *watch), retrying when another writer got in first.

        `attempt` reads in immediate mode, then calls `pipe.multi()` and queues its writes;
        they execute atomically here, or the whole attempt reruns on a WatchError.
        """
        async with self._guard(what):
            for n in range(MAX_WRITE_ATTEMPTS):
                async with self._redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(self._version_key, *watch)
                        result = await attempt(pipe)
                        if pipe.explicit_transaction:
                            await pipe.execute()
                        return result
                    except WatchError:
                        await asyncio.sleep(random.uniform(0, 0.002 * min(n + 1, 10)))
            raise StoreUnavailable(
                f"redis store {self.url}: {what} lost {MAX_WRITE_ATTEMPTS} write races in a row"
            )

    async def _queue_change(
        self, pipe: Pipeline, *, actor: str, action: str, target: ForgetTarget, changes: dict[str, Any]
    ) -> int:
        """Queue version bump + audit entry on a watched pipeline; return the new version."""
        version = int(await pipe.get(self._version_key) or 0)
        seq = int(await pipe.get(self._audit_seq_key) or 0)
        entry = _records.audit_entry(seq + 1, actor=actor, action=action, target=target, changes=changes)
        pipe.multi()
        pipe.incr(self._version_key)
        pipe.incr(self._audit_seq_key)
        pipe.lpush(self._audit_key, entry.model_dump_json())
        return version + 1

    # -- TargetStore ----------------------------------------------------------

    async def create(
        self, spec: TargetCreate, *, methods: list[str], actor: str, derived: dict[str, Any] | None = None
    ) -> ForgetTarget:
        target = _records.new_target(spec, methods=methods, actor=actor, derived=derived)

        async def attempt(pipe: Pipeline) -> ForgetTarget:
            version = await self._queue_change(
                pipe, actor=actor, action="create", target=target, changes=_records.created_changes(target)
            )
            pipe.set(self._target_key(target.id), _records.dump_target(target))
            pipe.zadd(self._ids_key, {target.id: version})
            return target

        return await self._transact("create", attempt)

    async def get(self, target_id: str) -> ForgetTarget | None:
        async with self._guard("get"):
            raw = await self._redis.get(self._target_key(target_id))
            return None if raw is None else _records.load_target(raw)

    async def list(self, tenant: str | None = None) -> list[ForgetTarget]:
        async with self._guard("list"):
            ids = await self._redis.zrange(self._ids_key, 0, -1)
            if not ids:
                return []
            raws = await self._redis.mget([self._target_key(i) for i in ids])
            # A None is a target deleted between the two reads: it is gone, skip it.
            targets = [_records.load_target(raw) for raw in raws if raw is not None]
        return [t for t in targets if tenant is None or t.tenant == tenant]

    async def update(
        self, target_id: str, patch: TargetPatch, *, actor: str, derived: dict[str, Any] | None = None
    ) -> ForgetTarget | None:
        key = self._target_key(target_id)

        async def attempt(pipe: Pipeline) -> ForgetTarget | None:
            raw = await pipe.get(key)
            if raw is None:
                return None
            current = _records.load_target(raw)
            updated, changes = _records.apply_patch(current, patch, derived=derived)
            if not changes:
                return current
            await self._queue_change(pipe, actor=actor, action="update", target=updated, changes=changes)
            pipe.set(key, _records.dump_target(updated))
            return updated

        return await self._transact("update", attempt, key)

    async def delete(self, target_id: str, *, actor: str) -> bool:
        key = self._target_key(target_id)

        async def attempt(pipe: Pipeline) -> bool:
            raw = await pipe.get(key)
            if raw is None:
                return False
            current = _records.load_target(raw)
            await self._queue_change(
                pipe, actor=actor, action="delete", target=current, changes=_records.deleted_changes(current)
            )
            pipe.delete(key)
            pipe.zrem(self._ids_key, target_id)
            return True

        return await self._transact("delete", attempt, key)

    async def version(self) -> int:
        async with self._guard("version"):
            return int(await self._redis.get(self._version_key) or 0)

    async def audit(self, *, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        if limit <= 0:
            return []
        async with self._guard("audit"):
            if tenant is None:
                raws = await self._redis.lrange(self._audit_key, 0, limit - 1)
                return [AuditEntry.model_validate_json(raw) for raw in raws]
            found: list[AuditEntry] = []
            start = 0
            while len(found) < limit:
                raws = await self._redis.lrange(self._audit_key, start, start + _AUDIT_SCAN_CHUNK - 1)
                for raw in raws:
                    entry = AuditEntry.model_validate_json(raw)
                    if entry.tenant == tenant:
                        found.append(entry)
                if len(raws) < _AUDIT_SCAN_CHUNK:
                    break
                start += _AUDIT_SCAN_CHUNK
            return found[:limit]

    async def ping(self) -> None:
        async with self._guard("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        async with self._guard("close"):
            await self._redis.aclose()
