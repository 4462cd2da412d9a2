"""The pipeline's forbidden token sequences, translated into controls an upstream server enforces.

An upstream cannot run the gateway's Python logits hooks, so each request carries its bans as
`logit_bias` (single-token sequences), vLLM `bad_words` (decoded sequences) and the vLLM plug-in's
argument (`vllm_xargs`, every sequence as JSON). Deriving those is linear in the number of
sequences (190k at 10,000 targets), so it is done once per *part*: a `SequenceUnion` carries one
part per target shard, each part's translation is cached while the part lives, and a request's bans
are a cheap merge of its parts'. A target change therefore derives only its own small shard.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Any

import orjson

from gateway.backends.base import SequenceUnion

BAN_BIAS = -100.0
"""The strongest bias the OpenAI API accepts; upstreams treat it as a ban."""
CACHE_SIZE = 256
"""Translations kept: merged ban sets and their per-shard parts."""


@dataclass(frozen=True)
class UpstreamBans:
    """A request's banned sequences in the forms the upstream understands."""

    sequences: tuple[tuple[int, ...], ...]
    single_ids: frozenset[int]
    logit_bias: dict[str, float]
    bad_words: list[str]
    xargs: str
    single_texts: frozenset[str] = frozenset()  # the decoded text of each banned single token
    source: object = field(default=None, compare=False, repr=False)  # what the cache entry was derived from

    @cached_property
    def _by_first(self) -> dict[int, list[tuple[int, ...]]]:
        """Multi-token sequences by their first token, built once per ban set (not per answer)."""
        by_first: dict[int, list[tuple[int, ...]]] = {}
        for seq in self.sequences:
            if len(seq) > 1:
                by_first.setdefault(seq[0], []).append(seq)
        return by_first

    def violated_by(self, token_ids: Sequence[int]) -> bool:
        """Did the output (the upstream's own token ids) contain any banned sequence?"""
        if any(t in self.single_ids for t in token_ids):
            return True
        ids = list(token_ids)
        by_first = self._by_first
        for i, token in enumerate(ids):
            for seq in by_first.get(token, ()):
                if tuple(ids[i : i + len(seq)]) == seq:
                    return True
        return False


def merge_bans(parts: list[UpstreamBans], source: object) -> UpstreamBans:
    """One request's bans from its parts' (pointer copies and small unions, no re-derivation)."""
    return UpstreamBans(
        sequences=tuple(chain.from_iterable(p.sequences for p in parts)),
        single_ids=frozenset().union(*(p.single_ids for p in parts)),
        logit_bias={token: bias for p in parts for token, bias in p.logit_bias.items()},
        bad_words=list(dict.fromkeys(chain.from_iterable(p.bad_words for p in parts))),
        xargs="[" + ",".join(p.xargs[1:-1] for p in parts if p.xargs != "[]") + "]",
        single_texts=frozenset().union(*(p.single_texts for p in parts)),
        source=source,
    )


class BanTranslator:
    """Translates (and caches, by identity) banned sequences for one upstream of `kind`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._cache: OrderedDict[int, UpstreamBans] = OrderedDict()

    def bans(self, sequences: Sequence[Sequence[int]], tokenizer: Any) -> UpstreamBans | None:
        if not sequences:
            return None
        parts = sequences.parts if isinstance(sequences, SequenceUnion) else (sequences,)
        if len(parts) == 1:
            return self._cached(sequences, lambda: self._derive(sequences, tokenizer))
        return self._cached(sequences, lambda: merge_bans(
            [bans for part in parts if (bans := self.bans(part, tokenizer)) is not None], sequences))

    def _cached(self, sequences: Sequence[Sequence[int]], derive: Callable[[], UpstreamBans]) -> UpstreamBans:
        # Keyed by identity: the pipeline hands every request of a target snapshot the same tuple
        # (and each shard keeps its part), and the entry keeps it alive, so an id is never reused
        # while cached.
        cached = self._cache.get(id(sequences))
        if cached is not None and cached.source is sequences:
            self._cache.move_to_end(id(sequences))
            return cached
        bans = derive()
        self._cache[id(sequences)] = bans
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return bans

    def _derive(self, sequences: Sequence[Sequence[int]], tokenizer: Any) -> UpstreamBans:
        key = tuple(tuple(int(t) for t in seq) for seq in sequences if len(seq))
        single = frozenset(seq[0] for seq in key if len(seq) == 1)
        words: list[str] = []
        if self.kind == "vllm" and tokenizer is not None:
            decoded = tokenizer.batch_decode([list(seq) for seq in key])
            words = list(dict.fromkeys(w.strip() for w in decoded if w.strip()))
        return UpstreamBans(
            sequences=key,
            single_ids=single,
            logit_bias={str(t): BAN_BIAS for t in sorted(single)},
            bad_words=words,
            xargs=orjson.dumps([list(seq) for seq in key]).decode(),
            single_texts=frozenset(tokenizer.decode([t]) for t in single) if tokenizer else frozenset(),
            source=sequences,
        )
