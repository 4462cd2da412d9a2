"""`--local`: the embedded engine behind real gateways, one per configuration.

One engine (SmolLM2-135M-Instruct unless `UNLEARN_MODEL` says otherwise) is loaded once and
shared. Each configuration gets a fresh gateway on a free loopback port with its own temporary
SQLite store; the targets are registered through the admin API with the configuration's
``methods`` (configuration ``none`` registers nothing: the raw model behind the gateway, which
is also the embedded reference). Adding a method is one entry in ``CONFIGURATIONS``.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from unlearn_eval.client import Endpoint
from unlearn_eval.targets import admin_headers, register

ADMIN_TOKEN = "eval-admin-token"
PLUGINS = ("guard", "alu", "uld")  # Settings flags of the optional plug-ins; each configuration sets them all


@dataclass(frozen=True)
class Configuration:
    """A column of the report: how the gateway is set up and how the targets are registered."""

    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)  # gateway.settings.Settings overrides
    methods: tuple[str, ...] | None = None  # the targets' `methods` (None: the gateway's default)
    register: bool = True  # False: no target registered at all (the raw model through the gateway)
    wait_for_job: str | None = None  # a method whose per-target job (ULD training) must be ready first


def plugins(*enabled: str) -> dict[str, bool]:
    """Settings overrides turning on exactly `enabled` (so a column measures only its own methods)."""
    return {name: name in enabled for name in PLUGINS}


RAW = "none"
CONFIGURATIONS: dict[str, Configuration] = {
    c.name: c
    for c in (
        Configuration(RAW, "raw model through the gateway, no target registered", plugins(), register=False),
        Configuration("gate", "targets registered, only the always-on name/alias output gate", plugins()),
        Configuration("guard", "targets registered with methods=[guard] (GUARD plug-in, default settings)",
                      plugins("guard"), methods=("guard",)),
        Configuration("alu", "targets registered with methods=[alu] (ALU agent rewrite; many LLM calls per request)",
                      plugins("alu"), methods=("alu",)),
        Configuration("guard+alu", "targets registered with methods=[guard, alu]",
                      plugins("guard", "alu"), methods=("guard", "alu")),
        Configuration("uld", "targets registered with methods=[uld]; probes start once every adapter is trained",
                      plugins("uld"), methods=("uld",), wait_for_job="uld"),
        Configuration("guard+uld", "targets registered with methods=[guard, uld], after ULD training",
                      plugins("guard", "uld"), methods=("guard", "uld"), wait_for_job="uld"),
        Configuration("guard+uld@in_play", "as guard+uld, with UNLEARN_ULD_SCOPE=in_play: only the assistants "
                      "of targets GUARD detects decode", {**plugins("guard", "uld"), "uld_scope": "in_play"},
                      methods=("guard", "uld"), wait_for_job="uld"),
    )
}


class CountingBackend:
    """Wraps the shared engine and counts generation calls (LLM calls per request)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate(self, request):
        with self._lock:
            self.calls += 1
        return self._inner.generate(request)


class GatewayServer:
    """A real gateway (uvicorn, real socket on loopback) in a background thread."""

    def __init__(self, settings: Any, backend: Any):
        import uvicorn

        from gateway.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(create_app(settings, backend=backend), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 300  # MiniLM loads during start-up
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("gateway thread exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start within 300 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


class Engine:
    """The shared embedded engine, loaded on first use (a fully resumed run never loads it)."""

    def __init__(self, threads: int | None):
        self._threads = threads
        self._engine: Any = None

    def get(self) -> Any:
        if self._engine is None:
            from gateway.backends.local import LocalEngine
            from gateway.settings import Settings

            settings = Settings()
            self._engine = LocalEngine(settings.model, settings.cache_dir, max_num_seqs=1, threads=self._threads)
            asyncio.run(self._engine.start())
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            asyncio.run(self._engine.close())
            self._engine = None


def identity(config: Configuration) -> dict:
    """What a configuration's answers depend on besides the probe (the resume key)."""
    from gateway.settings import Settings

    return {"local": config.name, "settings": config.settings, "methods": config.methods,
            "register": config.register, "model": Settings().model}


@contextmanager
def serve(config: Configuration, engine: Engine, targets: list[dict],
          log: Callable[[str], None]) -> Iterator[Endpoint]:
    """A fresh gateway set up as `config` with `targets` registered; yields its endpoint."""
    from gateway.settings import Settings

    with tempfile.TemporaryDirectory(prefix=f"eval-{config.name}-") as tmp:
        settings = Settings(store=f"sqlite:///{Path(tmp) / 'targets.db'}", admin_token=ADMIN_TOKEN,
                            adapter_dir=Path(tmp) / "adapters", **config.settings)
        backend = CountingBackend(engine.get())
        with GatewayServer(settings, backend) as server, httpx.Client(base_url=server.url, timeout=900) as http:
            if config.register:
                ids = register(http, targets, ADMIN_TOKEN, list(config.methods) if config.methods else None)
                if config.wait_for_job:
                    _wait_for_jobs(http, ids, config, log)
            yield Endpoint(name=config.name, base_url=server.url, model=backend.model_ids[0],
                           refusal_text=settings.refusal_text, calls=lambda: backend.calls)


def _wait_for_jobs(http: httpx.Client, ids: list[str], config: Configuration, log: Callable[[str], None],
                   timeout: float = 3600) -> None:
    """Poll the admin API until every target's `config.wait_for_job` job is ready (failed: stop)."""
    started, pending = time.perf_counter(), list(ids)
    while pending:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"[{config.name}] {len(pending)} {config.wait_for_job} jobs not ready after {timeout} s")
        job = http.get(f"/admin/v1/targets/{pending[0]}", headers=admin_headers(ADMIN_TOKEN)).json().get(
            "jobs", {}).get(config.wait_for_job)
        status = (job or {}).get("status")
        if status == "failed":
            raise RuntimeError(f"[{config.name}] {config.wait_for_job} job of {pending[0]} failed: {job.get('error')}")
        if status == "ready":
            pending.pop(0)
            log(f"[{config.name}] {config.wait_for_job} ready for {len(ids) - len(pending)}/{len(ids)} targets "
                f"({time.perf_counter() - started:.0f} s)")
        else:
            time.sleep(1.0)
