"""HTTP to the upstream model server: one connection pool, errors mapped, SSE parsed on bytes.

The transport is `gateway.backends.http_client` (asyncio + httptools), chosen by
measurement against `bench/fake_upstream.py` (`bench/bench_upstream_client.py`; the
figures are in `http_client`'s docstring and the README).

Errors: connection refused → 503, timeouts → 504, a broken connection, upstream 5xx or a
malformed response → 502; upstream 4xx (e.g. context length) keep their status and message,
except credentials/route problems (401/403/404), which are the gateway's configuration and
become 502.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.backends.base import BackendError
from gateway.backends.http_client import ConnectFailed, ConnectionBroken, ConnectionPool, HTTPClientError, Response, Timeout

MAX_ERROR_BODY = 64 * 1024
_MAX_MESSAGE = 1000
_KEEPALIVE_SECONDS = 4.0  # below uvicorn's (vLLM's server) 5 s idle close, so a pooled connection is rarely stale


# -- errors ---------------------------------------------------------------------------------


def unavailable(detail: str) -> BackendError:
    return BackendError(f"The upstream model server is unavailable ({detail}); retry shortly.", status=503,
                        code="upstream_unavailable")


def timed_out() -> BackendError:
    return BackendError("The upstream model server did not answer in time.", status=504, code="upstream_timeout")


def bad_upstream(detail: str) -> BackendError:
    return BackendError(f"The upstream model server failed: {detail}.", status=502, code="bad_upstream")


class EmptyStream(BackendError):
    """The upstream answered a stream request with a stream without a single event."""

    def __init__(self) -> None:
        super().__init__("The upstream model server sent an empty response.", status=502, code="bad_upstream")


def map_transport_error(exc: HTTPClientError) -> BackendError:
    """Transport failures → the gateway's errors (503 unreachable, 504 timeout, 502 broken)."""
    if isinstance(exc, Timeout):
        return timed_out()
    if isinstance(exc, ConnectFailed):
        return unavailable("connection refused")
    if isinstance(exc, ConnectionBroken):
        return bad_upstream("the connection broke")
    return bad_upstream(type(exc).__name__)


def error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, code, param) from an OpenAI, vLLM or FastAPI style error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    err = data.get("error", data)
    if isinstance(err, str):
        return err[:_MAX_MESSAGE], None, None
    if not isinstance(err, dict):
        return None, None, None
    message = err.get("message")
    if message is None and "detail" in err:  # FastAPI
        detail = err["detail"]
        message = detail if isinstance(detail, str) else "; ".join(
            str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in (detail if isinstance(detail, list) else [detail])
        )
    code, param = err.get("code"), err.get("param")
    return (
        str(message)[:_MAX_MESSAGE] if message else None,
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )


def map_status_error(status: int, body: bytes) -> BackendError:
    """An upstream HTTP error → the error the client sees."""
    message, code, param = error_fields(body)
    if status in (401, 403):
        return bad_upstream("it rejected the gateway's credentials (check UNLEARN_UPSTREAM_API_KEY)")
    if status == 404:
        return bad_upstream("it does not serve this route or model")
    if status in (408, 504):
        return timed_out()
    if status == 429:
        return BackendError(message or "The upstream model server is at capacity; retry shortly.", status=429,
                            code="rate_limit_exceeded")
    if status == 503:
        return unavailable("HTTP 503")
    if 400 <= status < 500:
        return BackendError(message or f"The upstream model server rejected the request (HTTP {status}).",
                            status=400 if status == 422 else status, code=code or "invalid_request", param=param)
    return bad_upstream(f"HTTP {status}")


# -- the session ------------------------------------------------------------------------------


