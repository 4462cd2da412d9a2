"""ForbiddenMatcher, StreamGate and redact: no chunking may leak a name."""

from __future__ import annotations

import base64
import itertools
import random
import string

import pytest

from guards.normalize import normalise
from guards.output_gate import ForbiddenMatcher, StreamGate, redact

NAMES = ["J.R.R. Tolkien", "Tolkien", "Bilbo Baggins", "Hermione Granger"]


@pytest.fixture(scope="module")
def matcher() -> ForbiddenMatcher:
    return ForbiddenMatcher(NAMES)


def run_gate(m: ForbiddenMatcher, chunks: list[str], **kw: int) -> tuple[str, bool]:
    """Feed chunks, checking the invariants after every step."""
    gate = StreamGate(m, **kw)
    released: list[str] = []
    blocked = False
    for step in [*(gate.feed(c) for c in chunks), gate.finish()]:
        if blocked:
            assert step.text == "" and step.blocked, "released text after blocking"
        blocked = step.blocked
        released.append(step.text)
        so_far = "".join(released)
        assert m.first_match(so_far) is None, f"leaked: {so_far!r}"
    return "".join(released), blocked


def splits2(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(len(text) + 1)]


def splits3(text: str) -> list[list[str]]:
    return [[text[:i], text[i:j], text[j:]] for i, j in itertools.combinations_with_replacement(range(len(text) + 1), 2)]


