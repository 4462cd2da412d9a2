"""Responses that stop the work as soon as the client hangs up.

Starlette's `StreamingResponse` watches for a disconnect with an anyio task group
per response (uvicorn announces ASGI 2.3, so the cheaper 2.4 path is not taken).
That is a measurable share of a proxy's per-request cost, so streams here use
`EventStreamResponse`: a plain asyncio task waits on `receive()` and, when the
client goes away, cancels the streaming task; the body iterator is closed, which
closes the upstream connection (the upstream stops generating). Non-stream work
gets the same watcher through `cancel_on_disconnect`. The watcher only starts
once a request has run for `WATCH_AFTER_S`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx and friends: do not buffer the stream
]


WATCH_AFTER_S = 0.05
"""Requests that finish sooner never start a watcher: a timer is far cheaper than a task,
and almost every proxied request to a fast upstream is over by then."""


class _DisconnectWatch:
    """Cancels `task` when the client hangs up, watching from `WATCH_AFTER_S` on."""

    def __init__(self, receive: Receive, task: asyncio.Task):
        self.gone = False
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Task | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self._task.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


class LastEvent(bytes):
    """The stream's final bytes: written together with the end of the body (one write, not two)."""


class EventStreamResponse(Response):
    """A `text/event-stream` body of pre-framed SSE bytes (a `LastEvent` ends it); see the module docstring."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes]):
        self._events = body
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watch = _DisconnectWatch(receive, task)
        try:
            try:
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                async for event in self._events:
                    last = isinstance(event, LastEvent)
                    await send({"type": "http.response.body", "body": event, "more_body": not last})
                    if last:
                        break
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except asyncio.CancelledError:
                if not watch.gone:
                    raise
                task.uncancel()  # the watcher's doing: the client left, nothing failed
            finally:
                watch.stop()  # no await since the last send: it cannot have fired after this
        finally:
            await self._events.aclose()  # type: ignore[attr-defined]  (closes the upstream stream)


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelled (CancelledError) if the client hangs up first (Starlette would not)."""
    task = asyncio.current_task()
    assert task is not None
    watch = _DisconnectWatch(receive, task)
    try:
        return await work
    finally:
        watch.stop()