class UpstreamHTTP:
    """A connection pool to one base URL. `timeout` bounds each wait for the upstream's next bytes
    (and for a free connection), `connect_timeout` the TCP connect; there is no total, streams
    may be long. A pooled connection the upstream had just closed is retried once on a new one."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float, connect_timeout: float,
                 max_connections: int):
        self.base_url = base_url
        self._prefix = urlsplit(base_url).path.rstrip("/")
        self._headers = {"User-Agent": "unlearn-gateway", "Accept": "application/json, text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._pool: ConnectionPool | None = None

    def open(self) -> None:
        self._pool = ConnectionPool(self.base_url, max_connections=self._max_connections,
                                    connect_timeout=self.connect_timeout, read_timeout=self.timeout,
                                    keepalive_seconds=_KEEPALIVE_SECONDS)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def post(self, path: str, body: dict) -> AsyncIterator[Response]:
        """POST `body` as JSON; yields the response with its body unread. Leaving the block early
        closes the connection (the upstream stops generating); a fully read body is pooled."""
        assert self._pool is not None, "UpstreamHTTP.open() first"
        try:
            response = await self._pool.request("POST", self._prefix + path, orjson.dumps(body), self._json_headers)
        except HTTPClientError as exc:
            raise map_transport_error(exc) from None
        try:
            yield response
        finally:
            response.release()

    async def get(self, path: str, timeout: float | None = None) -> tuple[int, bytes]:
        """GET → (status, body: whole on success, up to `MAX_ERROR_BODY` on an error), errors mapped."""
        assert self._pool is not None, "UpstreamHTTP.open() first"
        cap = min(timeout, self.timeout) if timeout is not None else self.timeout
        try:
            response = await self._pool.request("GET", self._prefix + path, None, self._headers, timeout=cap)
            try:
                body = await response.read(MAX_ERROR_BODY if response.status >= 400 else None)
            finally:
                response.release()
        except HTTPClientError as exc:
            raise map_transport_error(exc) from None
        return response.status, body


# -- bodies -------------------------------------------------------------------------------------


async def event_batches(response: Response) -> AsyncIterator[list[Any]]:
    """Decoded JSON payloads of an SSE stream up to `[DONE]`, a list per network read.

    Events that arrived together are handed over together, so the consumer can gate and
    forward them as one delta instead of paying per-event costs for text the client would
    get in the same instant anyway (what vLLM's `--stream-interval` does at the source).
    A plain JSON body counts as one event. Parsed on bytes (no text decoding of whole
    chunks, no per-line strings for what is not a `data:` field), and the body is read to
    its end after `[DONE]` so the keep-alive connection goes back to the pool instead of
    being closed.
    """
    if "text/event-stream" not in response.headers.get("content-type", ""):
        raw = await response.read()  # a server that ignored stream:true
        try:
            yield [orjson.loads(raw)]
        except orjson.JSONDecodeError:
            raise bad_upstream("malformed response (neither SSE nor JSON)") from None
        return
    buffer = b""
    stream = response.iter_chunks()
    async for part in stream:
        payloads, buffer = _split_events(buffer + part if buffer else part)
        batch: list[Any] = []
        for payload in payloads:
            if payload.strip() == b"[DONE]":
                if batch:
                    yield batch
                await _drain(stream)
                return
            try:
                batch.append(_event_json(payload))
            except BackendError:
                if batch:  # the events before the malformed one go out first
                    yield batch
                raise
        if batch:
            yield batch
    last = _data_of(buffer)  # a last event without its blank line
    if last is not None and last.strip() != b"[DONE]":
        yield [_event_json(last)]


def _split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The `data` payloads of the complete events in `buffer`, and the incomplete rest.

    Events end at a blank line. The usual event is a single `data: {...}` line and is cut
    out without looking at it line by line; anything else (several `data` lines, comments
    such as `: ping`, `event:`/`id:` fields, CRLF line ends) takes the general rule.
    """
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")  # a "\r" split from its "\n" stays in the rest
    blocks = buffer.split(b"\n\n")
    rest = blocks.pop()
    payloads: list[bytes] = []
    for block in blocks:
        if block.startswith(b"data: ") and b"\n" not in block:
            payloads.append(block[6:])
        elif (data := _data_of(block)) is not None:
            payloads.append(data)
    return payloads, rest


def _data_of(block: bytes) -> bytes | None:
    """The joined `data` fields of one event block (None when it has none)."""
    data = [line[6:] if line.startswith(b"data: ") else line[5:]
            for line in block.rstrip(b"\r").split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


def _event_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise bad_upstream("malformed response (an SSE event is not JSON)") from None


async def _drain(stream: AsyncIterator[bytes], limit: int = MAX_ERROR_BODY) -> None:
    """Read what follows `[DONE]` (normally nothing) so the connection can be reused; give up past `limit`."""
    seen = 0
    async for part in stream:
        seen += len(part)
        if seen > limit:
            return
