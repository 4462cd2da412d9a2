"""The gate stage for one choice: text and its logprobs leave only once they are proven clean.

Two kinds of check run in order. String gates (`StreamGate`, one per matcher)
hold back only what could still become a forbidden string. Sentence checks
(semantic, only when a target is in play) then hold text until its sentence is
finished and ask whether the sentence reveals a target.

Logprobs travel with the text that produced them: an entry is released only after
its token's text has been released, and alternatives in `top_logprobs` that
would spell (or start spelling) a forbidden string are dropped. Otherwise a name
held back in the text could still leak through the logprobs channel.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from gateway.backends.base import GenerationChunk, TokenLogprob
from gateway.pipeline.methods import SentenceCheck
from guards.output_gate import ForbiddenMatcher, StreamGate

_ALT_CONTEXT_CHARS = 64
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


@dataclass
class FilteredDelta:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    blocked: bool = False


class ChoiceFilter:
    """Chains one StreamGate per matcher, then the sentence checks; once blocked, releases nothing."""

    def __init__(self, matchers: Sequence[ForbiddenMatcher], sentence_checks: Sequence[SentenceCheck] = ()):
        self._matchers = [m for m in matchers if not m.empty]
        self._gates = [StreamGate(m) for m in self._matchers]
        self._sentence_checks = list(sentence_checks)
        self._unfinished_sentence = ""
        self._raw_len = 0
        self._released_len = 0
        self._raw_tail = ""
        self._pending_logprobs: deque[tuple[int, TokenLogprob]] = deque()
        self.blocked = False

    async def feed(self, chunk: GenerationChunk) -> FilteredDelta:
        if self.blocked:
            return FilteredDelta(blocked=True)
        for lp in chunk.logprobs:
            self._pending_logprobs.append((self._raw_len + len(chunk.text), self._clean_alternatives(lp)))
        self._raw_len += len(chunk.text)
        self._raw_tail = (self._raw_tail + chunk.text)[-_ALT_CONTEXT_CHARS:]
        text = chunk.text
        for gate in self._gates:
            step = gate.feed(text)
            if step.blocked:
                return self._block()
            text = step.text
        text = await self._check_sentences(text, final=False)
        if text is None:
            return self._block()
        return self._release(text, final=False)

    async def finish(self) -> FilteredDelta:
        if self.blocked:
            return FilteredDelta(blocked=True)
        text = ""
        for gate in self._gates:  # drain each gate in turn into the next one
            parts: list[str] = []
            if text:
                step = gate.feed(text)
                if step.blocked:
                    return self._block()
                parts.append(step.text)
            step = gate.finish()
            if step.blocked:
                return self._block()
            parts.append(step.text)
            text = "".join(parts)
        text = await self._check_sentences(text, final=True)
        if text is None:
            return self._block()
        return self._release(text, final=True)

    async def _check_sentences(self, text: str, *, final: bool) -> str | None:
        """Release only finished sentences that every check passes; None when one fails."""
        if not self._sentence_checks:
            return text
        pending = self._unfinished_sentence + text
        ends = [m.end() for m in _SENTENCE_END.finditer(pending)]
        cut = len(pending) if final else (ends[-1] if ends else 0)
        ready, self._unfinished_sentence = pending[:cut], pending[cut:]
        sentences = [s.strip() for s in _SENTENCE_END.split(ready) if s.strip()]
        for check in self._sentence_checks:
            if sentences and await check(sentences):
                return None
        return ready

    def _release(self, text: str, *, final: bool) -> FilteredDelta:
        self._released_len += len(text)
        released: list[TokenLogprob] = []
        while self._pending_logprobs and (final or self._pending_logprobs[0][0] <= self._released_len):
            released.append(self._pending_logprobs.popleft()[1])
        return FilteredDelta(text=text, logprobs=released)

    def _block(self) -> FilteredDelta:
        self.blocked = True
        self._pending_logprobs.clear()
        return FilteredDelta(blocked=True)

    def _clean_alternatives(self, lp: TokenLogprob) -> TokenLogprob:
        if not lp.top or not self._matchers:
            return lp
        kept = tuple(alt for alt in lp.top if not self._alternative_leaks(alt[0]))
        return lp if len(kept) == len(lp.top) else replace(lp, top=kept)

    def _alternative_leaks(self, piece: str) -> bool:
        candidate = self._raw_tail + piece
        return any(m.first_match(candidate) is not None or m.hold_back(candidate) > 0 for m in self._matchers)
