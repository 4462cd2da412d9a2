"""Names split across the prompt/output boundary: "... written by J.R.R. Tol" + "kien".

The token trie (`guards.token_trie`) bans the tokenisations a tokenizer gives a
whole name; a prompt that stops inside one ("Tol") leaves the model to finish it
with a piece no whole-name tokenisation contains ("kien"). This works on text
instead of token ids, so every tokenisation of the rest is covered:

* `TailForms.remainders` finds, for the decoded prompt tail, what is left of each
  surface form whose beginning the tail ends with (starting at a word start:
  "tol" -> "kien", "j.r.r." -> " tolkien"), case-insensitively;
* `TailBan` then bans at each step every token whose text finishes such a
  remainder ("kien", "kiens", "k" + "ien") and penalises those that walk into one
  ("k"), exactly like the trie does for whole names; once the output leaves all
  remainders it costs nothing.

The vocabulary's token texts are decoded once per tokenizer (`VocabPieces.of`).
The output gate checks the same boundary on text (`StreamGate(context=...)`); this
only keeps the model from walking into a refusal.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = ["VocabPieces", "TailForms", "TailBan"]

_LOCK = threading.Lock()
_VOCABS: dict[int, tuple[Any, "VocabPieces"]] = {}  # id(tokenizer) -> (tokenizer kept alive, pieces)


class VocabPieces:
    """Lower-cased text of every token id, indexed by exact text and sorted for prefix ranges."""

    __slots__ = ("pieces", "_by_piece", "_sorted", "_sorted_ids")

    def __init__(self, pieces: Sequence[str]):
        self.pieces = [p.lower() for p in pieces]
        by_piece: dict[str, list[int]] = {}
        for token_id, piece in enumerate(self.pieces):
            if piece:
                by_piece.setdefault(piece, []).append(token_id)
        self._by_piece = by_piece
        order = sorted(range(len(self.pieces)), key=self.pieces.__getitem__)
        self._sorted = [self.pieces[i] for i in order]
        self._sorted_ids = order

    @classmethod
    def of(cls, tokenizer: Any) -> VocabPieces:
        """Built once per tokenizer object (about half a second for a 49k vocabulary)."""
        with _LOCK:
            cached = _VOCABS.get(id(tokenizer))
            if cached is not None and cached[0] is tokenizer:
                return cached[1]
        size = len(tokenizer)
        pieces = tokenizer.batch_decode([[i] for i in range(size)])
        vocab = cls(pieces)
        with _LOCK:
            _VOCABS[id(tokenizer)] = (tokenizer, vocab)
        return vocab

    def exactly(self, text: str) -> list[int]:
        return self._by_piece.get(text, [])

    def starting_with(self, text: str) -> list[int]:
        """Ids whose text begins with `text` (itself included)."""
        lo = bisect.bisect_left(self._sorted, text)
        hi = bisect.bisect_left(self._sorted, text + "\U0010ffff")
        return self._sorted_ids[lo:hi]


class TailForms:
    """The forbidden surface forms (lower-cased, no leading space), sorted for prefix lookups."""

    __slots__ = ("tokenizer", "vocab", "_forms", "max_len")

    def __init__(self, tokenizer: Any, forms: Iterable[str]):
        self.tokenizer = tokenizer
        self.vocab = VocabPieces.of(tokenizer)
        self._forms = sorted({f.strip().lower() for f in forms if f.strip()})
        self.max_len = max(map(len, self._forms), default=0)

    def remainders(self, tail: str) -> frozenset[str]:
        """What would finish a form begun at a word start in the last chars of `tail`."""
        tail = tail.lower()
        found: set[str] = set()
        for p in range(max(0, len(tail) - self.max_len), len(tail)):
            if not tail[p].isalnum() or (p and tail[p - 1].isalnum()):
                continue
            begun = tail[p:]
            i = bisect.bisect_left(self._forms, begun)
            while i < len(self._forms) and self._forms[i].startswith(begun):
                rest = self._forms[i][len(begun) :]
                if rest and rest.lstrip("'’") not in ("", "s"):  # not the possessive of a name already said
                    found.add(rest)
                i += 1
        return frozenset(found)

    def tail_text(self, prompt_ids: Sequence[int]) -> str:
        """The prompt's last chars, decoded from enough tokens to hold any form."""
        return self.tokenizer.decode(list(prompt_ids[-(self.max_len + 2) :]))


class TailBan:
    """Per-sequence state of the boundary ban; `TrieRestriction` calls it before its own rules."""

    __slots__ = ("_forms", "_left", "_seen")

    def __init__(self, forms: TailForms):
        self._forms = forms
        self._left: frozenset[str] = frozenset()
        self._seen = -1  # output tokens consumed; -1: prompt not read yet

    def _advance(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> frozenset[str]:
        if self._seen < 0 or len(output_ids) < self._seen:
            self._left, self._seen = self._forms.remainders(self._forms.tail_text(prompt_ids)), 0
        pieces = self._forms.vocab.pieces
        while self._left and self._seen < len(output_ids):
            token = output_ids[self._seen]
            piece = pieces[token] if 0 <= token < len(pieces) else ""
            self._left = frozenset(r[len(piece) :] for r in self._left if piece and r.startswith(piece) and r != piece)
            self._seen += 1
        self._seen = len(output_ids)
        return self._left

    def ids(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """(completing, extending) token ids at this step: those that finish a remainder, those that walk into one."""
        left = self._advance(prompt_ids, output_ids)
        if not left:
            return [], []
        vocab = self._forms.vocab
        complete: set[int] = set()
        extend: set[int] = set()
        for rest in left:
            complete.update(vocab.starting_with(rest))
            for k in range(1, len(rest)):
                extend.update(vocab.exactly(rest[:k]))
        return sorted(complete), sorted(extend - complete)


def as_index(ids: list[int], size: int) -> torch.Tensor:
    """Ids within the logits row, as an index tensor."""
    return torch.tensor([i for i in ids if i < size], dtype=torch.long)
