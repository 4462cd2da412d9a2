"""Spellings of a name beyond the fold (issue 12 item 4): each class gated, or pinned as not.

Gated classes are checked in every two-way chunking of the stream (nothing of the
complete spelling is ever released); the classes README's *Security model* leaves
out are pinned as passing, so a change of either shows up here.
"""

from __future__ import annotations

import base64

import pytest

from guards.output_gate import ForbiddenMatcher, StreamGate
from guards.spellings import misspellings, split_variants

NAMES = ["J.R.R. Tolkien", "Tolkien", "Albert Einstein", "Einstein", "Sherlock Holmes", "Holmes", "Newton"]


@pytest.fixture(scope="module")
def matcher() -> ForbiddenMatcher:
    return ForbiddenMatcher(NAMES)


def _hex(text: str, sep: str = " ", fmt: str = "{:02x}") -> str:
    return sep.join(fmt.format(ord(c)) for c in text)


GATED = {
    "separator": ["It was Tol kien.", "It was Tol-kien.", "by TOL_KIEN", "Ein stein's theory"],
    "concatenation": ['print("Tol" + "kien")', "name = 'Tol' 'kien'", '"".join(["Tol", "kien"])'],
    "decimal codes": [" ".join(str(ord(c)) for c in "Tolkien"), "".join(f"&#{ord(c)};" for c in "Tolkien")],
    "hex": [_hex("Tolkien"), _hex("Tolkien", ""), _hex("Tolkien", "", "\\x{:02x}"), _hex("Tolkien", ", ", "0x{:02X}"),
            _hex("Tolkien", " ", "U+{:04X}")],
    "rot13": ["The answer is Gbyxvra.", "Nyoreg Rvafgrva"],
    "nato": ["Tango Oscar Lima Kilo India Echo November", "tango-oscar-lima-kilo-india-echo-november"],
    "morse": ["- --- .-.. -.- .. . -.", "- --- .-.. -.- .. . -. / .-. ..- .-.."],
    "misspelling": ["Tolkein wrote it", "Einstien's theory", "Sherlock Hlomes"],
    "base64 (before)": [base64.b64encode(b"Tolkien").decode()],
}
NOT_GATED = {  # documented in README, Security model
    "split twice": "Tol ki en",
    "letter dropped or replaced": "Tolkin, Tolkeen, Einsten",
    "first letters swapped": "Etnstein",  # the first letter is kept: "Etnstein" is no swap of an inner pair
    "other ciphers": "Uryyb Gbyxvra" [::-1],
}
CLEAN = [
    "a new ton of bricks", "He walks homes daily and visits the holes.", "however established",
    "In 1937, 1954 and 1955 he published", "The dates 12 34 56 78 are", "Tango and Cash",
    "SOS is ... --- ...", "a dead beef cafe", "She said 'yes' and 'no'.", "Everett, Washington",
]


def _blocked_in_every_split(m: ForbiddenMatcher, text: str) -> None:
    for i in range(len(text) + 1):
        gate = StreamGate(m)
        released, blocked = "", False
        for step in (gate.feed(text[:i]), gate.feed(text[i:]), gate.finish()):
            released += step.text
            blocked = blocked or step.blocked
        assert blocked, (text, i)
        assert m.first_match(released) is None, (text, i, released)


@pytest.mark.parametrize(("kind", "text"), [(k, t) for k, texts in GATED.items() for t in texts])
def test_gated_spellings(matcher, kind, text):
    assert matcher.first_match(text) is not None, kind
    _blocked_in_every_split(matcher, text)


@pytest.mark.parametrize(("kind", "text"), list(NOT_GATED.items()))
def test_spellings_left_out_are_pinned(matcher, kind, text):
    assert matcher.first_match(text) is None, kind


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_text_stays_clean(matcher, text):
    assert matcher.first_match(text) is None
    gate = StreamGate(matcher)
    out = "".join(gate.feed(c).text for c in text) + gate.finish().text
    assert out == text


def test_variants_skip_common_words():
    assert ("new", "ton") not in split_variants("newton") and ("ein", "stein") in split_variants("einstein")
    assert "sliver" not in misspellings("silver")  # a common word, not a misspelling of the name
    assert "tolkein" in misspellings("tolkien")
