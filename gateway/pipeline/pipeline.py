"""The request pipeline: detect → plan → decode (logits hooks) → gate/rewrite.

`UnlearningPipeline.prepare` runs detection and planning for a request and
returns a `RequestPlan`; `RequestPlan.run` then decodes one choice through the
backend with the plan's hooks and passes every piece of output through the
gate (and the rewriters, when a method such as ALU wants the whole draft).
Every serving path (chat, completions, stream or not) goes through `run`, so
there is exactly one place where output can leave.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway.backends.base import (
    Backend,
    BackendError,
    GenerationChunk,
    GenerationRequest,
    LogitsHook,
    TokenLogprob,
    ToolCallDelta,
    count_prompt_tokens,
)
from gateway.backends.sampling import alternatives_shown
from gateway.metrics import GatewayMetrics
from gateway.pipeline.choice_filter import ChoiceFilter
from gateway.pipeline.leakage import AnswerLedger, count_in_play, gate_catcher
from gateway.pipeline.methods import Detection, MethodPlan, MethodRegistry, RequestContext, Rewriter
from gateway.pipeline.snapshot import SnapshotProvider
from gateway.pipeline.tool_gate import ToolCallGate

log = logging.getLogger(__name__)


@dataclass
class ChoiceDelta:
    """Output of one choice that is safe to send."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refused: bool = False
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    """Complete, gated tool calls; only on a choice's last delta (see `ToolCallGate`)."""


