"""Last line of defence: keep forbidden strings out of what the client sees.

``ForbiddenMatcher`` finds target names/aliases in text under the shared fold
(``guards.normalize``); ``StreamGate`` applies it to a streamed answer, holding
back only the tail that could still grow into a name, and ``redact`` is the
one-shot form.  Matching rules:

* every pattern is normalised; its reversal and (for multi-word names) its
  alphanumerics-only form are added too ("neikloT", "BilboBaggins");
* keys with fewer than 4 alphanumerics ("Al", "Ron", "J. R.") match only at
  word boundaries and
  are confirmed in strict fold (no leet, no i/l merge) so "AI" is not "Al";
  longer keys match anywhere ("Tolkien's", "JRRTolkien");
* base64-looking runs (>= 8 chars of the standard or urlsafe alphabet) are
  decoded at all 4 alignments (so a name encoded mid-run is found) and the
  printable parts of the UTF-8 are searched for keys of >= 4 chars (2 levels
  deep).  Short keys are not searched there: random bytes spell "al" too often;
* spellings the fold cannot see (`guards.spellings`): ROT13 keys; a single word split
  by one separator ("Tol kien") or misspelt by one edit ("Tolkein"), both as whole
  words like short keys; string concatenation, character codes (decimal, hex), NATO
  and Morse spelling, decoded only where the text looks like them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import ahocorasick

from guards.normalize import Normalised, fold_char, normalise, squeeze_append, trailing_letter_run, visible_tail
from guards.spellings import (
    B64_MIN_RUN,
    b64_decodings,
    b64_tail,
    decoded_runs,
    encoded_tail,
    misspellings,
    rot13,
    split_variants,
)

__all__ = ["Match", "ForbiddenMatcher", "GateStep", "StreamGate", "redact"]

SHORT_KEY = 4  # keys shorter than this need word boundaries
_B64_DEPTH = 2
_ENCODED_CACHE_SIZE = 4096  # runs remembered per matcher (a matcher lives for one target snapshot)
_ENCODED_CACHE_RUN = 64  # only word-sized runs: long ones are rare and would make the cache large
_HEAD = 3  # key-start length `hold_back` pre-filters on
_B64_RUN = re.compile(r"[A-Za-z0-9+/=_-]{%d,}" % B64_MIN_RUN)
_LEET = frozenset("@$!|")


@dataclass(frozen=True, slots=True)
class Match:
    """A forbidden string at raw ``text[start:end]`` (internal: never show it)."""

    start: int
    end: int
    pattern: int  # index into the patterns given to the matcher
    encoded: bool = False  # found inside a decoded base64 run spanning start:end


def _trim(key: str) -> str:
    """Drop leading/trailing non-alphanumerics: they depend on context, not the name."""
    i, j = 0, len(key)
    while i < j and not key[i].isalnum():
        i += 1
    while j > i and not key[j - 1].isalnum():
        j -= 1
    return key[i:j]


def _undecided(text: str, pos: int) -> bool:
    """True if text[pos:] is only leet symbols/invisibles: the next char decides
    whether they fold to letters ("Al" + "|" + "x" is one word "aiix")."""
    return all(ch in _LEET or fold_char(ch) == "" for ch in text[pos:])


def _build(keys: dict[str, object]) -> ahocorasick.Automaton | None:
    if not keys:
        return None
    automaton = ahocorasick.Automaton()
    for key, value in keys.items():
        automaton.add_word(key, value)
    automaton.make_automaton()
    return automaton


class ForbiddenMatcher:
    """Immutable multi-pattern matcher over normalised text; build once per snapshot."""

    __slots__ = ("_long", "_short", "_rot", "_max_len", "_count", "_encoded_hits", "_heads")

    def __init__(self, patterns: Iterable[str]) -> None:
        long_keys: dict[str, tuple[int, int]] = {}
        rot_keys: dict[str, tuple[int, int]] = {}  # matched like long keys, never held back: "Gby" reveals nothing
        short_keys: dict[str, tuple[int, int, frozenset[str]]] = {}
        count = 0
        for idx, pattern in enumerate(patterns):
            count += 1
            key = _trim(normalise(pattern).text)
            if not key:
                continue
            compact = "".join(c for c in key if c.isalnum())
            if len(compact) < SHORT_KEY:
                strict = _trim(normalise(pattern, strict=True).text)
                old = short_keys.get(key)
                forms = old[2] | {strict} if old else frozenset((strict,))
                short_keys[key] = (len(key), old[1] if old else idx, forms)
                continue
            for variant in (key, key[::-1], compact):
                if len(variant) >= SHORT_KEY:
                    long_keys.setdefault(variant, (len(variant), idx))
            rotated = _trim(normalise(rot13(pattern)).text)
            for variant in (rotated, "".join(c for c in rotated if c.isalnum())):
                if len(variant) >= SHORT_KEY and variant not in long_keys:
                    rot_keys.setdefault(variant, (len(variant), idx))
            strict = _trim(normalise(pattern, strict=True).text)
            if compact == key and strict.isalpha() and len(strict) == len(key):
                # Whole-word spellings of a single word: "Tol kien" / "Tol-kien", "Tolkein".
                words = [(key[: len(a)] + " " + key[len(a) :], a + " " + b) for a, b in split_variants(strict)]
                words += [(m.replace("l", "i") if m.isascii() else normalise(m).text, m) for m in misspellings(strict)]
                for loose, strict_form in words:
                    old = short_keys.get(loose)
                    forms = old[2] | {strict_form} if old else frozenset((strict_form,))
                    short_keys[loose] = (len(loose), old[1] if old else idx, forms)
        self._long = _build(long_keys)
        self._rot = _build(rot_keys)
        self._short = _build(short_keys)
        self._max_len = max(map(len, [*long_keys, *short_keys]), default=0)
        self._count = count
        # The first 3 chars of every key: a text of 3+ chars whose start is not among them cannot
        # be a key prefix, so `hold_back` skips most positions without asking the automata.
        self._heads = frozenset(key[:_HEAD] for key in [*long_keys, *short_keys] if len(key) >= _HEAD)
        # base64-looking run -> pattern hit inside its decodings (or None). Ordinary long words
        # ("sentence", "something") look like base64 and recur in every other prompt and answer;
        # the matcher never changes, so what a run decodes to is looked at once.
        self._encoded_hits: dict[tuple[str, int], int | None] = {}  # depth -1: `_scan_spelled` decodings

    @property
    def empty(self) -> bool:
        """True when nothing can ever match (no usable pattern)."""
        return self._long is None and self._short is None

    @property
    def max_len(self) -> int:
        """Length of the longest normalised key (sizes stream windows)."""
        return self._max_len

    def __len__(self) -> int:
        return self._count

    def first_match(
        self, text: str, *, final: bool = True, min_end: int = 0, norm: Normalised | None = None
    ) -> Match | None:
        """Earliest-ending forbidden string in ``text``, or None.

        ``final=False`` means more text may follow, so a short key touching the
        end is not yet a word (hold_back keeps it pending instead).  Matches
        ending at or before raw ``min_end`` are ignored (already vetted text).
        ``norm`` may pass ``normalise(text)`` when the caller already has it.
        """
        if self.empty:
            return None
        nt = norm if norm is not None else normalise(text)
        hit = self._scan(text, nt, final, min_end)
        if hit is None:
            hit = self._scan_encoded(text, min_end, _B64_DEPTH)
        if hit is None:
            hit = self._scan_spelled(text, min_end)
        return hit

    def _scan_spelled(self, text: str, min_end: int) -> Match | None:
        """Concatenated strings, character codes, NATO and Morse runs (`guards.spellings`)."""
        for start, end, decoded in decoded_runs(text, min_end):
            if end <= min_end:
                continue
            key = (decoded, -1)
            if key in self._encoded_hits:
                pattern = self._encoded_hits[key]
            else:
                hit = self._scan(decoded, normalise(decoded), True, 0, long_only=True)
                pattern = hit.pattern if hit is not None else None
                if len(decoded) <= _ENCODED_CACHE_RUN:
                    if len(self._encoded_hits) >= _ENCODED_CACHE_SIZE:
                        self._encoded_hits.clear()
                    self._encoded_hits[key] = pattern
            if pattern is not None:
                return Match(start, end, pattern, encoded=True)
        return None

    def _scan(self, text: str, nt: Normalised, final: bool, min_end: int, long_only: bool = False) -> Match | None:
        s = nt.text
        best: Match | None = None
        for automaton in (self._long, self._rot):
            if automaton is None:
                continue
            for end, (klen, idx) in automaton.iter(s):
                start, raw_end = nt.raw_span(end - klen + 1, end + 1)
                if raw_end > min_end:
                    if best is None or raw_end < best.end:
                        best = Match(start, raw_end, idx)
                    break
        if self._short is not None and not long_only:
            n = len(s)
            for end, (klen, idx, forms) in self._short.iter(s):
                if best is not None and nt.origin[end] >= best.end:
                    break  # the long-key hit ends first
                ns = end - klen + 1
                if ns and s[ns - 1].isalnum():
                    continue
                if end + 1 < n and s[end + 1].isalnum() or (end + 1 == n and not final):
                    continue
                start, raw_end = nt.raw_span(ns, end + 1)
                if not final and _undecided(text, raw_end):
                    continue
                if raw_end <= min_end:
                    continue
                if _trim(normalise(text[start:raw_end], strict=True).text) in forms:
                    return Match(start, raw_end, idx)
        return best

    def _scan_encoded(self, text: str, min_end: int, depth: int) -> Match | None:
        for run in _B64_RUN.finditer(text):
            if run.end() <= min_end:
                continue
            key = (run.group(), depth)
            if key in self._encoded_hits:
                pattern = self._encoded_hits[key]
            else:
                pattern = self._decoded_pattern(key[0], depth)
                if len(key[0]) <= _ENCODED_CACHE_RUN:
                    if len(self._encoded_hits) >= _ENCODED_CACHE_SIZE:
                        self._encoded_hits.clear()
                    self._encoded_hits[key] = pattern
            if pattern is not None:
                return Match(run.start(), run.end(), pattern, encoded=True)
        return None

    def _decoded_pattern(self, run: str, depth: int) -> int | None:
        """The pattern found in what `run` decodes to (nested `depth` levels deep), or None."""
        for decoded in b64_decodings(run):
            hit = self._scan(decoded, normalise(decoded), True, 0, long_only=True)
            if hit is None and depth > 1:
                hit = self._scan_encoded(decoded, 0, depth - 1)
            if hit is not None:
                return hit.pattern
        return None

    def hold_back(self, text: str, *, norm: Normalised | None = None) -> int:
        """How many trailing raw chars of ``text`` could still start a forbidden string.

        A suffix is held when its normalised form is a prefix of some key
        (short keys: only from a word start; a complete short key at the end is
        held too, the next char decides whether it is a word).  Trailing single
        letters that a continuation could collapse ("by T o ") are held as the
        word they would form, and trailing leet symbols with whatever precedes
        them ("Al|", "Tolk!").  Cost: O(max_len^2) trie steps, independent of
        the number of patterns.
        """
        if self.empty or not text:
            return 0
        nt = norm if norm is not None else normalise(text)
        s, n = nt.text, len(nt.text)
        hold = 0
        heads = self._heads
        for k in range(max(0, n - self._max_len), n):
            if n - k >= _HEAD and s[k : k + _HEAD] not in heads:
                continue
            if self._is_prefix(s[k:], k == 0 or not s[k - 1].isalnum()):
                hold = len(text) - nt.origin[k]
                break
        p = len(text)
        while p and (text[p - 1] in _LEET or fold_char(text[p - 1]) == ""):
            p -= 1
        if p < len(text) and any(ch in _LEET for ch in text[p:]):
            # "Al|", "Tolk!": trailing symbols fold or not depending on what comes next.
            before = self.hold_back(text[:p])
            if before:
                hold = max(hold, before + len(text) - p)
        run = trailing_letter_run(text, self._max_len)
        for i in range(len(run)):
            if len(text) - run[i][0] <= hold:
                break
            if self._is_prefix("".join(f for _, f in run[i:]), True):
                hold = len(text) - run[i][0]
                break
        return hold

    def _is_prefix(self, s: str, at_word_start: bool) -> bool:
        if self._long is not None and self._long.match(s):
            return True
        return at_word_start and self._short is not None and self._short.match(s)


@dataclass(frozen=True, slots=True)
class GateStep:
    """What may go to the client now, and whether the answer is blocked."""

    text: str
    blocked: bool


class StreamGate:
    """Per-response gate: releases streamed text that cannot be (part of) a name.

    Invariant: released text + pending never contains a match, checked on a
    window of released tail + pending so names split across chunks are caught.
    The tail is kept squeezed (no invisible chars, single spaces) and at least
    4x the longest key, so padding cannot push a held prefix out of view.
    Work per feed is bounded by that window plus ``max_hold_chars``; held text
    beyond ``max_hold_chars`` is released oldest first (it is still part of the
    window, so a name completed later still blocks).
    """

    __slots__ = ("_matcher", "_max_hold", "_tail_chars", "_tail", "_pending", "_blocked", "_done")

    def __init__(self, matcher: ForbiddenMatcher, *, max_hold_chars: int | None = None, context: str = "") -> None:
        need = 4 * (matcher.max_len + 16)
        self._matcher = matcher
        self._max_hold = max(need, 256) if max_hold_chars is None else max_hold_chars
        self._tail_chars = max(need, 3 * matcher.max_len + 32)
        # The prompt's tail counts as released text: a name split across the prompt/output boundary
        # ("... J.R.R. Tol" + "kien") ends in the output and blocks, one wholly inside the prompt never does.
        self._tail = visible_tail(context, self._tail_chars)
        self._pending = ""
        self._blocked = False
        self._done = False

    @property
    def blocked(self) -> bool:
        return self._blocked

    def feed(self, delta: str) -> GateStep:
        """Add model output; return what can be released now."""
        if self._done:
            raise RuntimeError("feed() after finish()")
        if self._blocked:
            return GateStep("", True)
        if self._matcher.empty:
            return GateStep(delta, False)
        self._pending += delta
        return self._step(final=False)

    def finish(self) -> GateStep:
        """End of the answer: flush pending if it is clean.  Idempotent."""
        if self._done or self._blocked:
            self._done = True
            return GateStep("", self._blocked)
        self._done = True
        if self._matcher.empty:
            return GateStep("", False)
        return self._step(final=True)

    def _step(self, final: bool) -> GateStep:
        window = self._tail + self._pending
        nt = normalise(window)
        if self._matcher.first_match(window, final=final, min_end=len(self._tail), norm=nt):
            self._blocked = True
            self._tail = self._pending = ""
            return GateStep("", True)
        hold = 0
        if not final:
            hold = max(self._matcher.hold_back(window, norm=nt), b64_tail(window), encoded_tail(window))
            hold = min(hold, len(self._pending), self._max_hold)
        cut = len(self._pending) - hold
        while 0 < cut < len(self._pending):
            # The client may never see the held rest ("Al" + held "s..."), so the
            # released part must be clean on its own, as if the answer ended there.
            hit = self._matcher.first_match(self._tail + self._pending[:cut], min_end=len(self._tail))
            if hit is None:
                break
            cut = hit.start - len(self._tail)
        cut = max(cut, 0)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        if out:
            self._tail = squeeze_append(self._tail, out)[-self._tail_chars :]
        return GateStep(out, False)


def redact(text: str, matcher: ForbiddenMatcher) -> tuple[str, bool]:
    """One-shot check of a complete answer: (text, False) if clean, else ("", True)."""
    if matcher.first_match(text) is None:
        return text, False
    return "", True
