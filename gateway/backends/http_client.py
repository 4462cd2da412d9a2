"""A small pooled HTTP/1.1 client for the upstream: asyncio protocols and httptools' parser.

Why not aiohttp: on this project's 2-core VM, one streamed request to
`bench/fake_upstream.py` (request, headers, 18 SSE events) took aiohttp 461 µs and this
client 330 µs (httpx: 1,426 µs), measured by `bench/bench_upstream_client.py`.
aiohttp's per-request machinery (a task per request body, tracing hooks, stream readers,
timer rescheduling per read) was the largest part of the gateway's own proxy cost. The upstream needs little of a general client: one origin,
keep-alive, JSON request bodies of known length, responses of known length or chunked,
TLS for `https`, and timeouts. That is what this is.

Errors are this module's own (`ConnectFailed`, `Timeout`, `ConnectionBroken`), mapped to
OpenAI errors by `gateway.backends.upstream_http`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

import httptools

_PAUSE_AT = 1 << 20  # unread response bytes at which the socket stops being read


class HTTPClientError(Exception):
    """A transport failure talking to the upstream."""


class ConnectFailed(HTTPClientError):
    """The upstream could not be reached (refused, unresolvable, unreachable)."""


class Timeout(HTTPClientError):
    """Connecting, waiting for a pooled connection, or waiting for the next bytes took too long."""


class ConnectionBroken(HTTPClientError):
    """The connection closed or sent something that is not HTTP before the response was complete."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time with httptools."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        # One timer per connection, re-armed only when it fires early: a timer per wait (per
        # streamed chunk) was a measurable share of the per-chunk cost.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.received_any = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.error: HTTPClientError | None = None
        self._waiter: asyncio.Future | None = None
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionBroken("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ConnectionBroken(f"malformed HTTP from the upstream ({exc})"))
        if self.buffered > _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(ConnectionBroken("the upstream closed the connection"))

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # only known while parsing this message
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- waiting -------------------------------------------------------------------------

    def _fail(self, error: HTTPClientError) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until something new arrived (headers, body, the end, or an error); `Timeout` after `timeout`."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._deadline = loop.time() + timeout
        if self._timer is None or self._deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(self._deadline, self._check_deadline)
        try:
            await waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting now: the next wait arms a new timer
        loop = waiter.get_loop()
        if loop.time() >= self._deadline:
            waiter.set_exception(Timeout("the upstream did not answer in time"))
        else:  # data came in since this timer was set: wait out the current deadline
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    def take(self) -> bytes:
        """The body bytes received so far (and reading resumes if it was paused)."""
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


class Response:
    """The status and headers of an upstream response, its body read as it arrives."""

    def __init__(self, pool: ConnectionPool, conn: _Connection):
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._done = False

    @property
    def at_eof(self) -> bool:
        return self._conn.complete and not self._conn.chunks

    async def iter_chunks(self):
        """Body bytes as they arrive, until the response is complete."""
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                return
            else:
                await conn.wait(self._pool.read_timeout)

    async def read(self, limit: int | None = None) -> bytes:
        """The body (its first `limit` bytes when given: the rest is not waited for)."""
        parts: list[bytes] = []
        size = 0
        async for part in self.iter_chunks():
            parts.append(part)
            size += len(part)
            if limit is not None and size >= limit:
                break
        body = b"".join(parts)
        return body if limit is None else body[:limit]

    def release(self) -> None:
        """Done with the response: a completely read one gives its connection back to the pool."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if self.at_eof and conn.error is None and conn.keep_alive and not conn.closed:
            self._pool._put(conn)
        else:
            conn.close()
        self._pool._slots.release()


class ConnectionPool:
    """Keep-alive connections to one origin, at most `max_connections` requests at a time."""

    def __init__(self, base_url: str, *, max_connections: int, connect_timeout: float, read_timeout: float,
                 keepalive_seconds: float):
        parts = urlsplit(base_url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._host_header = parts.netloc.encode("idna").rsplit(b"@", 1)[-1]
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._keepalive = keepalive_seconds
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(self, method: str, target: str, body: bytes | None, headers: dict[str, str],
                      *, timeout: float | None = None) -> Response:
        """Send a request and wait for the response headers (`read_timeout`, or `timeout` when given)."""
        wait = self.read_timeout if timeout is None else timeout
        if self._slots.locked():  # all in use: wait (a task and a timer) for a free one
            try:
                await asyncio.wait_for(self._slots.acquire(), wait)
            except asyncio.TimeoutError:
                raise Timeout("no upstream connection became free in time") from None
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            data = self._encode(method, target, body, headers)
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, data, wait)
                except ConnectionBroken:
                    if conn.received_any:
                        raise
                    # A pooled connection the upstream had just closed: nothing was answered, so
                    # the request goes once more on a fresh connection.
            return await self._exchange(await self._connect(min(wait, self.connect_timeout)), data, wait)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, conn: _Connection, data: bytes, wait: float) -> Response:
        assert conn.transport is not None
        try:
            conn.transport.write(data)
            while not conn.headers_done:
                await conn.wait(wait)
        except BaseException:
            conn.close()
            raise
        return Response(self, conn)

    def _encode(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n".encode(), b"Host: ", self._host_header, b"\r\n"]
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        if body:
            lines.append(body)
        return b"".join(lines)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive:
                conn._reset()
                return conn
            conn.close()
        return None

    def _put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl), timeout)
        except asyncio.TimeoutError:
            raise Timeout("connecting to the upstream timed out") from None
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        return conn

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