@dataclass
class RequestPlan:
    ctx: RequestContext
    detection: Detection
    method_plans: dict[str, MethodPlan]
    refusal_text: str
    metrics: GatewayMetrics
    refusal_finish_reason: str = "stop"
    ledger: AnswerLedger | None = None
    _banned: tuple[tuple[int, ...], ...] | None = field(default=None, init=False, repr=False)
    _shown: int | None = field(default=None, init=False, repr=False)
    """Alternatives per logprob entry the client gets (`alternatives_shown`), set by `run`."""

    def __post_init__(self) -> None:
        if self.ledger is None:
            self.ledger = AnswerLedger(self.metrics, self.ctx.tenant, self.method_plans)

    @property
    def rewriters(self) -> list[Rewriter]:
        return [p.rewriter for p in self.method_plans.values() if p.rewriter is not None]

    @property
    def has_logits_hooks(self) -> bool:
        return any(p.hook_factories for p in self.method_plans.values())

    def logits_hooks(self) -> list[LogitsHook]:
        """Fresh hook objects for one sequence (hooks may carry per-sequence state)."""
        return [make() for p in self.method_plans.values() for make in p.hook_factories]

    def banned_sequences(self) -> tuple[tuple[int, ...], ...]:
        """The hooks' forbidden token sequences, for backends that cannot run Python hooks in-loop.

        A hook exports them through a `banned_sequences()` method or, for GUARD's
        `TrieRestriction` (or its several shard tries, `ShardedRestriction`), its trie's sorted
        `sequences`. A hook that can do neither (a
        method that needs the logits themselves, e.g. ULD) makes this a configuration
        error, never a silent skip. With one exporting hook (the usual case) its own
        tuple is returned as is: the same object for every request of a target
        snapshot, so backends can cache what they derive from it by identity.
        """
        if self._banned is None:  # once per request: its n choices share it
            exported = [_export_bans(name, make()) for name, plan in self.method_plans.items()
                        for make in plan.hook_factories]
            exported = [seqs for seqs in exported if seqs]
            if len(exported) == 1:
                self._banned = exported[0]
            else:
                self._banned = tuple(sorted({seq for seqs in exported for seq in seqs}))
        return self._banned

    def choice_filter(self, request: GenerationRequest | None = None, *, caught: list[str] | None = None) -> ChoiceFilter:
        """The gate stage of one choice; with its `request`, seeded with the prompt's tail (the output
        continues it) and cutting `top_logprobs` to the requested number. A sentence check that
        refuses appends its method to `caught` (leakage metrics)."""
        plans = self.method_plans.values()
        checks = (self.ledger.sentence_checks(caught) if caught is not None
                  else [c for p in plans for c in p.sentence_checks])
        return ChoiceFilter([m for p in plans for m in p.gate_matchers], checks,
                            prompt_tail=prompt_tail(request) if request is not None else "",
                            top_logprobs=self._shown if request is not None else None)

    async def run(self, backend: Backend, request: GenerationRequest) -> AsyncIterator[ChoiceDelta]:
        """Decode one choice and yield only what the gate (and rewriters) let through."""
        refusing = next((name for name, p in self.method_plans.items() if p.refuse), None)
        if refusing is not None:
            self.ledger.refused("plan", refusing)
            yield ChoiceDelta(self.refusal_text, [], self.refusal_finish_reason,
                              count_prompt_tokens(backend.tokenizer, request), 0, refused=True)
            return
        steered: set[str] = set()
        cap = getattr(backend, "logprob_cap", None)  # an upstream's API limit on alternatives
        self._shown = alternatives_shown(request.params.top_logprobs, cap(request) if cap is not None else None)
        if getattr(backend, "supports_logits_hooks", True):
            request.logits_hooks, steered = self.ledger.hooks()
        else:  # an upstream server: translate the hooks into bans it can enforce itself
            request.logits_hooks, request.banned_sequences = [], self.banned_sequences()
            if request.banned_sequences:
                self.metrics.banned_sequences.labels(self.ctx.tenant).observe(len(request.banned_sequences))
        if self.rewriters:
            async for delta in self._run_buffered(backend, request):
                yield delta
            return
        caught: list[str] = []
        raw: list[str] = []  # what the backend wrote: only read to name the method that caught a leak
        gate, tools = self.choice_filter(request, caught=caught), ToolCallGate(self.choice_filter)
        # aclosing: generation stops as soon as the client goes away or the gate blocks.
        async with aclosing(backend.generate(request)) as chunks:
            async for chunk in chunks:
                raw.append(chunk.text)
                step = await gate.feed(chunk)
                step.blocked = step.blocked or (bool(chunk.tool_calls) and await tools.feed(chunk.tool_calls))
                calls: list[ToolCallDelta] | None = []
                if not step.blocked and chunk.finish_reason is not None:
                    tail = await gate.finish()
                    calls = await tools.finish() if tools else []
                    step.text, step.logprobs, step.blocked = (
                        step.text + tail.text, step.logprobs + tail.logprobs, tail.blocked or calls is None
                    )
                if step.blocked:
                    yield self._refusal(chunk, gate_catcher(self.method_plans, "".join(raw), caught))
                    return
                if step.text:
                    self.ledger.text_released()
                if chunk.finish_reason is not None:
                    self.ledger.answered(steered)
                if step.text or step.logprobs or chunk.finish_reason is not None:
                    yield ChoiceDelta(step.text, step.logprobs, chunk.finish_reason,
                                      chunk.prompt_tokens, chunk.completion_tokens, tool_calls=calls or [])

    async def _run_buffered(self, backend: Backend, request: GenerationRequest) -> AsyncIterator[ChoiceDelta]:
        """Rewriters need the whole draft: generate it all, rewrite, then gate the result."""
        parts: list[str] = []
        last = GenerationChunk()
        tools = ToolCallGate(self.choice_filter)
        async with aclosing(backend.generate(request)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                last = chunk
                if chunk.tool_calls and await tools.feed(chunk.tool_calls):
                    yield self._refusal(last, gate_catcher(self.method_plans, "".join(parts), []))
                    return
        calls = await tools.finish()
        if calls is None:
            yield self._refusal(last, gate_catcher(self.method_plans, "".join(parts), []))
            return
        text: str | None = "".join(parts)
        rewritten: list[str] = []
        for name, plan in self.method_plans.items():
            if plan.rewriter is None:
                continue
            draft, text = text, await plan.rewriter(text)
            if text is None:
                self.ledger.refused("rewrite", name)
                yield ChoiceDelta(self.refusal_text, [], self.refusal_finish_reason, last.prompt_tokens,
                                  last.completion_tokens, refused=True)
                return
            if text != draft:
                rewritten.append(name)
        caught: list[str] = []
        gate = self.choice_filter(request, caught=caught)
        step = await gate.feed(GenerationChunk(text=text))
        tail = await gate.finish()
        if step.blocked or tail.blocked:
            yield self._refusal(last, gate_catcher(self.method_plans, text, caught))
            return
        self.ledger.text_released()
        self.ledger.answered(rewritten=rewritten)
        yield ChoiceDelta(step.text + tail.text, [], last.finish_reason or "stop",
                          last.prompt_tokens, last.completion_tokens, tool_calls=calls)

    def _refusal(self, last: GenerationChunk, caught_by: str) -> ChoiceDelta:
        """The output gate refused the answer: a near-leak (see `gateway.pipeline.leakage`)."""
        self.ledger.refused("gate", caught_by)
        return ChoiceDelta(self.refusal_text, [], self.refusal_finish_reason, last.prompt_tokens,
                           last.completion_tokens, refused=True)


def prompt_tail(request: GenerationRequest) -> str:
    """The text the output continues: a completion's prompt, or a chat's final assistant message
    (a prefilled answer the client will read joined with the output). A chat template's own
    assistant prefix ends in a line break, so it joins nothing."""
    if request.prompt is not None:
        return request.prompt
    last = request.messages[-1] if request.messages else None
    if last is not None and last.get("role") == "assistant" and isinstance(last.get("content"), str):
        return last["content"]
    return ""


def _export_bans(method: str, hook: LogitsHook) -> tuple[tuple[int, ...], ...]:
    export = getattr(hook, "banned_sequences", None)
    if callable(export):
        return tuple(sorted({tuple(int(t) for t in seq) for seq in export()}))
    trie = getattr(hook, "trie", None)
    if trie is not None and hasattr(trie, "sequences"):
        return trie.sequences
    raise BackendError(
        f"The unlearning method '{method}' needs in-process logits hooks, which the upstream backend cannot "
        "run; serve it with the embedded engine (UNLEARN_BACKEND=local) or disable it.",
        status=501, code="method_unsupported_by_backend",
    )


class UnlearningPipeline:
    """Builds a RequestPlan per request from the current target snapshot and the method plug-ins."""

    def __init__(self, snapshots: SnapshotProvider, methods: MethodRegistry, *, refusal_text: str,
                 metrics: GatewayMetrics, refusal_finish_reason: str = "stop"):
        self.snapshots = snapshots
        self.methods = methods
        self.refusal_text = refusal_text
        self.refusal_finish_reason = refusal_finish_reason
        self.metrics = metrics

    async def prepare(self, tenant: str, conversation: list[dict[str, str]]) -> RequestPlan:
        started = time.perf_counter()
        snapshot = await self.snapshots.current()  # StoreUnavailable propagates: fail closed
        fail_open = self.snapshots.served_fail_open  # set by that call: no await in between
        ctx = RequestContext(tenant=tenant, conversation=conversation, targets=snapshot.for_tenant(tenant))
        detection = Detection()
        for method in self.methods:
            detection.add(await method.detect(ctx))
        detected = time.perf_counter()
        if detection.scores:
            self.metrics.detections.inc()
            count_in_play(self.metrics, tenant, detection.scores)
        plans: dict[str, MethodPlan] = {}
        for method in self.methods:
            plan = method.plan(ctx, detection)
            if plan is not None:
                plans[method.name] = plan
        self.metrics.pipeline_stage.labels("detect").observe(detected - started)
        self.metrics.pipeline_stage.labels("plan").observe(time.perf_counter() - detected)
        ledger = AnswerLedger(self.metrics, tenant, plans, in_play=tuple(detection.scores), fail_open=fail_open,
                              started=started)
        return RequestPlan(ctx, detection, plans, self.refusal_text, self.metrics, self.refusal_finish_reason, ledger)


async def collect(deltas: AsyncIterator[ChoiceDelta]) -> ChoiceDelta:
    """Non-stream: the whole choice; a refused choice is only the refusal, nothing before it."""
    out = ChoiceDelta()
    async for delta in deltas:
        if delta.refused:
            out = ChoiceDelta(delta.text, [], delta.finish_reason, delta.prompt_tokens, delta.completion_tokens,
                              refused=True)
            continue
        out.text += delta.text
        out.tool_calls.extend(delta.tool_calls)
        out.logprobs.extend(delta.logprobs)
        out.finish_reason = delta.finish_reason or out.finish_reason
        out.prompt_tokens, out.completion_tokens = delta.prompt_tokens, delta.completion_tokens
    if out.finish_reason is None:
        raise BackendError("The backend ended the response without finishing it.", status=502, code="bad_upstream")
    return out
