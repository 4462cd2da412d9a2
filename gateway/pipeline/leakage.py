"""Leakage accounting for one request: which stage and method changed or refused each answer.

A refusal by the last-line output gate is a *near-leak*: every method protecting the answer
(detection, decoding bans, rewrites) let something through that only the gate caught. The
leakage rate of a method is its near-leaks over the answers it protected; both count finished
answers only (errors and disconnects are neither). Nothing here reaches a client: metrics
carry tenant and method names, a target id only when the operator opts in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from gateway.backends.base import LogitsHook
from gateway.metrics import GatewayMetrics, detection_kind
from gateway.pipeline.methods import MethodPlan, SentenceCheck


def count_in_play(metrics: GatewayMetrics, tenant: str, scores: Mapping[str, float]) -> None:
    kinds: dict[str, int] = {}
    for score in scores.values():
        kind = detection_kind(score)
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, count in kinds.items():
        metrics.targets_in_play.labels(tenant, kind).inc(count)


class DecodeWatch:
    """Wraps one method's logits hook and notes when it steered the answer: changed which token the
    model preferred. Checked until the first time, then the wrapper is a plain call.

    Cheap on the common path (argmax costs ~10x a max on a 49k vocabulary): a hook that writes in
    place (GUARD's bans) steered when it lowered the best score, i.e. pushed down the preferred
    token (exact for bans; a penalty smaller than the gap to the runner-up counts too). A hook that
    returns a new tensor (re-scoring, ULD) is compared by argmax, the original being intact.
    """

    def __init__(self, hook: LogitsHook, on_change: Callable[[], None]):
        self.hook = hook
        self._on_change: Callable[[], None] | None = on_change

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        if self._on_change is None:
            return self.hook(prompt_ids, output_ids, logits)
        best = logits.max()  # a new scalar: survives in-place writes to `logits`
        out = self.hook(prompt_ids, output_ids, logits)
        if out.data_ptr() == logits.data_ptr():
            steered = bool(out.max() < best)
        else:
            steered = int(torch.argmax(out)) != int(torch.argmax(logits))
        if steered:
            self._on_change()
            self._on_change = None
        return out


@dataclass
class AnswerLedger:
    """Counts one request's answers (choices) once each finishes: outcome, stage, method."""

    metrics: GatewayMetrics
    tenant: str
    plans: Mapping[str, MethodPlan]
    in_play: Sequence[str] = ()
    fail_open: bool = False
    started: float = field(default_factory=time.perf_counter)
    _first_text: bool = field(default=False, init=False)

    def hooks(self) -> tuple[list[LogitsHook], set[str]]:
        """Fresh, watched hooks for one choice, and the set the watchers fill with steering methods."""
        steered: set[str] = set()
        hooks: list[LogitsHook] = [DecodeWatch(make(), lambda name=name: steered.add(name))
                                   for name, plan in self.plans.items() for make in plan.hook_factories]
        return hooks, steered

    def sentence_checks(self, caught: list[str]) -> list[SentenceCheck]:
        """The plans' sentence checks, each noting its method in `caught` when it refuses."""
        def watched(name: str, check: SentenceCheck) -> SentenceCheck:
            async def run(sentences: Sequence[str]) -> bool:
                revealed = await check(sentences)
                if revealed:
                    caught.append(name)
                return revealed
            return run
        return [watched(name, c) for name, plan in self.plans.items() for c in plan.sentence_checks]

    def text_released(self) -> None:
        if not self._first_text:
            self._first_text = True
            self.metrics.ttft.observe(time.perf_counter() - self.started)

    def answered(self, steered: set[str] = frozenset(), rewritten: Sequence[str] = ()) -> None:
        self._finished("answered")
        for name in steered:
            self.metrics.interventions.labels(self.tenant, "decode", name, "changed").inc()
        for name in rewritten:
            self.metrics.interventions.labels(self.tenant, "rewrite", name, "changed").inc()

    def refused(self, stage: str, method: str) -> None:
        """`stage` plan, gate or rewrite; `method` the one that refused."""
        self.metrics.refusals.labels(stage=stage).inc()
        self.metrics.interventions.labels(self.tenant, stage, method, "refused").inc()
        self._finished("refused")
        if stage == "gate":
            for name in self.plans:
                self.metrics.near_leaks.labels(self.tenant, name).inc()
            if self.metrics.near_leaks_by_target is not None:
                for target_id in self.in_play:
                    self.metrics.near_leaks_by_target.labels(self.tenant, target_id).inc()

    def _finished(self, outcome: str) -> None:
        self.metrics.answers.labels(self.tenant, outcome).inc()
        for name in self.plans:
            self.metrics.protected_answers.labels(self.tenant, name).inc()
        if self.fail_open:
            self.metrics.fail_open_answers.labels(self.tenant).inc()


def gate_catcher(plans: Mapping[str, MethodPlan], text: str, caught: Sequence[str]) -> str:
    """The method whose gate refused `text`: a sentence check that said so, else the first method
    whose matcher finds a forbidden string in it (ties go to the earlier method, the floor first)."""
    if caught:
        return caught[0]
    for name, plan in plans.items():
        if any(not m.empty and m.first_match(text) is not None for m in plan.gate_matchers):
            return name
    return next(iter(plans), "none")
