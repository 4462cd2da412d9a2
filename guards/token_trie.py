"""GUARD's generation-time restriction: never emit the token that completes a forbidden phrase.

GUARD (arXiv 2505.13312) keeps the model from *spelling* a forgotten name: every
surface form of the name is tokenised, the token sequences go into a trie, and
while decoding, the token that would finish one of those sequences is banned
(or penalised), while tokens that merely walk deeper into one are penalised
softly.  Banning the *completing* token rather than the first one matters: the
first token of "J.R.R. Tolkien" is " J", which the model needs for "J.K." too.

State tracking is an Aho-Corasick automaton over token ids: one integer state
per sequence (the longest suffix of the output that is a trie path); all partial
matches ending at the current position are that node plus its failure chain.
Each node's completing/extending child ids sit in flat tensors, and a shortcut
link skips chain nodes without children, so a decode step is a few dict
lookups plus a few in-place writes to those ids; nothing touches the whole
vocab.  Sets are not merged along chains at build time: a popular first token
(" The") has thousands of children, and copying them into every node whose
chain passes through it made building 3,000 targets take 18 s.  pyahocorasick, though a dependency,
cannot serve here: it matches strings and exposes no per-token state stepping.

Tokenisations covered by `forbidden_sequences` (what the tokenizer itself would
produce for the phrase in running text, not every possible spelling):

* each surface form alone, with and without a leading space (byte-level BPE
  gives " Tolkien" and "Tolkien" different ids);
* each form without a leading space right after a newline, "(" or a double quote
  (standing for any punctuation: "**", "'", "-" behave alike), with the context's
  tokens stripped when the context encodes to those same leading tokens on its
  own (a clean split; otherwise the variant is skipped).  Regex-pre-tokenised BPE
  (GPT-2, SmolLM2, Llama 3) yields nothing new here; SentencePiece-style
  tokenizers (Llama 2, Mistral) do, as they mark word starts themselves.

Non-canonical spellings the model might choose (" Tol" + "kien") are not
enumerated; the prefix penalty and the output gate cover those, and a prompt that
ends inside a name is handled on text (`guards.tail_ban`, via `TokenTrie.tail_forms`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import torch

from guards.tail_ban import TailBan, TailForms, as_index

__all__ = ["surface_forms", "forbidden_sequences", "TokenTrie", "TrieRestriction", "ROOT"]

ROOT = 0
# Text that commonly precedes a name in model output without a space.
_CONTEXTS = ("\n", "(", '"')
_INITIALS = re.compile(r"(?<!\S)(?:[^\W\d_]\. ?)*[^\W\d_]\.(?=\s|$|[^\W\d_])")
_LETTER = re.compile(r"[^\W\d_]")


# -- surface forms ------------------------------------------------------------------------


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def _initials_variants(phrase: str) -> list[str]:
    """ "J.R.R. Tolkien" -> also "J. R. R. Tolkien" and "JRR Tolkien": people write initials all three ways."""
    if not _INITIALS.search(phrase):
        return [phrase]

    def styled(joiner: str, dot: str) -> str:
        def sub(match: re.Match[str]) -> str:
            letters = _LETTER.findall(match.group())
            run = joiner.join(letter + dot for letter in letters)
            rest = phrase[match.end() : match.end() + 1]
            return run + (" " if rest and not rest.isspace() else "")

        return " ".join(_INITIALS.sub(sub, phrase).split())

    return _dedupe([phrase, styled("", "."), styled(" ", "."), styled("", "")])


def _case_variants(phrase: str) -> list[str]:
    title = " ".join(word[:1].upper() + word[1:] for word in phrase.split(" "))
    return _dedupe([phrase, phrase[:1].upper() + phrase[1:], phrase.lower(), phrase.upper(), title])


def _possessives(phrase: str) -> list[str]:
    s = "S" if phrase.isupper() else "s"
    forms = [phrase, f"{phrase}'{s}", f"{phrase}\u2019{s}"]
    if phrase[-1:] in ("s", "S"):
        forms += [f"{phrase}'", f"{phrase}\u2019"]
    return forms


def surface_forms(phrase: str) -> list[str]:
    """Every way running text may write `phrase`: initials styles x case x possessive x leading space.

    Only whole phrases: which phrases to forbid (names, aliases, key facts) is the caller's call.
    """
    base = " ".join(phrase.split())
    if not base:
        return []
    cased = _dedupe(c for spelling in _initials_variants(base) for c in _case_variants(spelling))
    forms = [p for c in cased for p in _possessives(c)]
    return _dedupe([*forms, *(" " + f for f in forms)])


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """One batched call per list (a fast tokenizer encodes it in Rust), not one Python call per form."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def forbidden_sequences(tokenizer: Any, phrases: Iterable[str]) -> list[tuple[int, ...]]:
    """Token-id sequences of all surface forms of `phrases`, incl. after-context splits (sorted, unique)."""
    return _sequences_of_forms(tokenizer, _dedupe(f for phrase in phrases for f in surface_forms(phrase)))


