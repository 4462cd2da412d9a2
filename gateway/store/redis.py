"""Forget-target store on Redis, for replicas spread over several hosts.

Keys (all under one prefix, so several gateways can share a Redis):
  {prefix}:target:{id}  JSON of one target
  {prefix}:targets      sorted set of ids, scored by the version their create produced
                        (insertion order without clock-skew or same-microsecond ties)
  {prefix}:version      INCR on every change
  {prefix}:audit        list of JSON audit entries, newest first (LPUSH)
  {prefix}:audit:seq    INCR counter that numbers audit entries
  {prefix}:changes      sorted set: target id -> version of its latest change (the change log)
  {prefix}:changes:floor  changes at or below this version are no longer in the log
  {prefix}:epoch        random id written at first use (a Redis that lost its data gets a new one)
  {prefix}:epoch:accepted  the epoch an operator accepted after a reset

Every write is WATCH {prefix}:version + read + MULTI/EXEC: the target change,
the version bump, the change-log entry and the audit entry land together or
not at all, and because every write moves the version, writes are serialised,
so audit ids grow in the same order as the audit list.

Redis keeps data in memory: run it with AOF persistence (`appendonly yes`,
`appendfsync everysec` or `always`) in production, or a restart forgets every
target (the gateway then sees a new epoch and fails closed; see README).
"""

from __future__ import annotations

import asyncio
import random
import uuid
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
from gateway.store.base import CHANGE_LOG_MAX, NewTarget, StoreState, StoreUnavailable
from gateway.store.models import AuditEntry, ForgetTarget, TargetCreate, TargetPatch

T = TypeVar("T")

MAX_WRITE_ATTEMPTS = 100
_AUDIT_SCAN_CHUNK = 500
_MGET_CHUNK = 1_000
_PARSE_INLINE = 256  # records parsed on the event loop; more go to a worker thread

# One round trip: epoch (written, with the log floor, on a fresh or wiped Redis), version, accepted epoch.
_STATE_SCRIPT = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[3], redis.call('GET', KEYS[2]) or '0')
end
return {epoch, redis.call('GET', KEYS[2]) or '0', redis.call('GET', KEYS[4]) or ''}
"""


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
        self._changes_key = f"{prefix}:changes"
        self._floor_key = f"{prefix}:changes:floor"
        self._epoch_key = f"{prefix}:epoch"
        self._accepted_key = f"{prefix}:epoch:accepted"
        self._state_script = self._redis.register_script(_STATE_SCRIPT)

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
            await self._read_state()  # a write to a fresh or wiped Redis starts a new epoch first
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
        """Queue version bump + audit entry + change-log entry on a watched pipeline; return the new version."""
        return await self._queue_changes(pipe, actor=actor, action=action, items=[(target, changes)])

    async def _queue_changes(
        self, pipe: Pipeline, *, actor: str, action: str, items: list[tuple[ForgetTarget, dict[str, Any]]]
    ) -> int:
        """One version bump for all `items`, each audited and logged; return the new version."""
        version = int(await pipe.get(self._version_key) or 0) + 1
        seq = int(await pipe.get(self._audit_seq_key) or 0)
        excess = int(await pipe.zcard(self._changes_key)) + len(items) - CHANGE_LOG_MAX
        trimmed = await pipe.zrange(self._changes_key, excess - 1, excess - 1, withscores=True) if excess > 0 else []
        pipe.multi()
        pipe.set(self._version_key, version)
        pipe.set(self._audit_seq_key, seq + len(items))
        pipe.lpush(self._audit_key, *(
            _records.audit_entry(seq + 1 + i, actor=actor, action=action, target=target,
                                 changes=changes).model_dump_json()
            for i, (target, changes) in enumerate(items)))
        if trimmed:  # the oldest entries go; replicas further behind than the floor reload everything
            pipe.zremrangebyrank(self._changes_key, 0, excess - 1)
            pipe.set(self._floor_key, int(trimmed[0][1]))
        pipe.zadd(self._changes_key, {target.id: version for target, _ in items})
        return version

    async def _read_state(self) -> StoreState:
        epoch, version, accepted = await self._state_script(
            keys=[self._epoch_key, self._version_key, self._floor_key, self._accepted_key],
            args=[uuid.uuid4().hex])
        return StoreState(epoch=epoch, version=int(version), accepted_epoch=accepted or None)

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

    async def create_many(self, items: list[NewTarget], *, actor: str) -> list[ForgetTarget]:
        targets = [_records.new_target(spec, methods=methods, actor=actor, derived=derived)
                   for spec, methods, derived in items]
        if not targets:
            return []

        async def attempt(pipe: Pipeline) -> list[ForgetTarget]:
            version = await self._queue_changes(
                pipe, actor=actor, action="create",
                items=[(t, _records.created_changes(t)) for t in targets])
            pipe.mset({self._target_key(t.id): _records.dump_target(t) for t in targets})
            # Scores keep the batch's order after every earlier target and before every later one.
            step = 1 / (len(targets) + 1)
            pipe.zadd(self._ids_key, {t.id: version + i * step for i, t in enumerate(targets)})
            return targets

        return await self._transact("create_many", attempt)

    async def get_many(self, target_ids: list[str]) -> list[ForgetTarget]:
        """In `target_ids` order; chunked, so 100k targets never make one reply that outlasts the
        socket timeout, and parsed in a worker thread when many, so the event loop keeps serving."""
        async with self._guard("get_many"):
            raws: list[str] = []
            for start in range(0, len(target_ids), _MGET_CHUNK):
                chunk = await self._redis.mget([self._target_key(i) for i in target_ids[start:start + _MGET_CHUNK]])
                raws.extend(raw for raw in chunk if raw is not None)  # None: deleted meanwhile, gone
            if len(raws) <= _PARSE_INLINE:
                return [_records.load_target(raw) for raw in raws]
            return await asyncio.to_thread(lambda: [_records.load_target(raw) for raw in raws])

    async def state(self) -> StoreState:
        async with self._guard("state"):
            return await self._read_state()

    async def changes_since(self, version: int) -> list[str] | None:
        async with self._guard("changes_since"):
            async with self._redis.pipeline(transaction=True) as pipe:  # floor and log from one instant
                floor, ids = await pipe.get(self._floor_key).zrangebyscore(
                    self._changes_key, f"({version}", "+inf").execute()
            return None if version < int(floor or 0) else list(ids)

    async def accept_epoch(self) -> StoreState:
        async with self._guard("accept_epoch"):
            state = await self._read_state()
            await self._redis.set(self._accepted_key, state.epoch)
            return StoreState(epoch=state.epoch, version=state.version, accepted_epoch=state.epoch)

    async def get(self, target_id: str) -> ForgetTarget | None:
        async with self._guard("get"):
            raw = await self._redis.get(self._target_key(target_id))
            return None if raw is None else _records.load_target(raw)

    async def list(self, tenant: str | None = None) -> list[ForgetTarget]:
        async with self._guard("list"):
            ids: list[str] = []
            low = "-inf"
            while True:  # by score, not rank: a delete between two pages cannot shift an id out of both
                page = await self._redis.zrangebyscore(self._ids_key, low, "+inf", start=0, num=_MGET_CHUNK * 10,
                                                       withscores=True)
                ids.extend(member for member, _ in page)
                if len(page) < _MGET_CHUNK * 10:
                    break
                low = f"({page[-1][1]!r}"  # scores are unique: one per create, fractions within a batch
        targets = await self.get_many(ids)
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
        return (await self.state()).version

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
