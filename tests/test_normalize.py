"""Folding rules of guards.normalize: each rule, offsets, and the squeeze invariant."""

from __future__ import annotations

import random
import string

import pytest

from guards.normalize import fold_char, normalise, squeeze, squeeze_append, trailing_letter_run


def n(text: str, **kw: bool) -> str:
    return normalise(text, **kw).text


TOLKIEN = n("Tolkien")


def test_plain_word_and_case() -> None:
    assert n("TOLKIEN") == n("tolkien") == n("Tolkien") == "toikien"
    assert n("Hermione Granger") == "hermione granger"


@pytest.mark.parametrize(
    "raw,plain",
    [
        ("Éowyn", "Eowyn"),
        ("Tolkíén", "Tolkien"),
        ("To\u0301lkien", "Tolkien"),  # combining acute
        ("𝐓𝐨𝐥𝐤𝐢𝐞𝐧", "Tolkien"),  # math bold (NFKC)
        ("ＴＯＬＫＩＥＮ", "Tolkien"),  # fullwidth
        ("ﬁnrod", "finrod"),  # ligature
        ("Straße", "strasse"),  # casefold
        ("İsildur", "isildur"),
        ("ⓣⓞⓛⓚⓘⓔⓝ", "Tolkien"),  # circled
    ],
)
def test_unicode_compat_accents_casefold(raw: str, plain: str) -> None:
    assert n(raw) == n(plain)


@pytest.mark.parametrize("ch", ["\u200b", "\u200c", "\u200d", "\u00ad", "\ufeff", "\u2060", "\u180e", "\u2062", "\x00", "\u3164"])
def test_invisible_chars_removed(ch: str) -> None:
    assert n(f"Tol{ch}kien") == TOLKIEN
    assert n(f"{ch}T{ch}o{ch}l{ch}k{ch}i{ch}e{ch}n{ch}") == TOLKIEN


CYRILLIC = {"а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
            "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "А": "a", "В": "b", "Е": "e", "К": "k",
            "М": "m", "Н": "h", "О": "o", "Р": "p", "С": "c", "Т": "t", "Х": "x", "І": "i", "Ј": "j", "Ѕ": "s"}
GREEK = {"α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
         "Α": "a", "Β": "b", "Ε": "e", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n", "Ο": "o", "Ρ": "p", "Τ": "t",
         "Χ": "x", "Υ": "y", "Ζ": "z"}
