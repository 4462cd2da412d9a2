"""Misspelt target terms in a prompt: "who wrote teh hobitt", "einstien's theory".

Exact matching (names, cue terms) and MiniLM both miss typos: "hobitt" is neither
"hobbit" to Aho-Corasick nor close enough in embedding space. This index finds a
prompt word within one edit of a target's term on each side (symmetric deletion,
as in SymSpell): one substitution, insertion, deletion or adjacent swap, and also
a shifted double letter ("hobitt" ~ "hobbit": both become "hobit").

Cost stays flat in the number of targets:

* only *unknown* prompt words are looked up: 5+ characters and rarer than any
  ordinary word (wordfreq Zipf < 2.0, so "teh", "there" and "definitely" never are);
  a clean prompt usually has none and pays nothing;
* each lookup is a handful of binary searches over one sorted array of 64-bit
  hashes of every term's deletion variants (built once per target snapshot;
  ~9 variants a term, 16 bytes each);
* a variant shared by more than `MAX_OWNERS` targets identifies none of them
  ("Abernaty" when thousands of people are called Abernathy) and is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache

import numpy as np

from gateway.store.models import ForgetTarget
from guards.key_terms import zipf
from guards.normalize import normalise

MIN_LEN = 5
QUERY_MAX_ZIPF = 2.0
MAX_OWNERS = 3

_QUERY_WORD = re.compile(r"[^\W_]{5,}")


@lru_cache(maxsize=65536)
def fold(word: str) -> str:
    """The gate's normalisation (case, accents, homoglyphs, leetspeak) without separators."""
    return normalise(word).text.replace(" ", "")


def variants(folded: str) -> Iterator[str]:
    """The word and every string one deletion away from it."""
    yield folded
    seen = {folded}
    for i in range(len(folded)):
        v = folded[:i] + folded[i + 1:]
        if v not in seen:
            seen.add(v)
            yield v


@lru_cache(maxsize=65536)
def _variant_hashes(term: str) -> tuple[int, ...]:
    """Hashes of the folded term's variants (per process, like the index itself: never stored)."""
    folded = fold(term)
    return tuple(hash(v) for v in variants(folded)) if len(folded) >= MIN_LEN else ()


class FuzzyTermIndex:
    """Which targets own a term within one edit of a prompt's unknown words."""

    def __init__(self, hashes: np.ndarray, owners: np.ndarray, ids: tuple[str, ...]):
        self._hashes = hashes
        self._owners = owners
        self._ids = ids

    @classmethod
    def build(cls, targets: Iterable[ForgetTarget], terms: Callable[[ForgetTarget], Iterable[str]]) -> FuzzyTermIndex:
        hashes: list[int] = []
        owners: list[int] = []
        ids: list[str] = []
        for target in targets:
            owner = len(ids)
            ids.append(target.id)
            for term in terms(target):
                found = _variant_hashes(term)
                hashes.extend(found)
                owners.extend([owner] * len(found))
        table = np.unique(np.array([hashes, owners], dtype=np.int64).reshape(2, -1), axis=1)  # sorted by hash
        return cls(np.ascontiguousarray(table[0]), table[1].astype(np.int32), tuple(ids))

    @property
    def empty(self) -> bool:
        return not len(self._hashes)

    def targets_in(self, text: str, score: float) -> dict[str, float]:
        """Targets owning a term one edit away from an unknown word of `text`, each with `score`."""
        found: dict[str, float] = {}
        if self.empty:
            return found
        for word in dict.fromkeys(m.group() for m in _QUERY_WORD.finditer(text)):
            if word.isdigit() or zipf(word.lower()) >= QUERY_MAX_ZIPF:
                continue
            owners = self._owners_near(fold(word))
            if 0 < len(owners) <= MAX_OWNERS:
                found.update((self._ids[o], score) for o in owners)
        return found

    def _owners_near(self, folded: str) -> set[int]:
        """Owners of the word's variants; more than `MAX_OWNERS` as soon as one variant has more.
        Rows are unique (hash, owner) pairs, so a run longer than `MAX_OWNERS` settles it without
        reading the run: "Abernathi" against 100,000 Abernathys once copied 100,000 owners (3 ms)."""
        owners: set[int] = set()
        for v in variants(folded):
            h = hash(v)
            lo = int(np.searchsorted(self._hashes, h, side="left"))
            hi = int(np.searchsorted(self._hashes, h, side="right"))
            if hi - lo > MAX_OWNERS:
                return set(self._owners[lo:lo + MAX_OWNERS + 1].tolist())
            owners.update(self._owners[lo:hi].tolist())
            if len(owners) > MAX_OWNERS:
                break
        return owners
