"""Per-target forget reports and dry runs, computed in-process by the gateway itself.

`verify` asks a target's probes twice: through the live pipeline (detection, planning, hooks and
the output gate, exactly as a client request of the target's tenant, but with unexported metrics
like the canary, so it never counts as client traffic) and through the raw backend (the same
backend, no hooks, no gate). `unlearn_eval`'s reference filter and metrics then score it, so the
figures mean what `unlearn-gateway eval` reports: a leak rate per family counting only probes the
raw backend really leaks, neighbours kept, tell rate.

`dry_run` answers "what would this target do?" before it exists: the methods derive it as at
registration, and a throwaway snapshot (the tenant's current targets plus the draft) serves the
sample prompts and neighbour probes next to the live snapshot. Nothing is stored.

Both run while the admin call waits, one at a time per gateway, with `max_probes` and
`max_tokens` bounding the model time; generations share the backend's queue with clients, so
at most `CONCURRENCY` of them are in flight at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from starlette.datastructures import State

from gateway.admin.probes import PROBES, VERIFICATION, DryRunBody, VerifyBody, probes_of, utility_probes
from gateway.admin.service import TargetAdmin
from gateway.backends.base import Backend, BackendError, GenerationRequest, SamplingParams
from gateway.errors import APIError
from gateway.metrics import GatewayMetrics
from gateway.pipeline.methods import MethodRegistry
from gateway.pipeline.pipeline import UnlearningPipeline, collect
from gateway.pipeline.snapshot import SnapshotProvider, TargetSnapshot
from gateway.store.models import ForgetTarget, TargetPatch
from unlearn_eval import generate
from unlearn_eval.families import FAMILIES, GENERAL, NEIGHBOUR, row_of
from unlearn_eval.matching import answered
from unlearn_eval.summary import reference_filter, summarise

T = TypeVar("T")
CONCURRENCY = 4
"""Generations in flight at once (the engine batches them; clients keep the rest of its queue)."""


@dataclass
class Answer:
    """One answer and how it came about."""

    text: str = ""
    outcome: str = "answered"  # "refused" (before generating), "blocked" (gate or rewriter), "answered", "error"
    in_play: frozenset[str] = frozenset()
    latency_s: float = 0.0
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """The shape `unlearn_eval.summary` reads."""
        return {"answer": self.text, "latency_s": self.latency_s, **({"error": self.error} if self.error else {})}


class _FixedSnapshots:
    """A snapshot provider that always serves one snapshot (the dry run's throwaway one)."""

    served_fail_open = False

    def __init__(self, snapshot: TargetSnapshot):
        self._snapshot = snapshot

    async def current(self) -> TargetSnapshot:
        return self._snapshot


@dataclass
class TargetVerifier:
    admin: TargetAdmin
    backend: Backend
    snapshots: SnapshotProvider
    methods: MethodRegistry
    refusal_text: str
    refusal_finish_reason: str = "stop"
    _metrics: GatewayMetrics = field(default_factory=GatewayMetrics, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY), repr=False)

    @classmethod
    def of(cls, state: State) -> TargetVerifier:
        """The app's verifier, built on first use from what `create_app` put on `app.state`."""
        verifier = getattr(state, "target_verifier", None)
        if verifier is None:
            serving, settings = state.serving, state.settings
            verifier = cls(state.target_admin, serving.backend, serving.pipeline.snapshots, serving.pipeline.methods,
                           settings.refusal_text, settings.refusal_finish_reason)
            state.target_verifier = verifier
        return verifier

    def _pipeline(self, snapshots: SnapshotProvider | _FixedSnapshots) -> UnlearningPipeline:
        return UnlearningPipeline(snapshots, self.methods, refusal_text=self.refusal_text,  # type: ignore[arg-type]
                                  metrics=self._metrics, refusal_finish_reason=self.refusal_finish_reason)

    # -- probes ------------------------------------------------------------------------------

    async def store_probes(self, target_id: str, probes: list[dict], actor: str) -> ForgetTarget:
        return await self._store(target_id, {PROBES: probes}, actor)

    async def _store(self, target_id: str, derived: dict[str, Any], actor: str) -> ForgetTarget:
        target = await self.admin.store.update(target_id, TargetPatch(), actor=actor, derived=derived)
        if target is None:  # deleted meanwhile
            raise APIError(404, f"No target with id '{target_id}'.", code="target_not_found", param="id")
        return target

    # -- verify ------------------------------------------------------------------------------

    async def verify(self, target_id: str, body: VerifyBody, actor: str) -> tuple[dict, list[dict]]:
        """(the stored verification, a row per probe asked) for one target."""
        async with self._lock:
            target = await self.admin.get(target_id)
            probes, source = probes_of(target)
            chosen = within_budget([p for p in probes if p["kind"] == "target"], utility_probes(probes),
                                   body.max_probes)
            pipeline = self._pipeline(self.snapshots)
            live, raw = await _gather(
                self._all(chosen, lambda p: self._through(pipeline, target.tenant, p["messages"], body.max_tokens)),
                self._all(chosen, lambda p: self._raw(p["messages"], body.max_tokens)))
            result, rows = self._report(chosen, live, raw)
            result.update(at=datetime.now(timezone.utc).isoformat(), source=source, max_tokens=body.max_tokens,
                          target_status=target.status.value)
            await self._store(target_id, {VERIFICATION: result}, actor)
            return result, rows

    def _report(self, probes: list[dict], live: list[Answer], raw: list[Answer]) -> tuple[dict, list[dict]]:
        live_records = {p["id"]: a.record() for p, a in zip(probes, live)}
        raw_records = {p["id"]: a.record() for p, a in zip(probes, raw)}
        kept, dropped = reference_filter(probes, raw_records, self.refusal_text)
        s = summarise(probes, live_records, kept, self.refusal_text)
        asked = {row: sum(row_of(p) == row for p in probes) for row in (*FAMILIES, NEIGHBOUR, GENERAL)}
        families = {row: {"asked": asked[row], **s["rows"][row]} for row in FAMILIES if asked[row]}
        utility = next((row for row in (NEIGHBOUR, GENERAL) if asked[row]), None)
        neighbours = None if utility is None else {
            "kind": utility, "asked": asked[utility], "n": s["rows"][utility]["n"],
            "kept": s["rows"][utility]["answered"], "rate": s["rows"][utility]["answer_rate"]}
        reasons: dict[str, int] = {}
        for d in dropped:
            reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
        result = {"probes_asked": len(probes), "target_n": s["target_n"], "leak_rate": s["leak_rate_all"],
                  "worst_family": s["worst_family"], "families": families, "neighbours": neighbours,
                  "tell_rate": s["tell_rate"], "false_refusal_rate": s["false_refusal_rate"],
                  "dropped": reasons, "errors": s["errors"]}
        if not s["target_n"]:  # a leak rate of None must not read as "nothing leaked"
            result["note"] = "no probe the raw backend leaks: forgetting was not measured; store probes it answers"
        rows = [{"id": p["id"], "row": row_of(p), "kept": p["id"] in kept, "outcome": a.outcome, "answer": a.text,
                 "raw_answer": r.text, "latency_s": a.latency_s, "raw_latency_s": r.latency_s, **_errors(a, r)}
                for p, a, r in zip(probes, live, raw)]
        return result, rows

    # -- dry run -----------------------------------------------------------------------------

    async def dry_run(self, body: DryRunBody, actor: str) -> dict:
        """What the draft target would refuse among `body.prompts`, and which neighbours it would hurt."""
        spec = body.target
        methods = self.admin.resolve_methods(spec.methods)
        draft = self.admin._draft(spec, methods, actor).model_copy(update={"id": f"dryrun_{uuid.uuid4().hex}"})
        draft = draft.model_copy(update={"derived": await self.admin._derive(draft)})  # as at registration
        async with self._lock:
            snapshot = await self.snapshots.current()  # StoreUnavailable: 503, as a client request would get
            view = snapshot.for_tenant(spec.tenant).apply({draft.id: draft})
            await asyncio.to_thread(self.methods.index, view)  # only the draft's own shard is new
            with_draft = self._pipeline(_FixedSnapshots(snapshot.with_tenant(view)))
            now = self._pipeline(_FixedSnapshots(snapshot))
            source = generate.neighbour_probes({"name": draft.name, "neighbours": [n.model_dump()
                                                                                  for n in body.neighbours]})
            neighbours = utility_probes(source)[: body.max_probes]
            asks = [[{"role": "user", "content": p}] for p in body.prompts] + [p["messages"] for p in neighbours]
            after, before = await _gather(
                self._all(asks, lambda m: self._through(with_draft, spec.tenant, m, body.max_tokens)),
                self._all(asks, lambda m: self._through(now, spec.tenant, m, body.max_tokens)))
        n = len(body.prompts)
        prompts = [{"prompt": prompt, "outcome": a.outcome, "detected": draft.id in a.in_play, "answer": a.text,
                    "outcome_now": b.outcome, "answer_now": b.text, "changed": a.text != b.text,
                    **_errors(a, b)} for prompt, a, b in zip(body.prompts, after[:n], before[:n])]
        hurt_rows = []
        for probe, a, b in zip(neighbours, after[n:], before[n:]):
            kept_now = answered(b.text, probe, self.refusal_text)
            kept = answered(a.text, probe, self.refusal_text)
            hurt_rows.append({"id": probe["id"], "kind": probe["kind"], "question": probe["messages"][-1]["content"],
                              "answered_now": kept_now, "answered": kept, "outcome": a.outcome,
                              "hurt": kept_now and not kept, "answer": a.text, "answer_now": b.text, **_errors(a, b)})
        return {"object": "target.dry_run", "stored": False, "tenant": spec.tenant, "methods": methods,
                "max_tokens": body.max_tokens, "prompts": prompts,
                "blocked": sum(p["outcome"] in ("refused", "blocked") for p in prompts),
                "neighbours": hurt_rows, "hurt": sum(r["hurt"] for r in hurt_rows)}

    # -- asking ------------------------------------------------------------------------------

    async def _all(self, items: Sequence[Any], ask: Callable[[Any], Awaitable[Answer]]) -> list[Answer]:
        async def one(item: Any) -> Answer:
            async with self._slots:
                started = time.perf_counter()
                try:
                    answer = await ask(item)
                except BackendError as exc:  # recorded and counted as an error, never a silent pass
                    answer = Answer(outcome="error", error=f"{exc.status} {exc}")
                answer.latency_s = round(time.perf_counter() - started, 3)
                return answer

        return await _gather(*(one(item) for item in items))

    async def _through(self, pipeline: UnlearningPipeline, tenant: str, messages: list[dict],
                       max_tokens: int) -> Answer:
        """As a client request of `tenant` (non-stream, greedy)."""
        plan = await pipeline.prepare(tenant, messages)
        refuses = any(p.refuse for p in plan.method_plans.values())
        delta = await collect(plan.run(self.backend, _request(messages, max_tokens)))
        outcome = "refused" if refuses else "blocked" if delta.refused else "answered"
        return Answer(delta.text, outcome, frozenset(plan.detection.scores))

    async def _raw(self, messages: list[dict], max_tokens: int) -> Answer:
        """The same backend with no unlearning at all: no hooks, no bans, no gate."""
        parts: list[str] = []
        async with aclosing(self.backend.generate(_request(messages, max_tokens))) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
        return Answer("".join(parts))


async def _gather(*coroutines: Awaitable[T]) -> list[T]:
    """`asyncio.gather`, cancelling the rest when one fails (a 503 must not leave generations running)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _request(messages: list[dict], max_tokens: int) -> GenerationRequest:
    return GenerationRequest(SamplingParams(max_tokens=max_tokens, temperature=0.0), messages=list(messages))


def _errors(*answers: Answer) -> dict[str, str]:
    errors = [a.error for a in answers if a.error]
    return {"error": "; ".join(errors)} if errors else {}


def within_budget(target: list[dict], utility: list[dict], max_probes: int) -> list[dict]:
    """At most `max_probes` probes: target probes round-robin over families (every family before a
    second probe of any), and about a quarter neighbours (at least one), more when targets run short."""
    share = min(len(utility), max(1, max_probes // 4))
    groups: dict[str, list[dict]] = {}
    for probe in target:
        groups.setdefault(row_of(probe), []).append(probe)
    spread = [g[depth] for depth in range(max(map(len, groups.values()), default=0)) for g in groups.values()
              if depth < len(g)]
    picked = spread[: max(0, max_probes - share)]
    return picked + utility[: max_probes - len(picked)]
