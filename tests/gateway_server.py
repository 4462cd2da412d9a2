"""Run a real gateway (uvicorn, real sockets) in a background thread for end-to-end tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import uvicorn

from gateway.app import create_app
from gateway.backends.base import Backend
from gateway.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayServer:
    """A gateway on 127.0.0.1:<free port>; the shared engine is injected so it loads once per run."""

    def __init__(self, settings: Settings, backend: Backend | None = None):
        self.port = free_port()
        self.app = create_app(settings, backend=backend)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def start(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._server.started:
                return self
            if not self._thread.is_alive():
                raise RuntimeError("gateway thread exited during start-up")
            time.sleep(0.02)
        raise RuntimeError("gateway did not start within 60 s")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
