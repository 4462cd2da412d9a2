"""The gate stage for a choice's tool calls: nothing of a call leaves before the whole answer is clean.

A tool call is an action, not prose: half of one (a name without its arguments,
arguments cut at a forbidden name) is worse than none, so calls are never
streamed piecemeal. Each call's id, name and argument string is checked as its
fragments arrive, each by its own `ChoiceFilter` (one per channel, so a name
cannot be assembled across two of them and a block is noticed at once, which
stops the upstream early); the calls are released together, complete, only when
the answer has ended and every filter has finished clean. One blocked string
refuses the whole answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.backends.base import GenerationChunk, ToolCallDelta
from gateway.pipeline.choice_filter import ChoiceFilter


@dataclass
class _HeldCall:
    filters: tuple[ChoiceFilter, ChoiceFilter, ChoiceFilter]  # id, name, arguments
    parts: tuple[list[str], list[str], list[str]] = field(default_factory=lambda: ([], [], []))


class ToolCallGate:
    """Holds one choice's tool calls; `feed` as fragments arrive, `finish` once the answer ends."""

    def __init__(self, make_filter: Callable[[], ChoiceFilter]):
        self._make_filter = make_filter
        self._calls: dict[int, _HeldCall] = {}
        self.blocked = False

    def __bool__(self) -> bool:
        return bool(self._calls)

    async def feed(self, deltas: Sequence[ToolCallDelta]) -> bool:
        """Check the fragments; True when one of them is (or completes) a forbidden string."""
        for delta in deltas:
            if self.blocked:
                break
            call = self._calls.get(delta.index)
            if call is None:
                call = self._calls[delta.index] = _HeldCall(
                    (self._make_filter(), self._make_filter(), self._make_filter()))
            for gate, parts, text in zip(call.filters, call.parts, (delta.id, delta.name, delta.arguments)):
                if text:
                    step = await gate.feed(GenerationChunk(text=text))
                    self.blocked = step.blocked
                    if self.blocked:
                        break
                    parts.append(step.text)
        return self.blocked

    async def finish(self) -> list[ToolCallDelta] | None:
        """The complete calls in index order, or None when any string of any call is blocked."""
        calls: list[ToolCallDelta] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            texts: list[str] = []
            for gate, parts in zip(call.filters, call.parts):
                tail = await gate.finish()
                if self.blocked or tail.blocked:
                    self.blocked = True
                    return None
                texts.append("".join(parts) + tail.text)
            calls.append(ToolCallDelta(len(calls), *texts))
        return calls
