"""Application factory: wires backend, store, pipeline and routes into one FastAPI app.

Everything an app needs lives on `app.state`, built here; there are no module
globals, so tests can run several independent gateways in one process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from starlette.middleware import Middleware
from starlette.responses import Response

from gateway.admin.api_router import router as admin_router
from gateway.admin.canary_router import router as canary_router
from gateway.admin.verify_router import router as verify_router
from gateway.admin.service import TargetAdmin
from gateway.auth import AdminAuth, ClientAuth, MetricsAuth
from gateway.backends.base import Backend
from gateway.canary import Canary, Probe
from gateway.errors import install_error_handlers
from gateway.fast_routes import GatewayApp
from gateway.metrics import GatewayMetrics
from gateway.middleware import BodyLimit, RequestMetrics
from gateway.openai.api_router import chat_completions, completions
from gateway.openai.api_router import router as openai_router
from gateway.openai.openapi import install_openapi
from gateway.openai.serving import OpenAIServing
from gateway.pipeline.methods import MethodRegistry, UnlearningMethod
from gateway.pipeline.pipeline import UnlearningPipeline
from gateway.pipeline.snapshot import SnapshotProvider
from gateway.settings import Settings
from gateway.store import StoreUnavailable, TargetStore, open_store
from gateway.store.models import ForgetTarget
from guards.gate_method import OutputGateMethod

log = logging.getLogger("gateway")


def build_backend(settings: Settings, metrics: GatewayMetrics | None = None) -> Backend:
    if settings.backend == "local":
        from gateway.backends.local import LocalEngine

        return LocalEngine(settings.model, settings.cache_dir, served_model_name=settings.served_model_name,
                           max_num_seqs=settings.max_num_seqs, max_queue=settings.max_queue,
                           threads=settings.threads)
    if settings.backend == "openai":
        from gateway.backends.openai_upstream import OpenAIUpstream

        return OpenAIUpstream.from_settings(settings, metrics=metrics)
    raise ValueError(f"backend {settings.backend!r} is not available in this build")


def build_methods(settings: Settings, backend: Backend, *,
                  metrics: GatewayMetrics | None = None) -> MethodRegistry:
    """The plug-ins, in pipeline order. The output gate is the always-on floor."""
    methods: list[UnlearningMethod] = [OutputGateMethod()]
    if settings.guard:
        from guards.guard_method import GuardConfig, GuardMethod
        from guards.semantic import Embedder

        config = GuardConfig(detect_threshold=settings.guard_detect_threshold,
                             sentence_threshold=settings.guard_sentence_threshold,
                             mode=settings.guard_mode, semantic=settings.guard_semantic,
                             refuse_named=settings.guard_refuse_named)
        embedder = (Embedder.bundled(runtime=settings.guard_semantic_runtime, cache_dir=settings.cache_dir)
                    if settings.guard_semantic else None)
        methods.append(GuardMethod(config, embedder, lambda: backend.tokenizer))
    if settings.alu:
        from agents.alu_method import AluConfig, AluMethod

        alu = AluConfig(k=settings.alu_k, j=settings.alu_j, tau=settings.alu_tau, top_n=settings.alu_top_n,
                        concurrency=1 if settings.backend == "local" else settings.alu_k)
        methods.append(AluMethod(alu, backend, metrics=metrics))
    if settings.uld:
        from uld.uld_method import UldMethod

        methods.append(UldMethod.from_settings(settings, backend, metrics=metrics))
    return MethodRegistry(methods)


def build_canary(settings: Settings, backend: Backend, snapshots: SnapshotProvider, methods: MethodRegistry,
                 metrics: GatewayMetrics) -> Canary:
    """The leakage canary, probing with the probes stored with each target (`POST .../probes`),
    else the evaluation's probe generator, and the evaluation's leak matching."""
    def probes(target: ForgetTarget) -> list[Probe]:
        from unlearn_eval.generate import target_probes

        stored = target.derived.get("probes")
        if isinstance(stored, list) and any(p.get("kind", "target") == "target" for p in stored):
            candidates = [p for p in stored if p.get("kind", "target") == "target"]
        else:
            candidates, _skipped = target_probes(target.model_dump(include={
                "name", "aliases", "description", "facts", "documents"}))
        return [Probe(p["family"], p["messages"], p["leak_terms"]) for p in candidates if p.get("leak_terms")]

    def find_leaks(text: str, terms: Sequence[str]) -> list[str]:
        from unlearn_eval.matching import find_terms

        return find_terms(text, terms)

    return Canary(backend, snapshots, methods, metrics, probes=probes, find_leaks=find_leaks,
                  refusal_text=settings.refusal_text, interval=settings.canary_interval, budget=settings.canary_budget,
                  max_tokens=settings.canary_max_tokens)


def create_app(settings: Settings, *, backend: Backend | None = None, store: TargetStore | None = None) -> FastAPI:
    metrics = GatewayMetrics(target_ids=settings.metrics_target_ids)
    owns_backend, owns_store = backend is None, store is None  # injected parts belong to the caller
    backend = backend or build_backend(settings, metrics)
    store = store or open_store(settings.store, base_dir=Path.cwd())
    methods = build_methods(settings, backend, metrics=metrics)
    snapshots = SnapshotProvider(store, fail_open=settings.fail_open, indexer=methods.index, metrics=metrics)
    pipeline = UnlearningPipeline(snapshots, methods, refusal_text=settings.refusal_text, metrics=metrics,
                                  refusal_finish_reason=settings.refusal_finish_reason)
    metrics.initialise(tenants={"default", *settings.tenant_by_key().values()}, methods=[m.name for m in methods])
    metrics.live.watch(engine=backend, snapshots=snapshots, job_methods=[m.name for m in methods])
    canary = build_canary(settings, backend, snapshots, methods, metrics)
    admin_auth = AdminAuth(settings.admin_token.get_secret_value() if settings.admin_token else None,
                           insecure=settings.insecure_admin)
    metrics_auth = MetricsAuth(settings.metrics_token.get_secret_value() if settings.metrics_token else None,
                               clients_authenticate=bool(settings.tenant_by_key()))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.fail_open:
            log.warning("FAIL-OPEN MODE: if the target store is unreadable, answers are served without "
                        "the forget check. Do not use this in production.")
        if not admin_auth.enabled:
            log.error("UNLEARN_ADMIN_TOKEN is not set: the admin API is disabled (use --insecure-admin "
                      "for a local sandbox only)")
        elif settings.insecure_admin and not settings.admin_token:
            log.warning("INSECURE ADMIN: the admin API accepts unauthenticated calls")
        if metrics_auth.mode == "off":
            log.error("client API keys are set and UNLEARN_METRICS_TOKEN is not: /metrics is disabled (403)")
        if owns_backend:
            await backend.start()
        await methods.warm_up()
        # Targets load and index in the background: /healthz answers meanwhile, /readyz says 503.
        indexing = asyncio.get_running_loop().create_task(snapshots.warm())
        await methods.start(store, snapshots)  # background work, e.g. ULD training jobs
        canary.start()
        # Everything loaded so far (torch, transformers, tokenizers, models) lives as long as the
        # process: keep it out of the cyclic GC, whose full passes over it took ~40 % of a loaded
        # proxy's time (measured with gc.callbacks under bench/bench_proxy.py's load).
        gc.freeze()
        # Requests allocate many short-lived containers: collect the young generation every 10k
        # allocations instead of 700, so far fewer survive long enough to be traced again and again.
        gc.set_threshold(10_000, 10, 10)
        app.state.started_at = time.time()
        try:
            yield
        finally:
            indexing.cancel()
            await snapshots.close()
            await canary.stop()
            await methods.stop()
            if owns_backend:
                await backend.close()
            if owns_store:
                await store.close()

    # FastAPI's native OpenTelemetry hooks look up the tracer provider (an environment read) on
    # every request, ~3 % of the proxy path; the gateway exports its own Prometheus metrics.
    no_otel = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    middleware = [  # outermost first; the directly served routes get the same stack
        Middleware(RequestMetrics, metrics=metrics),
        Middleware(BodyLimit, max_bytes=settings.max_body_bytes, admin_max_bytes=settings.max_admin_body_bytes),
    ]
    app = GatewayApp(title="unlearn-gateway", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry=no_otel,
                     middleware=middleware)
    app.state.settings = settings
    app.state.started_at = None
    app.state.metrics = metrics
    app.state.admin_auth = admin_auth
    app.state.target_admin = TargetAdmin(store, methods)
    app.state.serving = OpenAIServing(backend, pipeline, ClientAuth(settings.tenant_by_key()), settings, metrics)
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(openai_router)
    app.include_router(admin_router)
    app.include_router(canary_router)
    app.include_router(verify_router)
    app.state.canary = canary
    app.serve_directly("POST", "/v1/chat/completions", chat_completions)
    app.serve_directly("POST", "/v1/completions", completions)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        checks = {"model": backend.ready, "store": True, "targets": snapshots.ready}
        try:
            await store.ping()
        except StoreUnavailable:
            checks["store"] = False
        ok = all(checks.values())
        return Response(orjson.dumps({"status": "ready" if ok else "not ready", "checks": checks}),
                        status_code=200 if ok else 503, media_type="application/json")

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        metrics_auth.check(request)
        snapshot = snapshots.loaded
        if snapshot is not None:
            metrics.targets_active.set(snapshot.active_count)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def create_app_from_env() -> FastAPI:
    """The app of one server process when `--workers` starts several (settings from `UNLEARN_*`)."""
    settings = Settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)
