"""Leakage canary: a background prober that asks about every active target through the full pipeline.

Dashboards built on client traffic only see leaks that clients happened to provoke. The canary
provokes them on purpose: each run sends up to `budget` probes (rotating over the active
targets, so every target is covered across runs) through detection, planning, decoding and the
output gate exactly as a client request, and records for each probe whether the backend's draft
contained one of the probe's leak terms (*before the gate*: the methods let it through) and
whether the answer a client would have received did (*to the client*: a real leak, alerted on).

Probes and leak matching are injected (`ProbeSource`, `LeakFinder`; app.py wires the evaluation's
probe generator), so this module depends on no plug-in. Canary requests use their own pipeline
with unexported metrics: they never count as client answers in the leakage rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.backends.base import Backend, GenerationChunk, GenerationRequest, SamplingParams
from gateway.metrics import GatewayMetrics
from gateway.pipeline.methods import MethodRegistry
from gateway.pipeline.pipeline import UnlearningPipeline, collect
from gateway.pipeline.snapshot import SnapshotProvider
from gateway.store.base import StoreUnavailable
from gateway.store.models import ForgetTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    family: str
    messages: list[dict[str, str]]
    leak_terms: list[str]


ProbeSource = Callable[[ForgetTarget], Sequence[Probe]]
LeakFinder = Callable[[str, Sequence[str]], Sequence[str]]
"""(text, leak terms) -> the terms found in the text."""


@dataclass
class TargetResult:
    id: str
    tenant: str
    probes: int = 0
    leaked_before_gate: int = 0
    leaked_to_client: int = 0
    families: list[str] = field(default_factory=list)
    families_leaked_to_client: list[str] = field(default_factory=list)


@dataclass
class CanaryReport:
    started_at: float
    finished_at: float = 0.0
    probes: int = 0
    leaked_before_gate: int = 0
    leaked_to_client: int = 0
    errors: int = 0
    targets: list[TargetResult] = field(default_factory=list)


class _Recording:
    """The backend, recording the draft it wrote (what reached the output gate)."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.parts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        async with aclosing(self._backend.generate(request)) as chunks:
            async for chunk in chunks:
                self.parts.append(chunk.text)
                yield chunk


class Canary:
    def __init__(self, backend: Backend, snapshots: SnapshotProvider, methods: MethodRegistry, metrics: GatewayMetrics,
                 *, probes: ProbeSource, find_leaks: LeakFinder, refusal_text: str, interval: float, budget: int,
                 max_tokens: int):
        self._backend = backend
        self._snapshots = snapshots
        self._metrics = metrics
        self._pipeline = UnlearningPipeline(snapshots, methods, refusal_text=refusal_text, metrics=GatewayMetrics())
        self._probes = probes
        self._find_leaks = find_leaks
        self.interval = interval
        self.budget = budget
        self.max_tokens = max_tokens
        self.last: CanaryReport | None = None
        self._offset = 0
        self._runs = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except StoreUnavailable as exc:
                log.warning("canary skipped: target store unavailable (%s)", exc)
            except Exception:
                log.exception("canary run failed")

    def report(self) -> dict[str, Any]:
        """The last run, for `GET /admin/v1/canary` (admins only: it names target ids)."""
        return {"interval_seconds": self.interval, "budget": self.budget,
                "last_run": asdict(self.last) if self.last is not None else None}

    async def run_once(self) -> CanaryReport:
        async with self._lock:  # one run at a time, whether timed or asked for
            snapshot = await self._snapshots.current()
            targets = sorted(snapshot.targets, key=lambda t: t.id)
            report = CanaryReport(started_at=time.time())
            work = self._schedule(targets)
            results: dict[str, TargetResult] = {}
            for target, probe in work:
                result = results.setdefault(target.id, TargetResult(target.id, target.tenant))
                try:
                    before, after = await self._probe(target, probe)
                except Exception as exc:  # a probe's failure is reported, never a silent pass
                    log.warning("canary probe %s of target %s failed: %s", probe.family, target.id, exc)
                    report.errors += 1
                    self._metrics.canary_probes.labels(target.tenant, "error").inc()
                    continue
                result.probes += 1
                result.families.append(probe.family)
                result.leaked_before_gate += before
                result.leaked_to_client += after
                if after:
                    result.families_leaked_to_client.append(probe.family)
                outcome = "leaked_to_client" if after else "caught_by_gate" if before else "clean"
                self._metrics.canary_probes.labels(target.tenant, outcome).inc()
                for method in target.methods:
                    if before:
                        self._metrics.canary_leaks.labels(target.tenant, method, "before_gate").inc()
                    if after:
                        self._metrics.canary_leaks.labels(target.tenant, method, "to_client").inc()
            report.targets = list(results.values())
            report.probes = sum(r.probes for r in report.targets)
            report.leaked_before_gate = sum(r.leaked_before_gate for r in report.targets)
            report.leaked_to_client = sum(r.leaked_to_client for r in report.targets)
            report.finished_at = time.time()
            self._metrics.canary_leaked_to_client.set(report.leaked_to_client)
            self._metrics.canary_last_run.set(report.finished_at)
            self.last = report
            if report.leaked_to_client:
                log.error("CANARY: %d probe answer(s) leaked to the client", report.leaked_to_client)
            return report

    def _schedule(self, targets: list[ForgetTarget]) -> list[tuple[ForgetTarget, Probe]]:
        """Up to `budget` probes, one per target in turn, starting with the target after the last
        run's, and with each target's next probe family: probes are generated for at most `budget`
        targets per run, so a run costs the same with 10 targets or 100,000."""
        if not targets:
            return []
        start = self._offset % len(targets)
        chosen = (targets[start:] + targets[:start])[: self.budget]
        self._offset, self._runs = start + len(chosen), self._runs + 1
        queues = [(t, ps) for t in chosen if (ps := list(self._probes(t)))]
        work: list[tuple[ForgetTarget, Probe]] = []
        for depth in range(max((len(ps) for _, ps in queues), default=0)):
            for target, probes in queues:
                if depth < len(probes) and len(work) < self.budget:
                    work.append((target, probes[(self._runs + depth) % len(probes)]))
        return work

    async def _probe(self, target: ForgetTarget, probe: Probe) -> tuple[bool, bool]:
        plan = await self._pipeline.prepare(target.tenant, probe.messages)
        recording = _Recording(self._backend)
        request = GenerationRequest(SamplingParams(max_tokens=self.max_tokens, temperature=0.0),
                                    messages=probe.messages)
        answer = await collect(plan.run(recording, request))
        before = bool(self._find_leaks("".join(recording.parts), probe.leak_terms))
        after = not answer.refused and bool(self._find_leaks(answer.text, probe.leak_terms))
        return before, after
