"""The generation routes as raw ASGI, dispatched before FastAPI's own request stack.

Why: nearly all of a gateway's traffic is `POST /v1/chat/completions` and
`/v1/completions`, and FastAPI's per-request machinery (route scan, endpoint
wrapper, AsyncExitStack, its exception and telemetry middleware) measured about
9 % of a proxied request under `bench/bench_proxy.py`. `GatewayApp` serves those
exact (method, path) pairs itself: the same endpoint functions, the same
middleware (body limit, request metrics) and the same error mapping
(`gateway.errors.exception_response`). Every other request, including other
methods on those paths (405), goes through FastAPI unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import exception_response

Endpoint = Callable[[Request], Awaitable[Response]]


class GatewayApp(FastAPI):
    """FastAPI plus a direct path for the hot routes; see the module docstring."""

    def __init__(self, *, middleware: Sequence[Middleware], **kwargs) -> None:
        super().__init__(middleware=list(middleware), **kwargs)
        self._fast: dict[tuple[str, str], Endpoint] = {}
        self._fast_stack: ASGIApp | None = None

    def serve_directly(self, method: str, path: str, endpoint: Endpoint) -> None:
        """Serve `method path` with `endpoint` (also registered as a FastAPI route) without
        FastAPI's request stack."""
        self._fast[(method, path)] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self._fast:
            if self._fast_stack is None:
                self._fast_stack = self._build_fast_stack()
            scope["app"] = self  # what Request.app reads
            await self._fast_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _build_fast_stack(self) -> ASGIApp:
        """The app's own user middleware (outermost first) around `_dispatch`."""
        app: ASGIApp = self._dispatch
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._fast[(scope["method"], scope["path"])]
        scope["route"] = _Route(scope["path"])  # the metrics' route label
        try:
            response = await endpoint(Request(scope, receive, send))
        except Exception as exc:  # noqa: BLE001  every failure becomes an OpenAI-format error
            response = exception_response(exc)
        await response(scope, receive, send)


class _Route:
    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path
