"""ULD as a pipeline plug-in, with its training jobs run live by a background worker.

Lifecycle of a target with method `uld` (opt-in: a target gets ULD only when it names it):

1. Admin create/update: `derive()` only *queues* a job, cheaply: it stores
   `derived["uld"] = {"status": "queued", "data_hash": ..., "protected_by": [...]}`. The hash
   covers the training data (name, aliases, description, facts, documents), the generated-data
   version and the hyper-parameters; an update that does not change it keeps the current job
   or adapter. On a backend without logits hooks (an OpenAI upstream) the admin call is refused
   with a 400 instead: ULD can only run inside the decoding loop.
2. Worker (one asyncio task per replica, started in the app lifespan, training in one thread):
   it polls the target snapshot, claims the oldest queued job by writing `status: running`
   with its worker id (then re-reads: when two replicas race, the last writer keeps it and the
   other backs off), trains, saves the adapter under `UNLEARN_ADAPTER_DIR/<target>/<hash>`, and
   writes `ready` (adapter path, trained_at, metrics) or `failed` (error) through
   `store.update(..., derived=...)`, which bumps the store version: every replica sees it on
   its next request. A result is written only if the target still wants that very job (same
   hash, same claim); a stale `running` job (worker gone) is picked up again after
   `uld_job_timeout` seconds; on shutdown the job is put back to `queued`.
3. Every replica hot-loads the adapters of `ready` targets (its worker loop does it when the
   snapshot moves; a request that sees a not-yet-loaded adapter loads it first, off the event
   loop), keyed by adapter path, and drops those no target references any more.
4. Requests: the plan adds one `UldHook` combining every loaded assistant of the caller's
   tenant (scope `all`, the paper's behaviour: the assistants are flat off-topic, so unrelated
   prompts are not changed) or only those of targets detected in the conversation (scope
   `in_play`, cheaper with many targets).

Until a job is `ready` the target is protected by its other methods and the output gate;
`protected_by` in the job status says which. A replica whose backend has no logits hooks never
trains nor loads adapters; if it meets a ready ULD target it fails closed (the pipeline refuses
the tenant's requests: the ULD hook cannot be exported to an upstream) rather than skip ULD.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from gateway.errors import APIError
from gateway.metrics import GatewayMetrics
from gateway.pipeline.methods import Detection, MethodPlan, RequestContext, UnlearningMethod
from gateway.store.base import StoreUnavailable, TargetStore
from gateway.store.models import ForgetTarget, TargetPatch
from uld.decoding import Mode, UldHook
from uld.training import Cancelled, TrainConfig, data_hash, remove_other_adapters, train_target

if TYPE_CHECKING:
    from gateway.backends.base import Backend
    from gateway.pipeline.snapshot import SnapshotProvider
    from gateway.settings import Settings
    from uld.assistant import Assistant, AssistantBase

log = logging.getLogger(__name__)

NAME = "uld"
WORKER_ACTOR = "uld-worker"
FLOOR = "output_gate"
HOOKLESS_MESSAGE = (
    "Method 'uld' needs logits hooks inside the decoding loop (it subtracts a trained assistant's "
    "logits at every token), and the configured backend does not support them (an OpenAI-compatible "
    "upstream only returns text). Use the embedded engine (UNLEARN_BACKEND=local) for ULD targets, or "
    "register this target with other methods."
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class UldConfig:
    alpha: float = 0.75
    filter_r: float = 1e-2
    mode: Mode = "uld"
    scope: Literal["all", "in_play"] = "all"
    adapter_dir: Path = Path("var/adapters")
    train: TrainConfig = field(default_factory=TrainConfig)
    worker: bool = True
    poll_seconds: float = 1.0
    job_timeout: float = 3600.0
    claim_settle: float = 0.3


def config_from_settings(settings: Settings) -> UldConfig:
    return UldConfig(
        alpha=settings.uld_alpha, filter_r=settings.uld_filter_r, mode=settings.uld_mode, scope=settings.uld_scope,
        adapter_dir=settings.adapter_dir, worker=settings.uld_worker, poll_seconds=settings.uld_poll_seconds,
        job_timeout=settings.uld_job_timeout,
        train=TrainConfig(layers=settings.uld_layers, epochs=settings.uld_epochs, lr=settings.uld_lr,
                          retain_weight=settings.uld_retain_weight, lora_r=settings.uld_lora_r,
                          lora_alpha=settings.uld_lora_alpha, batch_size=settings.uld_batch_size,
                          max_examples=settings.uld_max_examples, device=settings.uld_device),
    )


def model_dir_for(settings: Settings, backend: Backend | None = None) -> Path:
    """The served model's HF directory: the backend's own when it has one, else from the settings."""
    from gateway.backends.model_files import resolve_model_dir

    tokenizer = getattr(backend, "tokenizer", None) if backend is not None else None
    path = getattr(tokenizer, "name_or_path", None)
    if path and (Path(path) / "config.json").is_file():
        return Path(path)
    return resolve_model_dir(settings.model, settings.cache_dir)


# -- job status (what lives in target.derived["uld"]) --------------------------------------------


def job_of(target: ForgetTarget) -> dict[str, Any]:
    data = target.derived.get(NAME)
    return data if isinstance(data, dict) else {}


def protected_by(target: ForgetTarget, ready: bool) -> list[str]:
    others = [m for m in target.methods if m != NAME]
    return [*([NAME] if ready else []), *others, FLOOR]


def job_status(status: str, target: ForgetTarget, job_hash: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"status": status, "error": None, "adapter": None, "data_hash": job_hash,
                            "trained_at": None, "metrics": {}, "protected_by": protected_by(target, status == "ready")}
    data.update(extra)
    return data


def is_ready(target: ForgetTarget) -> bool:
    job = job_of(target)
    return NAME in target.methods and job.get("status") == "ready" and bool(job.get("adapter"))


def _age(iso: str | None) -> float:
    if not iso:
        return float("inf")
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return float("inf")


class UldMethod(UnlearningMethod):
    name: ClassVar[str] = NAME
    default: ClassVar[bool] = False  # training costs minutes of CPU per target: only targets that ask for it

    def __init__(self, config: UldConfig, *, model_dir: Callable[[], Path], hooks_supported: Callable[[], bool],
                 metrics: GatewayMetrics | None = None):
        self.config = config
        self.metrics = metrics
        self._model_dir = model_dir
        self._hooks_supported = hooks_supported
        self._base_lock = threading.Lock()
        self._base: AssistantBase | None = None
        self._cache_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._assistants: dict[str, Assistant] = {}
        self._load_failures: dict[str, float] = {}
        # worker
        self.worker_id = f"{uuid.uuid4().hex[:12]}"
        self._store: TargetStore | None = None
        self._snapshots: SnapshotProvider | None = None
        self._task: asyncio.Task | None = None
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings, backend: Backend, *, metrics: GatewayMetrics | None = None) -> UldMethod:
        return cls(config_from_settings(settings), model_dir=lambda: model_dir_for(settings, backend),
                   hooks_supported=lambda: bool(getattr(backend, "supports_logits_hooks", False)), metrics=metrics)

    # -- the assistant base and loaded adapters ------------------------------------------------

    def base(self) -> AssistantBase:
        with self._base_lock:
            if self._base is None:
                from uld.assistant import AssistantBase

                self._base = AssistantBase(self._model_dir(), self.config.train.layers)
            return self._base.load()

    def loaded(self) -> dict[str, Assistant]:
        """Loaded assistants by adapter path (a copy)."""
        with self._cache_lock:
            return dict(self._assistants)

    def _ensure_loaded(self, targets: Iterable[ForgetTarget], *, prune: bool = False) -> None:
        """Load the adapters of ready targets not loaded yet (blocking: call off the event loop)."""
        wanted = {job_of(t)["adapter"]: t for t in targets if t.is_active and is_ready(t)}
        with self._load_lock:  # the worker loop and a request may both see a new adapter: load it once
            self._load(wanted, prune)

    def _load(self, wanted: dict[str, ForgetTarget], prune: bool) -> None:
        for adapter, target in wanted.items():
            with self._cache_lock:
                if adapter in self._assistants or time.monotonic() - self._load_failures.get(adapter, -1e9) < 60:
                    continue
            try:
                assistant = self.base().load_adapter(self.config.adapter_dir / adapter, target_id=target.id,
                                                     adapter=adapter)
            except Exception:
                log.exception("ULD adapter %s of target %s could not be loaded; the target stays protected by %s",
                              adapter, target.id, protected_by(target, ready=False))
                with self._cache_lock:
                    self._load_failures[adapter] = time.monotonic()
                continue
            with self._cache_lock:
                self._assistants[adapter] = assistant
            log.info("ULD adapter %s loaded for target %s", adapter, target.id)
        if prune:
            with self._cache_lock:
                for adapter in [a for a in self._assistants if a not in wanted]:
                    del self._assistants[adapter]
                    log.info("ULD adapter %s unloaded", adapter)

    # -- registration ----------------------------------------------------------------------------

    def derive(self, target: ForgetTarget) -> Mapping[str, Any] | None:
        """Queue a training job (cheap); None when the target does not use ULD or its job is current."""
        if NAME not in target.methods:
            return None
        if not self._hooks_supported():
            raise APIError(400, HOOKLESS_MESSAGE, code="invalid_request", param="methods")
        job_hash = data_hash(target, self.config.train)
        current = job_of(target)
        if current.get("data_hash") == job_hash and current.get("status") in ("queued", "running", "ready"):
            return None  # unchanged data: keep the job or adapter (and never overwrite a worker's newer write)
        return job_status("queued", target, job_hash, queued_at=now_iso())

    # -- requests --------------------------------------------------------------------------------

    def _ready(self, ctx: RequestContext) -> list[ForgetTarget]:
        return ctx.targets.memo("uld:ready", lambda: [t for t in self.targets_for(ctx) if is_ready(t)])

    async def detect(self, ctx: RequestContext) -> Mapping[str, float]:
        """ULD detects nothing; it makes sure the tenant's ready adapters are loaded before planning."""
        ready = self._ready(ctx)
        if ready and self._hooks_supported():
            with self._cache_lock:
                missing = [t for t in ready if job_of(t)["adapter"] not in self._assistants]
            if missing:
                await asyncio.to_thread(self._ensure_loaded, missing)
        return {}

    def plan(self, ctx: RequestContext, detection: Detection) -> MethodPlan | None:
        ready = self._ready(ctx)
        if not ready:
            return None
        if not self._hooks_supported():
            # Trained elsewhere, served here without hooks: fail closed. The pipeline refuses the request
            # (the hook cannot be exported to an upstream) rather than answer without ULD.
            ctx.targets.memo("uld:hookless", lambda: log.error(
                "ULD targets %s are ready but this backend has no logits hooks: their tenant's requests are "
                "refused; serve ULD targets with the embedded engine", [t.id for t in ready]) or True)
            return MethodPlan(hook_factories=[lambda: UldHook([])])
        if self.config.scope == "in_play":
            ready_ids = {t.id for t in ready}
            ready = [t for t in self.in_play(ctx, detection) if t.id in ready_ids]
        with self._cache_lock:
            assistants = [self._assistants[a] for a in (job_of(t)["adapter"] for t in ready) if a in self._assistants]
        if not assistants:
            return None
        cfg = self.config
        return MethodPlan(hook_factories=[
            lambda: UldHook(assistants, alpha=cfg.alpha, filter_r=cfg.filter_r, mode=cfg.mode)])

    # -- the job worker --------------------------------------------------------------------------

    async def start(self, store: TargetStore, snapshots: SnapshotProvider) -> None:
        """Start this replica's loop: hot-load ready adapters, and train queued jobs when enabled."""
        if not self._hooks_supported():
            log.warning("ULD worker not started: the backend has no logits hooks")
            return
        self._store, self._snapshots = store, snapshots
        self._stop.clear()
        self._cancel.clear()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="uld-train")
        self._task = asyncio.create_task(self._loop(), name="uld-worker")

    async def stop(self, timeout: float = 60.0) -> None:
        if self._task is None:
            return
        self._stop.set()
        self._cancel.set()  # a running training stops at its next step and its job is re-queued
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        except Exception:
            log.exception("ULD worker failed while stopping")
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            await asyncio.sleep(min(0.1, end - time.monotonic()))

    async def _loop(self) -> None:
        assert self._snapshots is not None and self._store is not None
        seen_version: int | None = None
        targets: list[ForgetTarget] = []
        store_down = False
        while not self._stop.is_set():
            job: ForgetTarget | None = None
            try:
                version = await self._store.version()  # one cheap read per poll, like a request
                store_down = False
                if version != seen_version:
                    snapshot = await self._snapshots.current()
                    targets, seen_version = snapshot.targets, snapshot.version
                    await asyncio.to_thread(self._ensure_loaded, targets, prune=True)
                if self.config.worker:
                    job = self.next_job(targets)
                    if job is not None:
                        await self._run_job(job)
            except StoreUnavailable as exc:
                if not store_down:  # once per outage: requests report it themselves
                    log.warning("ULD worker: target store unavailable (%s); waiting for it", exc)
                store_down = True
            except Exception:
                log.exception("ULD worker iteration failed")
            if job is None:
                await self._sleep(self.config.poll_seconds)

    def next_job(self, targets: Iterable[ForgetTarget]) -> ForgetTarget | None:
        """The oldest queued job of an active ULD target (or a running one whose worker went silent)."""
        candidates = []
        for target in targets:
            job = job_of(target)
            if not target.is_active or NAME not in target.methods:
                continue
            if job.get("status") == "queued" or (
                    job.get("status") == "running" and _age(job.get("started_at")) > self.config.job_timeout):
                candidates.append((job.get("queued_at") or "", target.id, target))
        return min(candidates)[2] if candidates else None

    def _ours(self, target: ForgetTarget | None, job_hash: str) -> bool:
        job = job_of(target) if target is not None else {}
        return job.get("status") == "running" and job.get("worker") == self.worker_id and job.get("data_hash") == job_hash

    async def _run_job(self, target: ForgetTarget) -> None:
        store = self._store
        assert store is not None
        job_hash = data_hash(target, self.config.train)
        queued_at = job_of(target).get("queued_at")
        claim = job_status("running", target, job_hash, worker=self.worker_id, started_at=now_iso(), queued_at=queued_at)
        if await store.update(target.id, TargetPatch(), actor=WORKER_ACTOR, derived={NAME: claim}) is None:
            return
        await asyncio.sleep(self.config.claim_settle)  # a racing replica's claim lands in between: last one wins
        if not self._ours(await store.get(target.id), job_hash):
            log.info("ULD job of target %s was claimed by another worker", target.id)
            return
        log.info("ULD training target %s (job %s)", target.id, job_hash[:12])
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            adapter, metrics = await loop.run_in_executor(self._executor, self._train, target)
        except Cancelled:
            current = await store.get(target.id)
            if self._ours(current, job_hash):
                await store.update(target.id, TargetPatch(), actor=WORKER_ACTOR,
                                   derived={NAME: job_status("queued", current, job_hash, queued_at=queued_at)})
            return
        except Exception as exc:
            log.exception("ULD training of target %s failed", target.id)
            self._observe_job("failed", started)
            current = await store.get(target.id)
            if self._ours(current, job_hash):
                error = f"{type(exc).__name__}: {exc}"[:500]
                await store.update(target.id, TargetPatch(), actor=WORKER_ACTOR,
                                   derived={NAME: job_status("failed", current, job_hash, error=error)})
            return
        current = await store.get(target.id)
        if not self._ours(current, job_hash):  # deleted, changed or re-claimed meanwhile: this adapter is moot
            log.info("ULD target %s changed during training; discarding adapter %s", target.id, adapter)
            if current is None:
                remove_other_adapters(self.config.adapter_dir, target.id, None)
            elif job_of(current).get("data_hash") != job_hash:  # same hash: another worker may own that folder
                shutil.rmtree(self.config.adapter_dir / adapter, ignore_errors=True)
            return
        self._observe_job("ready", started)
        ready = job_status("ready", current, job_hash, adapter=adapter, trained_at=now_iso(), metrics=metrics)
        await store.update(target.id, TargetPatch(), actor=WORKER_ACTOR, derived={NAME: ready})
        remove_other_adapters(self.config.adapter_dir, target.id, adapter)
        log.info("ULD target %s ready: %s", target.id, metrics)

    def _observe_job(self, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.job_duration.labels(NAME, outcome).observe(time.perf_counter() - started)

    def _train(self, target: ForgetTarget) -> tuple[str, dict[str, Any]]:
        return train_target(self.base(), target, self.config.train, self.config.adapter_dir, cancel=self._cancel)


def with_train_overrides(config: UldConfig, **overrides: Any) -> UldConfig:
    """A copy with some training hyper-parameters replaced (None values are ignored)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, train=replace(config.train, **values)) if values else config
