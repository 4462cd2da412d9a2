"""The baseline plug-in: every active target's name and aliases are gated out of every answer.

It is the floor under all other methods (not selectable, always on): whatever
GUARD, ULD or ALU do or miss, a registered name never leaves the gateway.
Its matchers are built once per shard of a tenant's targets (see
`gateway.pipeline.shards`), off the event loop, not per request. A shard that
still holds a deleted or renamed target's names keeps gating them until the
shard is compacted (seconds): over-blocking, never under-blocking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.pipeline.methods import Detection, MethodPlan, RequestContext, UnlearningMethod
from gateway.pipeline.shards import Shard, TenantTargets
from gateway.store.models import ForgetTarget
from guards.key_terms import name_parts
from guards.normalize import normalise
from guards.output_gate import ForbiddenMatcher


@dataclass(frozen=True)
class NameIndex:
    """One matcher over the surface names of some targets, and which targets own each pattern."""

    matcher: ForbiddenMatcher
    owners: tuple[tuple[str, ...], ...]
    """Per pattern, every target with the same phrase (normalised): the matcher reports one
    pattern per key, and a dead owner must not hide a live one."""

    @classmethod
    def build(cls, targets: Iterable[ForgetTarget],
              phrases: Callable[[ForgetTarget], Iterable[str]] = lambda t: t.surface_names) -> NameIndex:
        """Over each target's names and aliases, or whatever other `phrases` identify it."""
        patterns: list[str] = []
        keys: list[str] = []
        by_key: dict[str, list[str]] = {}
        for target in targets:
            for phrase in phrases(target):
                key = normalise(phrase).text.strip()
                patterns.append(phrase)
                keys.append(key)
                by_key.setdefault(key, []).append(target.id)
        shared = {key: tuple(dict.fromkeys(ids)) for key, ids in by_key.items()}
        return cls(ForbiddenMatcher(patterns), tuple(shared[key] for key in keys))

    def targets_in(self, text: str, score: float = 1.0) -> dict[str, float]:
        """Targets with a phrase in `text` (a token match), each with `score`."""
        found: dict[str, float] = {}
        end = 0
        while (match := self.matcher.first_match(text, min_end=end)) is not None:
            for owner in self.owners[match.pattern]:
                found[owner] = score
            end = match.end
        return found


def shard_names(shard: Shard) -> NameIndex:
    return shard.memo("output-gate:names", NameIndex.build)


def name_index(targets: TenantTargets) -> NameIndex:
    """One index over all of a tenant's names (ALU masks them in its prompts). O(targets) to build
    after each change: the request path uses the per-shard `targets_named_in` instead."""
    return targets.memo("output-gate:names", lambda: NameIndex.build(targets.active))


def targets_named_in(targets: TenantTargets, text: str) -> dict[str, float]:
    """The live targets whose name or alias is in `text` (score 1.0), over every shard."""
    found: dict[str, float] = {}
    for shard in targets.shards:
        found.update(targets.live_hits(shard, shard_names(shard).targets_in(text)))
    return found


def names_in_conversation(ctx: RequestContext) -> Mapping[str, float]:
    """The targets a request's conversation names (score 1.0); scanned once, read by several methods."""
    return ctx.memo("output-gate:names-in-text", lambda: targets_named_in(ctx.targets, ctx.text))


def shard_parts(shard: Shard) -> tuple[tuple[str, ...], ForbiddenMatcher]:
    """The distinctive name parts of a shard's targets (`guards.key_terms.name_parts`) and their matcher."""
    def build(targets: tuple[ForgetTarget, ...]) -> tuple[tuple[str, ...], ForbiddenMatcher]:
        parts = tuple(dict.fromkeys(p for t in targets for p in name_parts(t)))
        return parts, ForbiddenMatcher(parts)

    return shard.memo("output-gate:name-parts", build)


def part_matchers(ctx: RequestContext) -> list[ForbiddenMatcher]:
    """Name parts gated out of this answer: all of them, less those a user turn wrote itself
    ("Who was Pierre Curie?" may be answered with "Curie"; the full names still block)."""
    user_text = "\n".join(m["content"] for m in ctx.conversation
                          if m.get("role") == "user" and isinstance(m.get("content"), str))
    matchers: list[ForbiddenMatcher] = []
    for shard in ctx.targets.shards:
        parts, matcher = shard_parts(shard)
        if matcher.empty:
            continue
        echoed: set[int] = set()
        end = 0
        while (match := matcher.first_match(user_text, min_end=end)) is not None:
            echoed.add(match.pattern)
            end = match.end
        if not echoed:
            matchers.append(matcher)
            continue
        kept = tuple(p for i, p in enumerate(parts) if i not in echoed)
        if kept:
            key = "output-gate:name-parts-less:" + ",".join(map(str, sorted(echoed)))
            matchers.append(shard.memo(key, lambda _targets: ForbiddenMatcher(kept)))
    return matchers


class OutputGateMethod(UnlearningMethod):
    name = "output_gate"
    selectable = False

    def index(self, targets: TenantTargets) -> None:
        for shard in targets.shards:
            shard_names(shard)
            shard_parts(shard)

    async def detect(self, ctx: RequestContext) -> Mapping[str, float]:
        return names_in_conversation(ctx)

    def plan(self, ctx: RequestContext, detection: Detection) -> MethodPlan | None:
        matchers = [m for m in (shard_names(s).matcher for s in ctx.targets.shards) if not m.empty]
        matchers += part_matchers(ctx)
        return MethodPlan(gate_matchers=matchers) if matchers else None