def random_chunks(rng: random.Random, text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        k = rng.choice([1, 1, 2, 3, 4, 7, 16])
        out.append(text[i : i + k])
        i += k
    return out


def all_chunkings(text: str, rng: random.Random, three_way: bool = True) -> list[list[str]]:
    chunkings = [[text], list(text), *splits2(text)]
    if three_way:
        chunkings += splits3(text)
    chunkings += [random_chunks(rng, text) for _ in range(30)]
    return chunkings


def assert_never_leaks(m: ForbiddenMatcher, text: str, three_way: bool = True) -> None:
    assert m.first_match(text) is not None, f"matcher misses {text!r}"
    rng = random.Random(text)
    for chunks in all_chunkings(text, rng, three_way):
        released, blocked = run_gate(m, chunks)
        assert blocked, chunks
        assert len(released) < len(text)


DIRTY = [
    "The Hobbit was written by J.R.R. Tolkien in 1937.",
    "Its author, Tolkien, taught at Oxford.",
    "Tolkien's books",
    "The hero is Bilbo Baggins of Bag End.",
    "Her name: Hermione Granger.",
    "Hermione\nGranger studied hard.",
    "written by JRRTolkien",
]

OBFUSCATED = [
    "by T o l k i e n!",
    "by T.o.l.k.i.e.n.",
    "by T-o-l-k-i-e-n",
    "by T0lk1en.",
    "by Тоlkiеn.",  # Cyrillic Т о е
    "by Tol\u200bki\u200den.",
    "by neikloT.",
    "by TOLKIEN",
    "by 𝐓𝐨𝐥𝐤𝐢𝐞𝐧",
    "hero B1lb0 B@gg1n$ here",
    "hero BilboBaggins",
    "by J. R. R. Tolkien",
    "it is " + base64.b64encode(b"Tolkien").decode() + " ok",
    "it is " + base64.urlsafe_b64encode("Hermione Granger".encode()).decode().rstrip("=") + ".",
    "b64: " + base64.b64encode(b"The author is J.R.R. Tolkien, yes.").decode(),
    "twice: " + base64.b64encode(base64.b64encode(b"Bilbo Baggins")).decode(),
]

CLEAN = [
    "Tolstoy wrote War and Peace. To be or not to be. Tol is a prefix.",
    "Hello world, this is a perfectly ordinary answer about hobbits and rings.",
    "Bilbo is a name; Baggage claim is downstairs. Hermione-like Grangers",
    "Tolkie is not a word, Tolkiem? no: Tol kin, T o l s t o y.",  # "Tol kien" is gated: test_spellings.py
    "An internationalization-friendly, extraordinarily straightforward explanation.",
    "Line one\n\nLine two\twith tabs   and  spaces \u00e9\u00e8 \u4e2d\u6587 \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "Numbers 1937, 2024 and a b c d; e-mail me@example.com, $5 off!",
]


@pytest.mark.parametrize("text", DIRTY)
def test_dirty_text_blocked_in_every_chunking(matcher: ForbiddenMatcher, text: str) -> None:
    assert_never_leaks(matcher, text)


@pytest.mark.parametrize("text", OBFUSCATED)
def test_obfuscated_text_blocked_in_every_chunking(matcher: ForbiddenMatcher, text: str) -> None:
    assert_never_leaks(matcher, text, three_way=len(text) < 60)


@pytest.mark.parametrize("text", CLEAN)
def test_clean_text_released_exactly(matcher: ForbiddenMatcher, text: str) -> None:
    assert matcher.first_match(text) is None
    for chunks in all_chunkings(text, random.Random(text), three_way=len(text) < 70):
        released, blocked = run_gate(matcher, chunks)
        assert not blocked and released == text, chunks


def test_hold_back_is_minimal(matcher: ForbiddenMatcher) -> None:
    gate = StreamGate(matcher)
    assert gate.feed("Hello ").text == "Hello "
    assert gate.feed("world T").text == "world "
    assert gate.feed("o").text == ""
    assert gate.feed("lstoy").text == "Tolstoy"
    assert gate.feed(" and Bilbo ").text == " and "
    assert gate.feed("Bag").text == ""
    assert gate.feed("gage.").text == "Bilbo Baggage."
    assert gate.finish().text == ""


def test_hold_back_values(matcher: ForbiddenMatcher) -> None:
    assert matcher.hold_back("Hello ") == 0
    assert matcher.hold_back("Hello") == 0
    assert matcher.hold_back("by Tol") == 3
    assert matcher.hold_back("by Tolstoy") == 0
    assert matcher.hold_back("by T o l") == 5
    assert matcher.hold_back("by T o ") == 4  # could become "T o l k i e n"
    assert matcher.hold_back("by J.R.R. ") == 7
    assert matcher.hold_back("Bilbo Bag") == 9
    assert matcher.hold_back("Tol\u200b\u200b") == 5


def test_split_name_blocks_after_partial_release(matcher: ForbiddenMatcher) -> None:
    gate = StreamGate(matcher)
    assert gate.feed("Written by ").text == "Written by "
    assert gate.feed("Tol").text == ""
    step = gate.feed("kien.")
    assert step.blocked and step.text == ""
    assert gate.feed("more text").blocked
    assert gate.finish().blocked


def test_padding_cannot_push_prefix_out_of_window(matcher: ForbiddenMatcher) -> None:
    cases = [("by Tol", pad, "kien") for pad in ["\u200b" * 1500, "\u0301" * 1000, "\u00ad\u2060" * 600]]
    cases += [("a Bilbo", pad, "Baggins") for pad in [" " * 1500, "\n \t" * 400]]
    for head, pad, rest in cases:
        text = head + pad + rest
        for chunks in ([text], list(text), random_chunks(random.Random(1), text)):
            released, blocked = run_gate(matcher, chunks, max_hold_chars=16)
            assert blocked, repr(pad[:3])
    released, blocked = run_gate(matcher, ["Bilbo", " " * 3000, "Baggins"], max_hold_chars=8)
    assert blocked and "Bilbo" in released  # the prefix was released past the cap, the name never


def test_long_base64_blob_streams_and_is_bounded(matcher: ForbiddenMatcher) -> None:
    blob = base64.b64encode(random.Random(3).randbytes(3000)).decode()
    gate = StreamGate(matcher, max_hold_chars=64)
    released = "".join(gate.feed(blob[i : i + 50]).text for i in range(0, len(blob), 50))
    assert len(blob) - len(released) <= 64
    assert not gate.blocked
    assert released + gate.finish().text == blob
    hidden = blob[:1000] + base64.b64encode(b"xx Tolkien xx").decode() + blob[1000:]
    _, blocked = run_gate(matcher, [hidden[i : i + 50] for i in range(0, len(hidden), 50)], max_hold_chars=64)
    assert blocked


def test_base64_run_held_until_it_ends(matcher: ForbiddenMatcher) -> None:
    gate = StreamGate(matcher)
    assert gate.feed("see QUJDREVGR0hJSktM").text == "see "  # decodes to ABCDEFGHIJKL
    assert gate.feed(" ok").text == "QUJDREVGR0hJSktM ok"


@pytest.fixture(scope="module")
def al() -> ForbiddenMatcher:
    return ForbiddenMatcher(["Al", "Tolkien"])


@pytest.mark.parametrize("text", ["Al went home", "Ask Al.", "(Al)", "Al", "AL!", "Al\u200b is", "so: A l and"])
def test_short_alias_at_word_boundary(al: ForbiddenMatcher, text: str) -> None:
    if text == "so: A l and":
        assert al.first_match(text) is None  # two letters do not collapse
        return
    m = al.first_match(text)
    assert m is not None and normalise(text[m.start : m.end], strict=True).text == "al"
    assert redact(text, al) == ("", True)


@pytest.mark.parametrize("text", ["also", "Alberta", "Hal", "AI is everywhere", "A1 paper", "pal", "minimal", "Al2O3"])
def test_short_alias_not_inside_words(al: ForbiddenMatcher, text: str) -> None:
    assert al.first_match(text) is None
    assert redact(text, al) == (text, False)
    for chunks in [list(text), *splits2(text)]:
        assert run_gate(al, chunks) == (text, False)


def test_short_alias_stream_waits_for_boundary(al: ForbiddenMatcher) -> None:
    gate = StreamGate(al)
    assert gate.feed("I saw Al").text == "I saw "
    assert gate.feed("so").text == "Also"
    gate = StreamGate(al)
    gate.feed("I saw Al")
    assert gate.feed(" there").blocked
    gate = StreamGate(al)
    gate.feed("I saw Al")
    assert gate.finish().blocked


def test_first_match_offsets_and_patterns(matcher: ForbiddenMatcher) -> None:
    text = "Yes, Hermione  Granger met T o l k i e n."
    m = matcher.first_match(text)
    assert m is not None and text[m.start : m.end] == "Hermione  Granger" and NAMES[m.pattern] == "Hermione Granger"
    m = matcher.first_match("x neikloT y")
    assert m is not None and (m.start, m.end) == (2, 9) and not m.encoded
    enc = base64.b64encode(b"Bilbo Baggins").decode()
    m = matcher.first_match(f"a {enc} b")
    assert m is not None and m.encoded and (m.start, m.end) == (2, 2 + len(enc)) and NAMES[m.pattern] == "Bilbo Baggins"
    assert matcher.first_match("Tolkien is here", min_end=8) is None


def test_redact(matcher: ForbiddenMatcher) -> None:
    assert redact("nothing to see", matcher) == ("nothing to see", False)
    assert redact("by T0LK1EN", matcher) == ("", True)


def test_empty_matcher() -> None:
    for m in [ForbiddenMatcher([]), ForbiddenMatcher(["", "  ", "..."])]:
        assert m.empty and m.first_match("Tolkien") is None and m.hold_back("Tol") == 0
        gate = StreamGate(m)
        assert gate.feed("Tol").text == "Tol"
        assert gate.finish().text == ""
    assert not ForbiddenMatcher(["Al"]).empty


def test_gate_lifecycle(matcher: ForbiddenMatcher) -> None:
    gate = StreamGate(matcher)
    gate.feed("Tol")
    assert gate.finish().text == "Tol"
    assert gate.finish().text == ""
    with pytest.raises(RuntimeError):
        gate.feed("x")


def test_trailing_leet_symbol_held_with_what_precedes(al: ForbiddenMatcher) -> None:
    assert al.hold_back("see Al|") == 3
    assert al.hold_back("see Tolk!") == 5
    assert al.hold_back("Hello world!") == 0
    gate = StreamGate(al)
    assert gate.feed("see Al|").text == "see "
    assert gate.feed("x").text == "Al|x"  # "aiix": one word, not the alias
    gate = StreamGate(al)
    gate.feed("see Al|")
    assert gate.finish().blocked


def test_released_part_is_clean_on_its_own() -> None:
    m = ForbiddenMatcher(["Al", "Bilbo Baggins"])  # reversed key "snigg..." makes "s" a prefix
    assert m.hold_back("Als") == 1
    gate = StreamGate(m)
    assert gate.feed("Als").text == ""  # releasing "Al" alone would show the alias
    assert gate.feed("o ok").text == "Also ok"


@pytest.mark.parametrize("seed", range(3))
def test_random_streams_invariants(seed: int) -> None:
    matcher = ForbiddenMatcher([*NAMES, "Al", "Ron", "Eowyn"])
    rng = random.Random(seed)
    vocab = ["the", "Tol", "kien", "T", "o", "l", "k", "i", "e", "n", "Bilbo", "Bag", "gins", "Tolstoy", " ", " ", " ",
             ".", "-", "\u200b", "0", "1", "Hermione", "Granger", "To", "J.", "R.", "VG9sa2llbg==", "neik", "loT",
             "Al", "Ron", "so", "!", "|", "$", "@", "Е", "ο", "\u0301", "QmlsYm8gQmFnZ2lucw", "I", "AI", "wyn"]
    seen_clean = seen_dirty = 0
    for _ in range(1500):
        text = "".join(rng.choice(vocab) for _ in range(rng.randrange(1, 12)))
        released, blocked = run_gate(matcher, random_chunks(rng, text), max_hold_chars=rng.choice([4, 16, 256]))
        if matcher.first_match(text) is not None:
            seen_dirty += 1
            assert blocked, text
        if not blocked:
            seen_clean += 1
            assert released == text
    assert seen_clean > 100 and seen_dirty > 100


def fake_name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randrange(5, 14))) + " " + "".join(
        rng.choice(string.ascii_lowercase) for _ in range(rng.randrange(4, 10)))


def test_100k_patterns() -> None:
    rng = random.Random(11)
    names = [fake_name(rng) for _ in range(100_000)] + ["Tolkien", "Al"]
    m = ForbiddenMatcher(names)
    assert len(m) == 100_002
    hit = m.first_match("The author is Tolkien.")
    assert hit is not None and names[hit.pattern] == "Tolkien"
    probe = names[54_321]
    hit = m.first_match(f"Meet {probe.title()}!")
    assert hit is not None and names[hit.pattern] == probe
    assert m.hold_back("by Tol") == 3
    assert m.hold_back("by " + probe[:6]) == 6
    assert m.first_match("Al said hi") is not None
    clean = "1234 5678 ... ??? !!! " * 3
    assert m.first_match(clean) is None
    assert run_gate(m, list("Hello world. 42!")) == ("Hello world. 42!", False)
    assert run_gate(m, ["Dear ", probe[:4], probe[4:], " bye"])[1]
