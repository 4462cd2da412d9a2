"""The plug-in interface every unlearning method implements, and its registry.

A request flows detect → plan → decode (logits hooks) → gate/rewrite. A method
takes part in any of these stages by overriding the matching hook; the defaults
do nothing, so the output gate, GUARD, ULD and ALU all look the same to the
pipeline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from gateway.backends.base import LogitsHook
from gateway.store.models import ForgetTarget

if TYPE_CHECKING:
    from gateway.pipeline.snapshot import SnapshotProvider, TenantTargets
    from gateway.store.base import TargetStore
    from guards.output_gate import ForbiddenMatcher

T = TypeVar("T")


@dataclass
class RequestContext:
    """What the methods may look at: the caller's tenant, its targets, the conversation."""

    tenant: str
    conversation: list[dict[str, str]]
    targets: TenantTargets
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def text(self) -> str:
        """The whole conversation as one string: detection covers every turn, not just the last."""
        return "\n".join(m["content"] for m in self.conversation)

    def memo(self, key: str, build: Callable[[], T]) -> T:
        """Work several methods need on this request (e.g. the name scan), done once."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]


@dataclass
class Detection:
    """Which targets are in play, with scores. Internal only: never shown to clients."""

    scores: dict[str, float] = field(default_factory=dict)

    def add(self, scores: Mapping[str, float]) -> None:
        for target_id, score in scores.items():
            if score > self.scores.get(target_id, 0.0):
                self.scores[target_id] = score


Rewriter = Callable[[str], Awaitable[str | None]]
"""Takes the draft answer, returns the rewritten answer, or None for the generic refusal."""

SentenceCheck = Callable[[Sequence[str]], Awaitable[bool]]
"""Takes finished output sentences, returns True when they reveal a target (the answer is refused)."""


@dataclass
class MethodPlan:
    """A method's contribution to one request."""

    hook_factories: list[Callable[[], LogitsHook]] = field(default_factory=list)
    gate_matchers: list[ForbiddenMatcher] = field(default_factory=list)
    sentence_checks: list[SentenceCheck] = field(default_factory=list)
    rewriter: Rewriter | None = None
    refuse: bool = False
    """Answer with the generic refusal without generating at all."""


class UnlearningMethod:
    """Base class of plug-ins. `selectable` methods may be named in a target's `methods`.

    `default` ones also apply to targets that name no methods; an opt-in method (ULD: minutes of
    training per target) sets it to False and applies only to targets that name it.
    """

    name: ClassVar[str]
    selectable: ClassVar[bool] = True
    default: ClassVar[bool] = True

    async def warm_up(self) -> None:
        """Load models before the first request instead of during it."""

    async def start(self, store: TargetStore, snapshots: SnapshotProvider) -> None:
        """Start background work (ULD's training jobs) once the app is up; the default has none."""

    def index(self, targets: TenantTargets) -> None:
        """Build the per-shard structures requests will need (matchers, tries), in a worker thread:
        at start-up (before `/readyz`), for each change's new shard, and for compactions. Memoised
        on the shards, so what is already built is skipped; the default builds nothing."""

    async def stop(self) -> None:
        """Stop what `start` started, at shutdown."""

    def derive(self, target: ForgetTarget) -> Mapping[str, Any] | None:
        """At registration: data to store with the target (e.g. embeddings), computed once.

        Called for every target, whatever its `methods` (detection serves all methods).
        Runs in a worker thread; the result is stored under `target.derived[self.name]`.
        """
        return None

    def derive_many(self, targets: Sequence[ForgetTarget]) -> list[Mapping[str, Any] | None]:
        """`derive` for a batch registration (`targets:batch`); override to share work across it."""
        return [self.derive(target) for target in targets]

    async def detect(self, ctx: RequestContext) -> Mapping[str, float]:
        """Score any active target recognised in the conversation (target id → 0..1).

        Detection is shared: its scores gate every method (ALU runs only for targets in play).
        """
        return {}

    def plan(self, ctx: RequestContext, detection: Detection) -> MethodPlan | None:
        """Decide this method's hooks, gate patterns and rewriter for the request."""
        return None

    def targets_for(self, ctx: RequestContext) -> list[ForgetTarget]:
        """Active targets of the caller's tenant that enabled this method (memoised per snapshot;
        each shard filters once, so after a change this costs the size of the result)."""
        return ctx.targets.memo(f"method-targets:{self.name}",
                                lambda: ctx.targets.select(f"method:{self.name}", self.applies_to))

    def has_targets(self, ctx: RequestContext) -> bool:
        """Whether `targets_for` is non-empty, without listing them."""
        return ctx.targets.any_selected(f"method:{self.name}", self.applies_to)

    def applies_to(self, target: ForgetTarget) -> bool:
        return self.name in target.methods

    def in_play(self, ctx: RequestContext, detection: Detection, limit: int | None = None) -> list[ForgetTarget]:
        """This method's targets that detection found, best score first (at most `limit`).

        Walks the detection hits, not the target list, so the cost does not grow with the
        number of registered targets."""
        if not detection.scores:
            return []
        hits = sorted(detection.scores, key=lambda tid: -detection.scores[tid])
        mine = [t for t in map(ctx.targets.by_id, hits) if t is not None and self.applies_to(t)]
        return mine[:limit]


class MethodRegistry:
    """Plug-ins by name, in pipeline order."""

    def __init__(self, methods: Iterable[UnlearningMethod] = ()):
        self._methods: dict[str, UnlearningMethod] = {}
        for method in methods:
            self.register(method)

    def register(self, method: UnlearningMethod) -> None:
        if method.name in self._methods:
            raise ValueError(f"method {method.name!r} is registered twice")
        self._methods[method.name] = method

    def __iter__(self):
        return iter(self._methods.values())

    async def warm_up(self) -> None:
        for method in self._methods.values():
            await method.warm_up()

    async def start(self, store: TargetStore, snapshots: SnapshotProvider) -> None:
        for method in self._methods.values():
            await method.start(store, snapshots)

    def index(self, targets: TenantTargets) -> None:
        """Every method's `index` (the snapshot provider's indexer; runs in a worker thread)."""
        for method in self._methods.values():
            method.index(targets)

    async def stop(self) -> None:
        for method in reversed(list(self._methods.values())):
            await method.stop()

    @property
    def selectable(self) -> list[str]:
        """The default `methods` of a target that lists none (selectable methods that are on by default)."""
        return [m.name for m in self._methods.values() if m.selectable and m.default]

    @property
    def available(self) -> list[str]:
        """Names a target may list in `methods`, opt-in methods included."""
        return [m.name for m in self._methods.values() if m.selectable]
