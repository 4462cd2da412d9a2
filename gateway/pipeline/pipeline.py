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
    count_prompt_tokens,
)
from gateway.metrics import GatewayMetrics
from gateway.pipeline.choice_filter import ChoiceFilter
from gateway.pipeline.methods import Detection, MethodPlan, MethodRegistry, RequestContext, Rewriter
from gateway.pipeline.snapshot import SnapshotProvider

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


@dataclass
class RequestPlan:
    ctx: RequestContext
    detection: Detection
    method_plans: dict[str, MethodPlan]
    refusal_text: str
    metrics: GatewayMetrics
    _banned: tuple[tuple[int, ...], ...] | None = field(default=None, init=False, repr=False)

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
        `TrieRestriction`, its trie's sorted `sequences`. A hook that can do neither (a
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

    def choice_filter(self) -> ChoiceFilter:
        plans = self.method_plans.values()
        return ChoiceFilter([m for p in plans for m in p.gate_matchers],
                            [c for p in plans for c in p.sentence_checks])

    async def run(self, backend: Backend, request: GenerationRequest) -> AsyncIterator[ChoiceDelta]:
        """Decode one choice and yield only what the gate (and rewriters) let through."""
        if any(p.refuse for p in self.method_plans.values()):
            self.metrics.refusals.labels(stage="plan").inc()
            yield ChoiceDelta(self.refusal_text, [], "stop", count_prompt_tokens(backend.tokenizer, request), 0,
                              refused=True)
            return
        if getattr(backend, "supports_logits_hooks", True):
            request.logits_hooks = self.logits_hooks()
        else:  # an upstream server: translate the hooks into bans it can enforce itself
            request.logits_hooks, request.banned_sequences = [], self.banned_sequences()
        if self.rewriters:
            async for delta in self._run_buffered(backend, request):
                yield delta
            return
        gate = self.choice_filter()
        # aclosing: generation stops as soon as the client goes away or the gate blocks.
        async with aclosing(backend.generate(request)) as chunks:
            async for chunk in chunks:
                step = await gate.feed(chunk)
                if not step.blocked and chunk.finish_reason is not None:
                    tail = await gate.finish()
                    step.text, step.logprobs, step.blocked = (
                        step.text + tail.text, step.logprobs + tail.logprobs, tail.blocked
                    )
                if step.blocked:
                    yield self._refusal(chunk)
                    return
                if step.text or step.logprobs or chunk.finish_reason is not None:
                    yield ChoiceDelta(step.text, step.logprobs, chunk.finish_reason,
                                      chunk.prompt_tokens, chunk.completion_tokens)

    async def _run_buffered(self, backend: Backend, request: GenerationRequest) -> AsyncIterator[ChoiceDelta]:
        """Rewriters need the whole draft: generate it all, rewrite, then gate the result."""
        parts: list[str] = []
        last = GenerationChunk()
        async with aclosing(backend.generate(request)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                last = chunk
        text: str | None = "".join(parts)
        for rewrite in self.rewriters:
            text = await rewrite(text)
            if text is None:
                yield self._refusal(last)
                return
        gate = self.choice_filter()
        step = await gate.feed(GenerationChunk(text=text))
        tail = await gate.finish()
        if step.blocked or tail.blocked:
            yield self._refusal(last)
            return
        yield ChoiceDelta(step.text + tail.text, [], last.finish_reason or "stop",
                          last.prompt_tokens, last.completion_tokens)

    def _refusal(self, last: GenerationChunk) -> ChoiceDelta:
        self.metrics.refusals.labels(stage="gate").inc()
        return ChoiceDelta(self.refusal_text, [], "stop", last.prompt_tokens, last.completion_tokens, refused=True)


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
                 metrics: GatewayMetrics):
        self.snapshots = snapshots
        self.methods = methods
        self.refusal_text = refusal_text
        self.metrics = metrics

    async def prepare(self, tenant: str, conversation: list[dict[str, str]]) -> RequestPlan:
        snapshot = await self.snapshots.current()  # StoreUnavailable propagates: fail closed
        ctx = RequestContext(tenant=tenant, conversation=conversation, targets=snapshot.for_tenant(tenant))
        detection = Detection()
        for method in self.methods:
            detection.add(await method.detect(ctx))
        if detection.scores:
            self.metrics.detections.inc()
        plans: dict[str, MethodPlan] = {}
        for method in self.methods:
            plan = method.plan(ctx, detection)
            if plan is not None:
                plans[method.name] = plan
        return RequestPlan(ctx, detection, plans, self.refusal_text, self.metrics)


async def collect(deltas: AsyncIterator[ChoiceDelta]) -> ChoiceDelta:
    """Non-stream: the whole choice; a refused choice is only the refusal, nothing before it."""
    out = ChoiceDelta()
    async for delta in deltas:
        if delta.refused:
            out = ChoiceDelta(delta.text, [], "stop", delta.prompt_tokens, delta.completion_tokens, refused=True)
            continue
        out.text += delta.text
        out.logprobs.extend(delta.logprobs)
        out.finish_reason = delta.finish_reason or out.finish_reason
        out.prompt_tokens, out.completion_tokens = delta.prompt_tokens, delta.completion_tokens
    if out.finish_reason is None:
        raise BackendError("The backend ended the response without finishing it.", status=502, code="bad_upstream")
    return out