OTHER = {"ı": "i", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ɑ": "a", "ɡ": "g"}


@pytest.mark.parametrize("glyph,latin", sorted({**CYRILLIC, **GREEK, **OTHER}.items()))
def test_homoglyphs_fold_to_latin(glyph: str, latin: str) -> None:
    assert n(glyph) == n(latin)
    assert n(f"x{glyph}y") == n(f"x{latin}y")


def test_homoglyph_words() -> None:
    assert n("Тоlkiеn") == TOLKIEN  # Cyrillic Т о е
    assert n("ΗΕRΜΙΟΝΕ") == n("Hermione")  # Greek capitals


@pytest.mark.parametrize("digit,letter", [("0", "o"), ("1", "i"), ("3", "e"), ("4", "a"), ("5", "s"), ("7", "t"), ("8", "b"), ("9", "g")])
def test_leet_digits(digit: str, letter: str) -> None:
    assert n(f"x{digit}y") == n(f"x{letter}y")
    assert n(digit) == n(letter)


def test_i_l_one_class() -> None:
    bilbo = n("Bilbo")
    for spelling in ["B1lbo", "Bi1bo", "B11bo", "BiIbo", "B|lbo", "B!lbo", "BILBO", "Biłbo", "Bіlbo"]:
        assert n(spelling) == bilbo, spelling
    assert n("T0lk1en") == n("7olki3n") == TOLKIEN
    assert n("Ro11ing") == n("Rolling")


def test_leet_symbols_only_inside_words() -> None:
    assert n("@lbus") == n("Albus")
    assert n("B@gg1n$") == n("Baggins")
    assert n("Baggin$ went") == n("Baggins went")
    assert n("Al!") == n("Al") + "!"  # sentence punctuation stays a boundary
    assert n("Wow! Really") == "wow! reaiiy"
    assert n("costs $ 5") == "costs $ s"
    assert n("a | b") == "a | b"


def test_whitespace_runs_and_dashes() -> None:
    assert n("Hermione \t\n\u00a0 Granger") == "hermione granger"
    assert n("Hermione-Granger") == n("Hermione_Granger") == n("Hermione — Granger") == "hermione granger"
    assert n("  a  ") == " a "


def test_curly_quotes() -> None:
    assert n("Philosopher’s Stone") == n("Philosopher's Stone")
    assert n("“Hi”") == n('"Hi"')


@pytest.mark.parametrize(
    "spaced",
    ["T o l k i e n", "T.o.l.k.i.e.n", "T-o-l-k-i-e-n", "T_o_l_k_i_e_n", "T o-l.k i e n", "T . o . l . k . i . e . n",
     "T/o/l/k/i/e/n", "T*o*l*k*i*e*n", "T  o \n l k i e n", "T·o·l·k·i·e·n", "T, o, l, k, i, e, n"],
)
def test_spaced_letters_collapse(spaced: str) -> None:
    assert n(spaced) == TOLKIEN
    assert n(f"by {spaced} now") == f"by {TOLKIEN} now"
    assert n(f"by {spaced}, sir") == f"by {TOLKIEN} sir"  # separators after a run become one space


def test_collapse_thresholds() -> None:
    assert n("a b") == "a b"  # fewer than 3 letters: prose left alone
    assert n("a b c") == "abc"
    assert n("T....o....l....k") == "t....o....i....k"  # > 3 separators: not a spaced word
    assert n("To l k i e n") == "to ikien"  # multi-letter token ends the run
    assert n("A. B.") == "a. b."


def test_initials_runs() -> None:
    target = n("J.R.R. Tolkien")
    assert target == "jrr toikien"
    for form in ["JRR Tolkien", "J. R. R. Tolkien", "J.R.R.Tolkien", "J R R Tolkien", "j.r.r. tolkien"]:
        assert n(form) == target, form
    assert n("by J.R.R.") == "by jrr."


def test_punctuation_kept() -> None:
    assert n("Tolkien's (1892), 'Hobbit'.") == "toikien's (ibg2), 'hobbit'."


def test_strict_mode_keeps_digits_and_l() -> None:
    assert n("AI Al A1", strict=True) == "ai al a1"
    assert n("AI Al A1") == "ai ai ai"
    assert n("Тоlkiеn", strict=True) == "tolkien"
    assert n("T o l k i e n", strict=True) == "tolkien"
    assert n("B!lbo $", strict=True) == "b!lbo $"


def test_origin_maps_back_to_raw() -> None:
    raw = "Ask: who is T o\u200b l-k i e n?"
    nt = normalise(raw)
    at = nt.text.index(TOLKIEN)
    start, end = nt.raw_span(at, at + len(TOLKIEN))
    assert raw[start:end] == "T o\u200b l-k i e n"
    raw2 = "Straße ﬁne"
    nt2 = normalise(raw2)
    assert nt2.text == "strasse fine"
    assert nt2.origin == [0, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9]


ALPHABET = "aAbTolkien iIl1|!$@0.-_ \u200b\u0301Оо·,\n\t" + "ß"


def random_text(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(size))


def test_origin_properties_random() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        raw = random_text(rng, rng.randrange(0, 30))
        nt = normalise(raw)
        assert len(nt.origin) == len(nt.text)
        assert all(0 <= o < len(raw) for o in nt.origin)
        assert list(nt.origin) == sorted(nt.origin)
        for ch, o in zip(nt.text, nt.origin):
            assert ch == " " or ch in fold_char(raw[o]) or ch in "aisi" or raw[o] in "@$!|", (raw, ch, o)


def test_squeeze_preserves_normal_form() -> None:
    rng = random.Random(2)
    for _ in range(3000):
        raw = random_text(rng, rng.randrange(0, 25))
        assert n(squeeze(raw)) == n(raw), repr(raw)
    assert squeeze("a \u200b\n\t b\u0301") == "a b"


def test_trailing_letter_run() -> None:
    assert [f for _, f in trailing_letter_run("by T o ", 10)] == ["t", "o"]
    assert trailing_letter_run("Hello ", 10) == []
    assert trailing_letter_run("Hello T", 10) == [(6, "t")]
    assert [f for _, f in trailing_letter_run("J.R.R.", 10)] == ["j", "r", "r"]
    assert trailing_letter_run("T . . . . o", 10) == [(10, "o")]  # too many separators
    assert len(trailing_letter_run("a b c d e f", 3)) == 3


def test_fold_char() -> None:
    assert fold_char("\u200b") == ""
    assert fold_char("\n") == " "
    assert fold_char("$") == "$"
    assert fold_char("Ł") == "i" and fold_char("Ł", strict=True) == "l"


def test_the_ascii_fast_path_folds_exactly_like_the_general_path() -> None:
    """Plain ASCII skips the per-char loop; it must give the same text and origins, or fall back."""
    from guards.normalize import _normalise_general

    rng = random.Random(7)
    tricky = string.ascii_letters + string.digits + "  .,-_!|@$'\";:/*+~=\\\t\n?()\x00\x7f"
    took_fast_path = 0
    for _ in range(20_000):
        pool = tricky if rng.random() < 0.5 else string.ascii_lowercase + " .'"
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
        for strict in (False, True):
            fast, general = normalise(text, strict=strict), _normalise_general(text, strict)
            took_fast_path += isinstance(fast.origin, range)
            assert (fast.text, list(fast.origin)) == (general.text, list(general.origin)), (text, strict)
    assert took_fast_path > 10_000  # the fast path is really taken for ordinary text


def test_squeeze_fast_path_and_append_match_the_whole_squeeze() -> None:
    rng = random.Random(11)
    pool = string.ascii_letters + "  \t\n\r\x00\x0b\x1c\u200b\u00a0é"
    for _ in range(20_000):
        a = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        assert squeeze_append(squeeze(a), b) == squeeze(a + b), (a, b)
    assert squeeze("plain text, nothing to do.") == "plain text, nothing to do."
    assert squeeze("two  spaces\tand a tab") == "two spaces and a tab"
