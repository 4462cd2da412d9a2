"""The baseline plug-in: every active target's name and aliases are gated out of every answer.

It is the floor under all other methods (not selectable, always on): whatever
GUARD, ULD or ALU do or miss, a registered name never leaves the gateway.
Its matcher is built once per target snapshot and tenant, not per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.pipeline.methods import Detection, MethodPlan, RequestContext, UnlearningMethod
from gateway.pipeline.snapshot import TenantTargets
from gateway.store.models import ForgetTarget
from guards.output_gate import ForbiddenMatcher


@dataclass(frozen=True)
class NameIndex:
    """One matcher over all surface names of a tenant, and which target owns each pattern."""

    matcher: ForbiddenMatcher
    owners: tuple[str, ...]

    @classmethod
    def build(cls, targets: Iterable[ForgetTarget],
              phrases: Callable[[ForgetTarget], Iterable[str]] = lambda t: t.surface_names) -> NameIndex:
        """Over each target's names and aliases, or whatever other `phrases` identify it."""
        patterns: list[str] = []
        owners: list[str] = []
        for target in targets:
            for phrase in phrases(target):
                patterns.append(phrase)
                owners.append(target.id)
        return cls(ForbiddenMatcher(patterns), tuple(owners))

    def targets_in(self, text: str, score: float = 1.0) -> dict[str, float]:
        """Targets with a phrase in `text` (a token match), each with `score`."""
        found: dict[str, float] = {}
        end = 0
        while (match := self.matcher.first_match(text, min_end=end)) is not None:
            found[self.owners[match.pattern]] = score
            end = match.end
        return found


def name_index(targets: TenantTargets) -> NameIndex:
    return targets.memo("output-gate:names", lambda: NameIndex.build(targets.active))


def names_in_conversation(ctx: RequestContext) -> Mapping[str, float]:
    """The targets a request's conversation names (score 1.0); scanned once, read by several methods."""
    return ctx.memo("output-gate:names-in-text", lambda: name_index(ctx.targets).targets_in(ctx.text))


class OutputGateMethod(UnlearningMethod):
    name = "output_gate"
    selectable = False

    async def detect(self, ctx: RequestContext) -> Mapping[str, float]:
        return names_in_conversation(ctx)

    def plan(self, ctx: RequestContext, detection: Detection) -> MethodPlan | None:
        index = name_index(ctx.targets)
        return None if index.matcher.empty else MethodPlan(gate_matchers=[index.matcher])