def _sequences_of_forms(tokenizer: Any, forms: list[str]) -> list[tuple[int, ...]]:
    found: set[tuple[int, ...]] = {tuple(ids) for ids in _encode(tokenizer, forms) if ids}
    glued = [f for f in forms if not f[0].isspace()]
    for context, prefix in zip(_CONTEXTS, _encode(tokenizer, list(_CONTEXTS))):
        if not prefix:
            continue
        cut = len(prefix)
        for ids in _encode(tokenizer, [context + f for f in glued]):
            if len(ids) > cut and ids[:cut] == prefix:
                found.add(tuple(ids[cut:]))
    return sorted(found)


# -- the automaton --------------------------------------------------------------------------


class TokenTrie:
    """Immutable Aho-Corasick automaton over forbidden token sequences; share it across requests.

    Build it once per target snapshot (``targets.memo("guard:trie", ...)``) and give
    each request its own `TrieRestriction`.  State ``ROOT`` (0) means "no partial match".
    Nothing mutates it after construction, so threads may share it; the tensors
    `completing`/`extending` return are views into shared storage: read them only.
    """

    __slots__ = (
        "_sequences", "_stride", "_edges", "_fail", "_link", "_c_ptr", "_c_ids", "_e_ptr", "_e_ids", "_max_depth",
        "tail_forms",
    )

    def __init__(self, sequences: Iterable[Sequence[int]], tail_forms: TailForms | None = None):
        self.tail_forms = tail_forms
        """The surface forms as text, for names split across the prompt/output boundary (`build` sets it)."""
        seqs = sorted({tuple(int(t) for t in seq) for seq in sequences if len(seq) > 0})
        if any(t < 0 for seq in seqs for t in seq):
            raise ValueError("token ids must be non-negative")
        self._sequences: tuple[tuple[int, ...], ...] = tuple(seqs)
        self._stride = max((t for seq in seqs for t in seq), default=0) + 1
        self._max_depth = max((len(seq) for seq in seqs), default=0)
        edges: dict[int, int] = {}
        parent, token_of, depth = [ROOT], [0], [0]
        terminal = bytearray(1)
        for seq in seqs:
            node = ROOT
            for token in seq:
                key = node * self._stride + token
                child = edges.get(key)
                if child is None:
                    child = edges[key] = len(parent)
                    parent.append(node)
                    token_of.append(token)
                    depth.append(depth[node] + 1)
                    terminal.append(0)
                node = child
            terminal[node] = 1
        self._edges = edges
        self._build_links(parent, token_of, depth, terminal)

    def _build_links(self, parent: list[int], token_of: list[int], depth: list[int], terminal: bytearray) -> None:
        """Failure links in BFS order, shortcut links to the next chain node with children, child-id tensors."""
        n = len(parent)
        own_c: dict[int, list[int]] = {}
        own_e: dict[int, list[int]] = {}
        for child in range(1, n):
            (own_c if terminal[child] else own_e).setdefault(parent[child], []).append(token_of[child])
        fail = [ROOT] * n
        link = [ROOT] * n  # nearest node on the chain (itself included) that has children; ROOT: none
        for node in sorted(range(1, n), key=depth.__getitem__):  # BFS order: fail targets come first
            up = parent[node]
            fail[node] = ROOT if up == ROOT else self._goto(fail, fail[up], token_of[node])
            link[node] = node if node in own_c or node in own_e else link[fail[node]]
        self._fail = tuple(fail)
        self._link = tuple(link)
        self._c_ptr, self._c_ids = _flatten(own_c, n)
        self._e_ptr, self._e_ids = _flatten(own_e, n)

    def _goto(self, fail: Sequence[int], state: int, token: int) -> int:
        if not 0 <= token < self._stride:  # in no sequence; and its key would alias another edge
            return ROOT
        while True:
            child = self._edges.get(state * self._stride + token)
            if child is not None:
                return child
            if state == ROOT:
                return ROOT
            state = fail[state]

    # -- construction / serialisation ------------------------------------------------------

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[int]]) -> TokenTrie:
        """Rebuild from `to_sequences()` output (e.g. shipped as JSON to an upstream's logits processor)."""
        return cls(sequences)

    @classmethod
    def build(cls, tokenizer: Any, phrases: Iterable[str]) -> TokenTrie:
        forms = _dedupe(f for phrase in phrases for f in surface_forms(phrase))
        return cls(_sequences_of_forms(tokenizer, forms), TailForms(tokenizer, forms) if forms else None)

    @property
    def sequences(self) -> tuple[tuple[int, ...], ...]:
        """The forbidden sequences, sorted and de-duplicated (shared, immutable)."""
        return self._sequences

    def to_sequences(self) -> list[list[int]]:
        """Plain JSON-able lists, the form vLLM's ``vllm_xargs`` / ``logit_bias`` plumbing can carry."""
        return [list(seq) for seq in self._sequences]

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sequences)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(self._sequences)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenTrie) and self._sequences == other._sequences

    def __hash__(self) -> int:
        return hash(self._sequences)

    def __repr__(self) -> str:
        return f"TokenTrie(sequences={len(self)}, nodes={self.num_nodes}, max_depth={self.max_depth})"

    @property
    def num_nodes(self) -> int:
        return len(self._fail)

    @property
    def max_depth(self) -> int:
        return self._max_depth

    def step(self, state: int, token: int) -> int:
        """The state after emitting `token`: the longest suffix of the output that is a trie path."""
        return self._goto(self._fail, state, token)

    def walk(self, state: int, tokens: Iterable[int]) -> int:
        for token in tokens:
            state = self._goto(self._fail, state, token)
        return state

    def partial_matches(self, state: int) -> list[int]:
        """Nodes on `state`'s failure chain that can still grow (deepest first, ROOT excluded).

        These are the partial matches ending at the current position that matter:
        their children are the tokens to ban or penalise next.
        """
        found: list[int] = []
        node = self._link[state]
        while node != ROOT:
            found.append(node)
            node = self._link[self._fail[node]]
        return found

    def completing(self, node: int) -> torch.Tensor:
        """Ids whose emission at `node` finishes a forbidden sequence (at ROOT: the single-token ones)."""
        return self._c_ids[self._c_ptr[node] : self._c_ptr[node + 1]]

    def extending(self, node: int) -> torch.Tensor:
        """Ids whose emission at `node` walks deeper into a forbidden sequence without finishing it."""
        return self._e_ids[self._e_ptr[node] : self._e_ptr[node + 1]]


