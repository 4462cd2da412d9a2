"""The words that identify a target, beyond its name: what GUARD bans while the target is in play.

A name ban alone is easy to route around: asked "who wrote The Hobbit?", a model
that may not say "Tolkien" still says "Gandalf", "Middle-earth", "Oxford". The
issue's forbidden sequences therefore cover the target's *key facts* too. They
come from what the admin registered (description and facts), chosen so that
ordinary words never are:

* name words: distinctive capitalised words of the name and aliases ("Tolkien",
  "Reuel"), plus the singular of a plural ("Beatles" -> "Beatle");
* proper nouns: capitalised words that do not open a sentence and are not common
  English (word frequency from `wordfreq`, Zipf < 4.5: "Hogwarts", "Liverpool",
  "Watson" yes; "English", "Street", "Help" no), and capitalised compounds
  ("Middle-earth", "Anglo-Saxon");
* rare words: lowercase words of 5+ letters with Zipf < 3.5 ("polonium",
  "relativity", "legendarium"; not "lightning", "detective");
* numbers of 3+ digits ("1937", "8,848", "221B").

They apply only while detection says the target is in play, so an unrelated
answer may still say "Oxford"; the always-on floor (`floor_names`) stays the names,
aliases and the singulars of plural names, plus the *distinctive parts* of names
(`name_parts`: "Einstein" of "Albert Einstein", "Curie", "Sklodowska"): surname-like
words that are no common English word (Zipf < 4.0), so "Dr. Hans Einstein" cannot stand
in for the target when detection misses the question. A surname that is also an
ordinary word ("Potter", "Swift") and first names ("Harry", "Albert") are not banned on
their own: they are key terms, banned only while the target is in play. The output
gate lets a part through when the user wrote it ("Who was Pierre Curie?"): echoing the
user's own word reveals nothing, as for key terms.

`cue_terms` are the rarest of them (Zipf < 3.0: "Quenya", "Quidditch", "polonium"):
one in a prompt puts the target in play, as a name would, because almost nothing
else is about it ("Qu3nya" too: matching uses the gate's normalisation).

`fuzzy_terms` (distinctive name words and rare fact terms: "Tolkien", "Hobbit") are
what a *misspelt* prompt word is matched against (`guards.fuzzy_terms`): "hobitt" is
no English word, so it is a typo of something, and near "Hobbit" it is that.
"""

from __future__ import annotations

import re
from functools import lru_cache

from gateway.store.models import ForgetTarget

PROPER_NOUN_MAX_ZIPF = 4.5
RARE_WORD_MAX_ZIPF = 3.5
RARE_WORD_MIN_LEN = 5
CUE_MAX_ZIPF = 3.0
FUZZY_MAX_ZIPF = 3.5
FUZZY_NAME_MAX_ZIPF = 4.2
NAME_WORD_MIN_LEN = 4
NAME_PART_MAX_ZIPF = 4.0

# Capitalised name words too common to ban on their own ("Mount" of "Mount Everest").
_COMMON_NAME_WORDS = frozenset(
    "the of and a an lord lady king queen prince princess saint sir dame doctor mount lake river city "
    "new old great little big first second third university college book books series band group".split()
)
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_TOKEN = re.compile(r"\d[\d,.]*\d[A-Za-z]?|\d+[A-Za-z]?|[^\W\d_][\w’'-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;()\"“]\s*)$")


@lru_cache(maxsize=65536)
def zipf(word: str) -> float:
    """How common `word` is in English: log10 of its frequency per billion words (0 = unknown)."""
    from wordfreq import zipf_frequency  # loads its tables on first use

    return zipf_frequency(word, "en")


def name_words(target: ForgetTarget) -> list[str]:
    """Distinctive single words of the name and aliases ("Tolkien", "Granger", "Beatle")."""
    words: list[str] = []
    for phrase in target.surface_names:
        for word in _WORD.findall(phrase):
            if len(word) >= NAME_WORD_MIN_LEN and word[0].isupper() and word.lower() not in _COMMON_NAME_WORDS:
                words.append(word)
                words.extend(_singular(word))
    return list(dict.fromkeys(words))


