"""The gate stage for one choice: text and its logprobs leave only once they are proven clean.

Two kinds of check run in order. String gates (`StreamGate`, one per matcher)
hold back only what could still become a forbidden string. Sentence checks
(semantic, only when a target is in play) then hold text until its sentence is
finished and ask whether the sentence reveals a target.

Logprobs travel with the text that produced them: an entry is released only after
its token's text has been released. An alternative in `top_logprobs` is dropped
only when, appended to the text before its token (prompt tail included), it would
complete a forbidden string: dropping every *prefix* of a name (" Tol") made the
count of alternatives an oracle for which names are registered. Backends fetch a
margin of extra alternatives (`gateway.backends.sampling.alternatives_to_fetch`),
so the list is refilled from the next best and cut to exactly the requested
number; the sampled token itself is never dropped (its text was released).

The prompt's tail is where the output continues: gates start with it as already
released text, so "... J.R.R. Tol" + "kien" blocks while a name wholly inside
the prompt never does.
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

    def __init__(self, matchers: Sequence[ForbiddenMatcher], sentence_checks: Sequence[SentenceCheck] = (), *,
                 prompt_tail: str = "", top_logprobs: int | None = None):
        self._matchers = [m for m in matchers if not m.empty]
        self._gates = [StreamGate(m, context=prompt_tail) for m in self._matchers]
        self._sentence_checks = list(sentence_checks)
        self._unfinished_sentence = ""
        self._raw_len = 0
        self._released_len = 0
        self._context_chars = max([_ALT_CONTEXT_CHARS, *(2 * m.max_len + 16 for m in self._matchers)])
        self._raw_tail = prompt_tail[-self._context_chars :]
        self._top_k = top_logprobs
        self._pending_logprobs: deque[tuple[int, TokenLogprob]] = deque()
        self.blocked = False

    async def feed(self, chunk: GenerationChunk) -> FilteredDelta:
        if self.blocked:
            return FilteredDelta(blocked=True)
        context = self._raw_tail
        for lp in chunk.logprobs:
            self._pending_logprobs.append((self._raw_len + len(chunk.text), self._clean_alternatives(lp, context)))
            context += lp.token
        self._raw_len += len(chunk.text)
        self._raw_tail = (self._raw_tail + chunk.text)[-self._context_chars :]
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

    def _clean_alternatives(self, lp: TokenLogprob, context: str) -> TokenLogprob:
        """Exactly `top_k` alternatives (as many as the backend had when it had fewer), best first,
        without those that would complete a forbidden string after `context`."""
        top = lp.top
        if top and self._matchers:
            top = tuple(alt for alt in top if alt[0] == lp.token or not self._completes_forbidden(context, alt[0]))
        if self._top_k is not None:
            top = top[: self._top_k]
        return lp if top == lp.top else replace(lp, top=top)

    def _completes_forbidden(self, context: str, piece: str) -> bool:
        candidate = context + piece
        return any(m.first_match(candidate, min_end=len(context)) is not None for m in self._matchers)
