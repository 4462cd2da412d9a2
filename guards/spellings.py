"""Spellings of a name the shared fold cannot see (issue 12 item 4), for `ForbiddenMatcher`.

Chosen by what each costs on every streamed chunk:

* key variants, made once per matcher and free per chunk (more keys in the same
  automata): ROT13 ("Gbyxvra"); one separator inside a single word ("Tol kien",
  "Tol-kien": the fold makes spaces, dashes and underscores one space), as a whole
  word and unless both halves are common words ("new ton"); a misspelling within one
  swap of adjacent letters in a word of 6+ letters ("Tolkein", "Einstien"), as a
  whole word and unless it is itself a common word ("Sliver" from "Silver");
* decoders, which only run on text that looks encoded: base64 (`b64_decodings`, the
  matcher's own nested scan), string
  concatenation (`"Tol" + "kien"`, `'Tol' 'kien'`, `["Tol", "kien"]`), character
  codes in decimal ("84 111 108", "&#84;") or hex ("54 6f 6c", "\\x54\\x6f",
  "0x54", "U+0054", "546f6c6b69656e"), the NATO alphabet ("Tango Oscar Lima") and
  Morse ("- --- .-.. -.-").

Not covered (README, *Security model*): a word split more than once ("Tol ki en"),
other misspellings (a letter dropped or replaced), edits of words under 6 letters,
other ciphers, translations.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterator

from guards.key_terms import zipf

__all__ = ["B64_MIN_RUN", "b64_decodings", "b64_tail", "rot13", "split_variants", "misspellings", "decoded_runs",
           "encoded_tail"]

B64_MIN_RUN = 8  # shortest base64 run worth decoding / holding back
_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-")
_URLSAFE = str.maketrans("-_", "+/")

COMMON_ZIPF = 2.5  # a misspelling this common is an ordinary word, not a spelling of the name
COMMON_HALF_ZIPF = 3.5  # two halves both this common are two words ("new ton"), not a split name
SPLIT_MIN = 5  # shortest word split by a separator
MISSPELL_MIN = 6  # shortest word whose misspellings are matched
_MIN_SYMBOLS = 4  # shortest code/NATO/Morse run worth decoding

_NATO = {w: w[0] for w in (
    "alfa alpha bravo charlie delta echo foxtrot golf hotel india juliet juliett kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey whisky xray x-ray yankee zulu").split()}
_MORSE = {
    ".-": "a", "-...": "b", "-.-.": "c", "-..": "d", ".": "e", "..-.": "f", "--.": "g", "....": "h", "..": "i",
    ".---": "j", "-.-": "k", ".-..": "l", "--": "m", "-.": "n", "---": "o", ".--.": "p", "--.-": "q", ".-.": "r",
    "...": "s", "-": "t", "..-": "u", "...-": "v", ".--": "w", "-..-": "x", "-.--": "y", "--..": "z",
    "-----": "0", ".----": "1", "..---": "2", "...--": "3", "....-": "4", ".....": "5", "-....": "6",
    "--...": "7", "---..": "8", "----.": "9",
}
_NATO_WORD = "|".join(sorted(map(re.escape, _NATO), key=len, reverse=True))
_NATO_RUN = re.compile(r"\b(?:%s)(?:[\s,.;/|-]+(?:%s)){%d,}\b" % (_NATO_WORD, _NATO_WORD, _MIN_SYMBOLS - 1))
_NATO_FIRST = re.compile(r"\b(?:%s)\b" % _NATO_WORD)  # on lower-cased text: IGNORECASE costs 3x
_MORSE_RUN = re.compile(r"(?<![\w.-])[.-]{1,6}(?:(?: {1,3}| ?[/|] ?)[.-]{1,6}){%d,}(?![\w.-])" % (_MIN_SYMBOLS - 1))
_CODE = r"(?:\\x|\\u|0x|&#x|&#|%|[uU]\+)?[0-9A-Fa-f]{2,8};?"
_CODE_RUN = re.compile(r"(?<![\w\\&#%%+])%s(?:[\s,;:+|]*%s){%d,}" % (_CODE, _CODE, _MIN_SYMBOLS - 1))
_HEX_BLOB = re.compile(r"(?<![\w])(?:[0-9A-Fa-f]{2}){%d,}(?![\w])" % _MIN_SYMBOLS)
_QUOTED = r"(?:\"[^\"\n]{1,40}\"|'[^'\n]{1,40}')"
_CONCAT_RUN = re.compile(r"%s(?:[ \t]*[+,]?[ \t]*%s)+" % (_QUOTED, _QUOTED))
_QUOTED_PART = re.compile(r"\"([^\"\n]*)\"|'([^'\n]*)'")
_TAIL_LOOK = 160  # chars of a window's end searched for an unfinished encoded run
_HEX_END = re.compile(r"(?<![G-Zg-z])[0-9A-Fa-f]{1,8}\Z")
_CODE_REACH = 12  # longest code token with its prefix ("&#x0054;"): where a run's last code may start
_NATO_LONGEST = 10
_NATO_ENDS = frozenset(w.split("-")[-1] for w in _NATO)


def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def split_variants(word: str) -> list[tuple[str, str]]:
    """(left, right) halves of 2+ letters a separator may go between; not where both are common words."""
    if len(word) < SPLIT_MIN or not word.isalpha():
        return []
    halves = [(word[:i], word[i:]) for i in range(2, len(word) - 1)]
    return [(a, b) for a, b in halves if min(zipf(a), zipf(b)) < COMMON_HALF_ZIPF]


def misspellings(word: str) -> list[str]:
    """Two adjacent letters swapped ("Tolkein", "Einstien"; the first letter kept), no common word
    ("Sliver" from "Silver"). Deletions and substitutions are left out: each would add a dozen keys
    per name word to every matcher, and the fuzzy detection (`guards.fuzzy_terms`) sees them in prompts."""
    if len(word) < MISSPELL_MIN or not word.isalpha():
        return []
    swaps = {word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(1, len(word) - 1)}
    return sorted(e for e in swaps if e != word and zipf(e) < COMMON_ZIPF)


def _codes(run: str) -> Iterator[str]:
    """Decimal and hex readings of a character-code run (each code one char)."""
    tokens = re.findall(r"(?:\\x|\\u|0x|&#x|&#|%|[uU]\+)?([0-9A-Fa-f]{2,8})", run)
    prefixed_dec = "&#" in run and "&#x" not in run
    if all(t.isdigit() for t in tokens):
        yield _chars(int(t) for t in tokens)
    if not prefixed_dec:
        yield _chars(int(t, 16) for t in tokens)


def _chars(values: Iterator[int]) -> str:
    return "".join(chr(v) if 32 <= v < 0x110000 and chr(v).isprintable() else "\ufffd" for v in values)


def decoded_runs(text: str, since: int = 0) -> Iterator[tuple[int, int, str]]:
    """(raw start, raw end, decoded text) of each encoded-looking run of `text` that may end after
    raw index `since`: a decoder runs only when `text[since:]` holds what its runs are made of
    (a stream gate passes the vetted length, so ordinary prose skips most of them)."""
    new = text[max(0, since - _CODE_REACH) :]  # a code, quote or Morse letter may have begun before `since`
    if '"' in new or "'" in new:
        for m in _CONCAT_RUN.finditer(text):
            yield m.start(), m.end(), "".join(a or b for a, b in _QUOTED_PART.findall(m.group()))
    if any(c.isdigit() for c in new):  # every code of a letter has a digit: 0x41-0x7a, 65-122
        for m in _CODE_RUN.finditer(text):
            for decoded in _codes(m.group()):
                yield m.start(), m.end(), decoded
        for m in _HEX_BLOB.finditer(text):
            try:
                yield m.start(), m.end(), bytes.fromhex(m.group()).decode("utf-8", "replace")
            except ValueError:
                continue
    if "-" in new or "." in new:
        for m in _MORSE_RUN.finditer(text):
            words = re.split(r" ?[/|] ?| {2,3}", m.group())
            yield m.start(), m.end(), " ".join("".join(_MORSE.get(c, "\ufffd") for c in w.split()) for w in words)
    lower = text.lower()  # same length and offsets for the ASCII words it matters for
    if len(lower) == len(text) and _NATO_FIRST.search(lower, max(0, since - _NATO_LONGEST)):
        for m in _NATO_RUN.finditer(lower):
            words = re.split(r"[\s,.;/|]+|(?<!x)-", m.group())
            yield m.start(), m.end(), "".join(_NATO.get(w, "") for w in words if w)


def encoded_tail(text: str) -> int:
    """Length of an encoded-looking run (codes, NATO, Morse) that reaches the end of `text`:
    the next chunk may finish it, so a stream gate holds it back like a name's prefix."""
    stripped = text.rstrip(" ,;:+|/")
    if not stripped:
        return 0
    last = stripped[-1]
    runs = []
    if last in ".-":
        runs.append(_MORSE_RUN)
    if (last == ";" or _HEX_END.search(stripped, max(0, len(stripped) - 9))) and any(
            c.isdigit() for c in stripped[-_CODE_REACH:]):
        runs.append(_CODE_RUN)
    if last.isalpha() and stripped[-_NATO_LONGEST:].lower().rsplit(None, 1)[-1].split("-")[-1] in _NATO_ENDS:
        runs.append(_NATO_RUN)
    start = max(0, len(stripped) - _TAIL_LOOK)
    window = stripped[start:]
    best = 0
    for run in runs:
        for m in run.finditer(window.lower() if run is _NATO_RUN else window):
            if m.end() == len(window):
                best = max(best, len(text) - start - m.start())
    return best


def b64_decodings(run: str) -> Iterator[str]:
    """What ``run`` decodes to as UTF-8, at each of the 4 alignments.

    Unprintable bytes become U+FFFD, a hard non-word break, so a name encoded
    inside a longer run (whose other parts decode to garbage) is still found.
    """
    for piece in run.translate(_URLSAFE).split("="):
        for off in range(4):
            q = piece[off:]
            q = q[: len(q) - (len(q) % 4 == 1)]
            if len(q) < 6:
                break
            try:
                raw = base64.b64decode(q + "=" * (-len(q) % 4))
            except (binascii.Error, ValueError):
                continue
            text = raw.decode("utf-8", "replace")
            if sum(c.isalnum() for c in text) >= _MIN_SYMBOLS:
                yield "".join(c if c.isprintable() or c in " \n" else "\ufffd" for c in text)


def b64_tail(text: str) -> int:
    """Length of the trailing base64-alphabet run if long enough to be encoded data."""
    i = len(text)
    while i and text[i - 1] in _B64_ALPHABET:
        i -= 1
    run = len(text) - i
    return run if run >= B64_MIN_RUN else 0