def floor_names(target: ForgetTarget) -> list[str]:
    """What the always-on floor bans: the names and aliases, the singular of a plural name, and
    the distinctive parts of names (`name_parts`)."""
    singulars = [s for phrase in target.surface_names for w in _WORD.findall(phrase) for s in _singular(w)]
    return list(dict.fromkeys([*target.surface_names, *singulars, *name_parts(target)]))


def name_parts(target: ForgetTarget) -> list[str]:
    """Surname-like parts that identify the target on their own: the last word of each multi-word
    name or alias (and each part of it when hyphenated), capitalised, 4+ letters and no common
    English word (Zipf < 4.0: "Einstein", "Curie", "Sklodowska"; not "Potter", "Swift", "Holmes").
    First and middle names ("Albert", "Alison") are left to the in-play key terms."""
    whole = {name.casefold() for name in target.surface_names}
    parts: list[str] = []
    for phrase in target.surface_names:
        words = _WORD.findall(phrase)
        if len(words) < 2:
            continue
        last = words[-1].rstrip("'’")
        for part in dict.fromkeys([last, *last.split("-")]):
            if (len(part) >= NAME_WORD_MIN_LEN and part[0].isupper() and part.casefold() not in whole
                    and part.lower() not in _COMMON_NAME_WORDS and zipf(part) < NAME_PART_MAX_ZIPF):
                parts.append(part)
    return list(dict.fromkeys(parts))


def _singular(word: str) -> list[str]:
    """"Beatles" -> ["Beatle"]: a model kept from a plural name reaches for its singular."""
    if (word[0].isupper() and word.endswith("s") and not word.endswith("ss") and len(word) > NAME_WORD_MIN_LEN + 1
            and word.lower() not in _COMMON_NAME_WORDS):
        return [word[:-1]]
    return []


def fact_terms(target: ForgetTarget) -> list[str]:
    """Proper nouns, rare words and numbers of the target's description and facts."""
    terms: list[str] = []
    for text in [target.description or "", *target.facts]:
        for match in _TOKEN.finditer(text):
            word = match.group().rstrip("'’-")
            if word[0].isdigit():
                if sum(c.isdigit() for c in word) >= 3:
                    terms.append(word)
                continue
            core = word.split("'")[0].split("’")[0]
            if word[0].isupper():
                opens_sentence = _SENTENCE_START.search(text[: match.start()]) is not None
                compound = "-" in core and core.split("-")[0].isalpha()
                if (not opens_sentence and len(core) >= NAME_WORD_MIN_LEN and core.lower() not in _COMMON_NAME_WORDS
                        and (compound or zipf(core) < PROPER_NOUN_MAX_ZIPF)):
                    terms.append(core)
            elif len(core) >= RARE_WORD_MIN_LEN and zipf(core) < RARE_WORD_MAX_ZIPF:
                terms.append(core)
    return list(dict.fromkeys(terms))


def key_terms(target: ForgetTarget) -> list[str]:
    """Everything GUARD bans for a target in play, name words first."""
    return list(dict.fromkeys([*name_words(target), *fact_terms(target)]))


def cue_terms(target: ForgetTarget) -> list[str]:
    """Fact terms rare enough (Zipf < 3.0) that a prompt containing one is about the target.

    Matching ignores case, so capitalisation cannot vouch for a cue: "Revolver" (an album)
    is "revolver" (3.4) in a question about guns, "Bern" a city; "Quenya", "polonium",
    "Moriarty" (< 3.0) are about almost nothing else."""
    return [t for t in fact_terms(target) if not t[0].isdigit() and zipf(t) < CUE_MAX_ZIPF]


def fuzzy_terms(target: ForgetTarget) -> list[str]:
    """Single words a misspelling in a prompt is matched against: distinctive name words
    (Zipf < 4.2: "Einstein", "Holmes"; not "Harry", "Albert"), capitalised fact terms with
    Zipf < 3.5 ("Hobbit", not "Oxford") and lowercase ones as rare as cues ("polonium")."""
    names = [w for w in name_words(target) if w.isalpha() and zipf(w) < FUZZY_NAME_MAX_ZIPF]
    facts = [t for t in fact_terms(target)
             if t.isalpha() and zipf(t) < (FUZZY_MAX_ZIPF if t[0].isupper() else CUE_MAX_ZIPF)]
    return list(dict.fromkeys([*names, *facts]))
