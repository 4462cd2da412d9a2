"""Pure-ASGI middleware: request body limits and request metrics, cheap enough for the hot path."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError, exception_response
from gateway.metrics import GatewayMetrics


class BodyLimit:
    """413 for bodies over the limit, whether announced by Content-Length or streamed chunked."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, admin_max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.admin_max_bytes = admin_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.admin_max_bytes if scope["path"].startswith("/admin/") else self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await exception_response(BodyTooLarge(limit))(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge as exc:  # raised through handlers that did not turn it into its 413
            await exception_response(exc)(scope, receive, send)


class BodyTooLarge(APIError):
    def __init__(self, limit: int):
        super().__init__(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")


REQUEST_ID = contextvars.ContextVar("request_id", default="")
"""The current request's `x-request-id` (the client's when it sent a sane one, else a fresh one)."""
_SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def _prefix_request_id(factory: Any) -> Any:
    """Log records made while a request is handled start with its id, so logs and the client's
    `x-request-id` can be matched; ids are checked against `_SANE_ID`, so they hold no `%`."""
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        request_id = REQUEST_ID.get()
        if request_id and isinstance(record.msg, str):
            record.msg = f"[request_id={request_id}] {record.msg}"
        return record
    make.prefixes_request_id = True  # type: ignore[attr-defined]
    return make


if not getattr(logging.getLogRecordFactory(), "prefixes_request_id", False):
    logging.setLogRecordFactory(_prefix_request_id(logging.getLogRecordFactory()))


class RequestMetrics:
    """Counts requests by route template and status; times them to the first response byte; gives
    every response an `x-request-id` header and every log line of the request that id."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, ...], Any] = {}  # labelled series, looked up once each

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        if not _SANE_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex.encode()
        token = REQUEST_ID.set(request_id.decode())

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
                self._child(self.metrics.latency, _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            REQUEST_ID.reset(token)
            self._child(self.metrics.requests, _route(scope), scope["method"], str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