def _flatten(children: dict[int, list[int]], n: int) -> tuple[tuple[int, ...], torch.Tensor]:
    """CSR layout: one long tensor plus offsets, so a node's ids are a view, not a copy."""
    ptr = [0]
    flat: list[int] = []
    for node in range(n):
        flat.extend(sorted(children.get(node, ())))
        ptr.append(len(flat))
    return tuple(ptr), torch.tensor(flat, dtype=torch.long)


# -- the logits hook ------------------------------------------------------------------------


class TrieRestriction:
    """Per-sequence `LogitsHook`: bans (or penalises) completing tokens, penalises extending ones.

    Single-token sequences (" Tolkien") are banned at every step.  A multi-token
    sequence's first token is left alone (" J", " The" are common words); from a
    partial match on, the next tokens that walk deeper cost `prefix_penalty` and
    the one that would finish it is banned (`mode="ban"`) or costs `penalty`.
    Each token is adjusted once per step, by the strongest rule that applies.

    The state advances by the tokens appended since the last call (one per decode
    step), so the cost per step does not grow with the output.  On the first call
    the state is seeded from the prompt's tail, so a completion prompt ending in
    "J.R.R." still cannot be continued with " Tolkien"; and when the trie was built
    from text (`TokenTrie.build`), a prompt ending inside a name ("J.R.R. Tol") cannot
    be finished in any tokenisation ("kien", "k" + "ien": `guards.tail_ban`).
    """

    def __init__(
        self,
        trie: TokenTrie,
        *,
        mode: Literal["ban", "penalty"] = "ban",
        penalty: float = 10.0,
        prefix_penalty: float = 2.0,
    ):
        if mode not in ("ban", "penalty"):
            raise ValueError(f"mode must be 'ban' or 'penalty', not {mode!r}")
        if penalty < 0 or prefix_penalty < 0:
            raise ValueError("penalties must be non-negative")
        self.trie = trie
        self.mode = mode
        self.penalty = float(penalty)
        self.prefix_penalty = float(prefix_penalty)
        self._state = ROOT
        self._seen = -1  # output tokens consumed so far; -1: prompt not seeded yet
        self._tail = TailBan(trie.tail_forms) if trie.tail_forms is not None else None

    @property
    def state(self) -> int:
        return self._state

    def _advance(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> int:
        n = len(output_ids)
        if self._seen < 0 or n < self._seen:
            keep = self.trie.max_depth - 1  # longer prompt context cannot change the state
            tail = prompt_ids[max(0, len(prompt_ids) - keep) :] if keep > 0 else ()
            self._state, self._seen = self.trie.walk(ROOT, tail), 0
        if n > self._seen:
            self._state = self.trie.walk(self._state, output_ids[self._seen :])
            self._seen = n
        return self._state

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        """Adjusts `logits` in place (as HF and vLLM processors do) and returns it.

        No copy of the vocab-sized row: a handful of ids are written, which keeps the
        step cost independent of vocab size (a 49k-float clone costs more than all
        the rest when torch's thread pool is busy with the model).
        """
        state = self._advance(prompt_ids, output_ids)
        trie = self.trie
        if logits.is_inference() and not torch.is_inference_mode_enabled():
            logits = logits.clone()  # inference tensors are read-only outside inference mode
        nodes = trie.partial_matches(state)
        complete = [ids for ids in (trie.completing(ROOT), *map(trie.completing, nodes)) if ids.numel()]
        extend = [ids for ids in map(trie.extending, nodes) if ids.numel()] if self.prefix_penalty else []
        if self._tail is not None:
            tail_complete, tail_extend = self._tail.ids(prompt_ids, output_ids)
            if tail_complete:
                complete.append(as_index(tail_complete, logits.shape[-1]))
            if tail_extend and self.prefix_penalty:
                # Not also completing elsewhere (those are written last anyway): one adjustment per token.
                extend.append(as_index(tail_extend, logits.shape[-1]))
        # Read every new value before writing any: a token reachable from several partial
        # matches is written the same value each time, so it is adjusted once, never twice.
        # Completions are written last, so they win over extensions.
        writes = [(ids, logits[ids] - self.prefix_penalty) for ids in extend]
        if self.mode == "penalty":
            writes += [(ids, logits[ids] - self.penalty) for ids in complete]
        for ids, values in writes:
            logits.index_copy_(0, ids, values)
        if self.mode == "ban":
            for ids in complete:
                logits.index_fill_(0, ids, float("-inf"))
        return logits
