"""Text folding shared by forbidden patterns and model output.

Both sides go through the same fold so that cosmetic tricks (case, accents,
invisible characters, look-alike letters, leetspeak, spaced-out letters) cannot
hide a name from an exact-string matcher.  Every normalised character keeps the
index of the raw character it came from, so a hit maps back to raw offsets.

Folding decisions (loose mode, the default):

* NFKD, then combining marks (Mn/Me) dropped, then casefold ("É" -> "e",
  "𝐓" -> "t", "ﬁ" -> "fi", "ß" -> "ss").
* Invisible characters are dropped: format chars (Cf: ZWSP, ZWNJ, ZWJ, soft
  hyphen, BOM, word joiner...), non-whitespace controls, Hangul fillers.
* Look-alikes are folded to Latin: ~60 Cyrillic/Greek/IPA letters (``_HOMO``).
* Leetspeak digits always fold: 0->o 1->i 3->e 4->a 5->s 7->t 8->b 9->g.
* ``i``, ``l``, ``1``, ``|`` and ``!`` are one class written ``i``: "B1lbo",
  "BiIbo", "Ro11ing" all match their plain spelling.  Hence normalised text is
  for matching, never for display ("Tolkien" -> "toikien").
* Symbols ``@ $ ! |`` fold (to a s i i) only inside a word, i.e. between two
  alphanumerics; ``@``/``$`` also before one ("@lbus") and ``$`` after one
  ("Baggin$"), so "Al!" keeps its "!" and stays a word boundary.
* Whitespace runs, plus ``-``, ``_`` and dashes, become one space.
* Curly quotes become straight quotes; other punctuation is kept.
* Single letters separated by at most 3 separator chars (space . , / * + ' :
  ; ~ = · • \\) collapse into one word when the run has >= 3 letters
  ("T.o.l.k.i.e.n", "T o-l.k i e n" -> "toikien"; "a b" is left alone).  The
  separators right after such a run become one space if they contain a space
  or a letter follows ("J.R.R.Tolkien" and "J. R. R. Tolkien" -> "jrr toikien").

Strict mode (``strict=True``) keeps everything above except leetspeak and the
i/l merge; the matcher uses it to confirm hits of very short aliases, where
"AI" vs "Al" or "130" vs "Leo" would otherwise collide.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Normalised", "normalise", "squeeze", "squeeze_append", "visible_tail", "fold_char", "trailing_letter_run",
    "SEPARATORS",
]

# Single-char separators allowed between spaced-out letters (after folding).
SEPARATORS = frozenset(" .,/*+':;~=·•∙⋅‧\\")

_CTX = "\x00"  # table marker: contextual leet symbol, decided per position
_LEET_SYMBOLS = {"@": "a", "$": "s", "!": "i", "|": "i"}
_LEET_DIGITS = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "l": "i"}
_DASHES = frozenset("-_‐‑‒–—―−⁃")
_QUOTES = {"’": "'", "‘": "'", "‛": "'", "ʼ": "'", "´": "'", "`": "'", "′": "'", "“": '"', "”": '"', "„": '"'}
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")
# Look-alikes, keyed by the casefolded char (capitals fold to these first).
_HOMO = {
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "п": "n",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ѵ": "v", "ү": "y", "ҫ": "c",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "μ": "u",
    "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j",
    # Latin letters NFKD does not decompose, IPA
    "ı": "i", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ŧ": "t", "ƀ": "b", "ɨ": "i", "ǀ": "l",
    "ɑ": "a", "ɡ": "g", "ɩ": "i", "ȷ": "j",
}
# Capitals whose lowercase looks different from the capital.
_HOMO_UPPER = {"Η": "h", "Μ": "m", "Ν": "n", "Υ": "y", "Ι": "i"}
_EXTRA_RANGES = ((0xA640, 0xA6A0), (0xFB00, 0x10000), (0x1D400, 0x1D800), (0x1F100, 0x1F200))


@dataclass(frozen=True, slots=True)
class Normalised:
    """Folded text plus, per folded char, the index of its raw char."""

    text: str
    origin: Sequence[int]

    def raw_span(self, start: int, end: int) -> tuple[int, int]:
        """Raw [start, end) covering normalised chars [start, end), end > start."""
        return self.origin[start], self.origin[end - 1] + 1


def _fold_slow(ch: str, strict: bool) -> str:
    """Context-free fold of one char; used to build the tables and for rare chars."""
    if ch in _HOMO_UPPER:
        out = _HOMO_UPPER[ch]
        return out if strict else _LEET_DIGITS.get(out, out)
    if ch in _LEET_SYMBOLS and not strict:
        return _CTX
    if ch in _QUOTES:
        return _QUOTES[ch]
    cat = unicodedata.category(ch)
    if ch.isspace() or cat in ("Zs", "Zl", "Zp") or ch in _DASHES:
        return " "
    if cat in ("Cf", "Mn", "Me", "Cc", "Cs") or ch in _INVISIBLE:
        return ""
    s = ch
    for _ in range(2):  # casefold can re-introduce decomposable chars ("İ")
        s = "".join(c for c in unicodedata.normalize("NFKD", s) if unicodedata.category(c) not in ("Mn", "Me"))
        s = s.casefold()
    parts = []
    for c in s:
        c = _HOMO.get(c, c)
        if not strict:
            c = _LEET_DIGITS.get(c, c)
        if c in _DASHES or c.isspace():
            c = " "
        parts.append(_QUOTES.get(c, c))
    out = "".join(parts)
    if not out.strip():
        return " " if out else ""
    return out.replace(" ", "") if len(out) > 1 else out


def _build_table(strict: bool) -> dict[str, str]:
    table = {chr(c): _fold_slow(chr(c), strict) for c in range(0x3000)}
    for lo, hi in _EXTRA_RANGES:
        for c in range(lo, hi):
            f = _fold_slow(chr(c), strict)
            if f != chr(c):
                table[chr(c)] = f
    return table


_LOOSE = _build_table(False)
_STRICT = _build_table(True)


def fold_char(ch: str, *, strict: bool = False) -> str:
    """Context-free fold of one raw char: "" (invisible), " " (space class) or text.

    Contextual leet symbols (@ $ ! |) come back unchanged.
    """
    table = _STRICT if strict else _LOOSE
    f = table.get(ch)
    if f is None:
        f = _fold_slow(ch, strict)
    return ch if f == _CTX else f


def _symbol(text: str, i: int, ch: str, prev_alnum: bool, table: dict[str, str]) -> str:
    """Leet symbol at raw index i: fold only where it sits inside a word."""
    j, n = i + 1, len(text)
    while j < n and table.get(text[j]) == "":
        j += 1
    next_alnum = j < n and text[j].isalnum()
    if (prev_alnum and next_alnum) or (next_alnum and ch in "@$") or (prev_alnum and ch == "$"):
        return _LEET_SYMBOLS[ch]
    return ch


def _ascii_fast_path(strict: bool) -> tuple[dict[int, str], re.Pattern[str]]:
    """A `str.translate` table for the ASCII chars that fold to exactly one char on their own,
    and a pattern for the ASCII chars that do not (invisible controls, contextual leet symbols)."""
    table = _STRICT if strict else _LOOSE
    simple = {c: table[chr(c)] for c in range(128) if len(table[chr(c)]) == 1 and table[chr(c)] != _CTX}
    hard = "".join(chr(c) for c in range(128) if c not in simple)
    return simple, re.compile("[%s]" % re.escape(hard))


_FAST = {strict: _ascii_fast_path(strict) for strict in (False, True)}
# Two single alphanumerics apart by 1-3 separators: the start of a run `_collapse_letter_runs` may join.
_LETTER_RUN = re.compile(r"(?<![a-z0-9])[a-z0-9][ .,/*+':;~=\\]{1,3}[a-z0-9](?![a-z0-9])")


def normalise(text: str, *, strict: bool = False) -> Normalised:
    """Fold ``text`` for matching (see module docstring) keeping raw origins."""
    if text.isascii():
        # Most text is plain ASCII where every char folds to one char: one C-level translate,
        # origins are the identity. Anything else (a whitespace run to collapse, a spaced-out
        # word, a leet symbol, a control char) takes the general path below.
        fold, hard = _FAST[strict]
        if hard.search(text) is None:
            out = text.translate(fold)
            if "  " not in out and _LETTER_RUN.search(out) is None:
                return Normalised(out, range(len(text)))
    return _normalise_general(text, strict)


def _normalise_general(text: str, strict: bool) -> Normalised:
    table = _STRICT if strict else _LOOSE
    out: list[str] = []
    org: list[int] = []
    for i, ch in enumerate(text):
        f = table.get(ch)
        if f is None:
            f = _fold_slow(ch, strict)
        if len(f) == 1:
            if f == " ":
                if out and out[-1] == " ":
                    continue
            elif f == _CTX:
                f = _symbol(text, i, ch, bool(out) and out[-1].isalnum(), table)
            out.append(f)
            org.append(i)
        elif f:
            out.extend(f)
            org.extend([i] * len(f))
    if len(out) >= 5:
        _collapse_letter_runs(out, org)
    return Normalised("".join(out), org)


def _collapse_letter_runs(out: list[str], org: list[int]) -> None:
    """Join runs of >= 3 single letters split by <= 3 separators, in place."""
    m = len(out)
    isal = [c.isalnum() for c in out]
    drop: list[tuple[int, int]] = []  # [start, end) ranges to delete
    i = 0
    while i < m:
        if not isal[i] or (i and isal[i - 1]) or (i + 1 < m and isal[i + 1]):
            i += 1
            continue
        letters = [i]
        j = i + 1
        while j < m:
            k = j
            while k < m and k - j < 3 and out[k] in SEPARATORS:
                k += 1
            if k == j or k == m or not isal[k] or (k + 1 < m and isal[k + 1]):
                break
            letters.append(k)
            j = k + 1
        if len(letters) < 3:
            i = j
            continue
        drop.extend((a + 1, b) for a, b in zip(letters, letters[1:]))
        last = letters[-1]
        k = last + 1
        while k < m and k - last <= 3 and out[k] in SEPARATORS:
            k += 1
        if k > last + 1 and ((k < m and isal[k]) or " " in out[last + 1 : k]):
            out[last + 1] = " "
            drop.append((last + 2, k))
        i = k
    for a, b in reversed(drop):
        del out[a:b]
        del org[a:b]


_SQUEEZE_WORK = re.compile(r"[\x00-\x1f\x7f]|  ")  # what `squeeze` changes in ASCII text


def squeeze_append(squeezed: str, text: str) -> str:
    """``squeeze(squeezed + text)`` for an already squeezed ``squeezed``, looking only at ``text``."""
    more = squeeze(text)
    if more.startswith(" ") and squeezed.endswith(" "):
        more = more[1:]
    return squeezed + more


def squeeze(text: str) -> str:
    """Drop invisible chars and collapse whitespace runs to one space.

    ``normalise(squeeze(t)).text == normalise(t).text``; the stream gate keeps
    its released-context window squeezed so that padding with invisible chars
    or whitespace cannot push a name prefix out of that window.
    """
    if text.isascii() and _SQUEEZE_WORK.search(text) is None:
        return text  # plain ASCII without controls, tabs, newlines or double spaces: nothing to do
    out: list[str] = []
    for ch in text:
        f = _LOOSE.get(ch)
        if f is None:
            f = _fold_slow(ch, False)
        if f == "":
            continue
        if ch.isspace():
            if out and out[-1] == " ":
                continue
            ch = " "
        out.append(ch)
    return "".join(out)


def visible_tail(text: str, n: int) -> str:
    """The last `n` chars of ``squeeze(text)``, squeezing only as much of a long prompt as needed
    (padding it with invisible chars cannot push a name's beginning out of view)."""
    out, end = "", len(text)
    while end > 0 and len(out) < n:
        start = max(0, end - 4 * n)
        out, end = squeeze(text[start:end] + out), start
    return out[-n:]


def trailing_letter_run(text: str, limit: int) -> list[tuple[int, str]]:
    """(raw index, folded letter) of the single letters ending ``text``.

    These are letters standing alone, separated (and optionally followed) by
    at most 3 separators: text that a continuation could still collapse into
    one word ("... T o" may become "T o l k i e n").  At most ``limit`` letters.
    """
    run: list[tuple[int, str]] = []
    j = _skip_separators(text, len(text) - 1, allow_none=True)
    while j >= 0 and len(run) < limit:
        f = fold_char(text[j])
        if len(f) != 1 or not f.isalnum():
            break
        p = j - 1
        while p >= 0 and fold_char(text[p]) == "":
            p -= 1
        if p >= 0 and fold_char(text[p]).isalnum():
            break
        run.append((j, f))
        j = _skip_separators(text, p, allow_none=False)
    run.reverse()
    return run


def _skip_separators(text: str, j: int, *, allow_none: bool) -> int:
    """Index of the first significant char at or before j after 1..3 separators.

    Returns -1 when the separator count is out of range (none where one is
    required, or more than 3).
    """
    count, last_space = 0, False
    while j >= 0:
        f = fold_char(text[j])
        if f == "":
            j -= 1
            continue
        if f == " " or (len(f) == 1 and f in SEPARATORS):
            if not (f == " " and last_space):
                count += 1
            last_space = f == " "
            if count > 3:
                return -1
            j -= 1
            continue
        break
    if count == 0 and not allow_none:
        return -1
    return j
