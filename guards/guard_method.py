"""GUARD as a pipeline plug-in: detect targets in play, restrict decoding, check finished sentences.

After "GUARD: Generation-time LLM Unlearning via Adaptive Restriction and
Detection" (arXiv 2505.13312), hardened for serving:

* detection runs on the whole conversation: Aho-Corasick over normalised names,
  aliases and rare fact terms (cost independent of the number of targets), misspelt
  terms within one edit (`guards.fuzzy_terms`), plus MiniLM cosine against passage
  embeddings computed once at registration (`derive`);
* decoding: a token trie over every surface form of the names of *all* guard
  targets is always banned (the floor: an innocent-looking prompt cannot extract
  a name); targets in play add their key terms (`guards.key_terms`: name words,
  proper nouns, rare words and numbers of their facts), which the output gate
  also refuses;
* output: for targets in play, each finished sentence is embedded and compared
  with their passages; a sentence above the threshold turns the answer into the
  generic refusal.

Everything derived from the target list is memoised per shard of the tenant's
targets (`gateway.pipeline.shards`) and built off the event loop by `index`:
a change builds only its own small shard; detection drops hits of targets that
are no longer live in the shard that found them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch

from gateway.backends.base import SequenceUnion
from gateway.pipeline.methods import Detection, MethodPlan, RequestContext, UnlearningMethod
from gateway.pipeline.shards import Shard, TenantTargets
from gateway.store.models import ForgetTarget
from guards.fuzzy_terms import FuzzyTermIndex
from guards.gate_method import NameIndex, names_in_conversation, targets_named_in
from guards.key_terms import cue_terms, floor_names, fuzzy_terms, key_terms
from guards.output_gate import ForbiddenMatcher
from guards.semantic import (
    DEFAULT_THRESHOLD,
    EMBEDDING_MODEL,
    STORE_DECIMALS,
    Embedder,
    SemanticDetector,
    decode_embeddings,
    embed_target,
    target_passages,
)
from guards.semantic_index import SemanticIndex, top_hits
from guards.token_trie import TokenTrie, TrieRestriction

log = logging.getLogger(__name__)

CUE_SCORE = 0.9
"""Detection score of a target whose rare fact term (`cue_terms`) is in the conversation."""
FUZZY_SCORE = 0.8
"""Detection score of a target one of whose terms is misspelt in the conversation (`fuzzy_terms`)."""
MAX_SEMANTIC_HITS = 16
"""Semantic matches kept per request, best first. A prompt near thousands of look-alike targets
("Alise Abernathi" against 10,000 registered Abernathys) once put them all in play, and planning
built key-term tries and matchers over all of them on the event loop: 28-31 s per distinct prompt."""


@dataclass(frozen=True)
class GuardConfig:
    detect_threshold: float = DEFAULT_THRESHOLD
    sentence_threshold: float = DEFAULT_THRESHOLD
    mode: Literal["ban", "penalty"] = "ban"
    penalty: float = 10.0
    prefix_penalty: float = 2.0
    semantic: bool = True
    refuse_named: bool = True
    """A user turn that names a target gets the generic refusal up front, without generating:
    an answer about a named subject cannot avoid revealing it (what it is, what it did)."""


class GuardMethod(UnlearningMethod):
    name = "guard"

    def __init__(self, config: GuardConfig, embedder: Embedder | None, tokenizer: Callable[[], Any]):
        self.config = config
        self._embedder = embedder if config.semantic else None
        self._tokenizer = tokenizer  # a callable: the backend's tokenizer exists only once it has loaded

    async def warm_up(self) -> None:
        if self._embedder is not None:
            await asyncio.to_thread(self._embedder.load)

    # -- registration ---------------------------------------------------------------

    def derive(self, target: ForgetTarget) -> Mapping[str, Any] | None:
        if self._embedder is None:
            return None
        return {"model": EMBEDDING_MODEL, "passages": embed_target(self._embedder, target)}

    def derive_many(self, targets: Sequence[ForgetTarget]) -> list[Mapping[str, Any] | None]:
        """One embedding pass over every passage of a batch: the model batches them, where a
        pass per target would be mostly overhead."""
        if self._embedder is None:
            return [None for _ in targets]
        passages = [target_passages(t) for t in targets]
        vectors = self._embedder.encode([p for ps in passages for p in ps])
        rounded = np.round(vectors.astype(np.float64), STORE_DECIMALS)
        out: list[Mapping[str, Any] | None] = []
        start = 0
        for ps in passages:
            out.append({"model": EMBEDDING_MODEL, "passages": rounded[start:start + len(ps)].tolist()})
            start += len(ps)
        return out

    # -- per-shard structures ---------------------------------------------------------------

    def index(self, targets: TenantTargets) -> None:
        tokenizer = self._tokenizer()
        for shard in targets.shards:
            self._shard_terms(shard)
            if self._embedder is not None:
                self._shard_semantic(shard)
        if tokenizer is not None:
            _ = self._tries(targets, tokenizer, []).sequences  # the floor, and its export for upstreams

    @staticmethod
    def _shard_terms(shard: Shard) -> tuple[NameIndex, FuzzyTermIndex]:
        return shard.memo("guard:term-indexes", lambda ts: (NameIndex.build(ts, cue_terms),
                                                            FuzzyTermIndex.build(ts, fuzzy_terms)))

    def _shard_semantic(self, shard: Shard) -> SemanticIndex:
        return shard.memo("guard:semantic", lambda ts: SemanticIndex((t.id, self._passages(t)) for t in ts))

    def _shard_floor(self, shard: Shard, tokenizer: Any) -> TokenTrie:
        """The names of the shard's guard targets, every tokenisation: always banned."""
        return shard.memo("guard:floor-trie", lambda ts: TokenTrie.build(
            tokenizer, [n for t in ts if self.applies_to(t) for n in floor_names(t)]))

    async def _built(self, shards: tuple[Shard, ...], key: str, build: Callable[[Shard], Any]) -> None:
        """Build what `index` did not yet (a request racing start-up), off the event loop."""
        missing = [s for s in shards if s.memoized(key) is None]
        if missing:
            await asyncio.to_thread(lambda: [build(s) for s in missing])

    # -- detection ------------------------------------------------------------------

    async def detect(self, ctx: RequestContext) -> Mapping[str, float]:
        """Token and semantic detection over all active targets: other methods rely on it too."""
        if not len(ctx.targets):
            return {}
        scores = dict(names_in_conversation(ctx))
        shards, live = ctx.targets.shards, ctx.targets.live_hits
        await self._built(shards, "guard:term-indexes", self._shard_terms)
        term_indexes = [(shard, self._shard_terms(shard)) for shard in shards]
        for shard, (cues, _) in term_indexes:
            for target_id, score in live(shard, cues.targets_in(ctx.text, score=CUE_SCORE)):
                scores.setdefault(target_id, score)
        for shard, (_, typos) in term_indexes:
            for target_id, score in live(shard, typos.targets_in(ctx.text, score=FUZZY_SCORE)):
                scores.setdefault(target_id, score)
        if self._embedder is not None:
            await self._built(shards, "guard:semantic", self._shard_semantic)
            detector = SemanticDetector(self._embedder, threshold=self.config.detect_threshold)
            semantic: dict[str, float] = {}
            for shard in shards:  # the conversation is embedded once; later shards reuse the vectors
                hits = await detector.detect_async(ctx.conversation, self._shard_semantic(shard))
                semantic.update(live(shard, hits))
            for target_id, score in top_hits(semantic, MAX_SEMANTIC_HITS).items():
                scores[target_id] = max(score, scores.get(target_id, 0.0))
        return scores

    def _passages(self, target: ForgetTarget):
        stored = target.derived.get(self.name) or {}
        if stored.get("model") == EMBEDDING_MODEL and stored.get("passages"):
            return decode_embeddings(stored["passages"])
        log.warning("target %s has no stored embeddings; computing them now", target.id)
        return decode_embeddings(embed_target(self._embedder, target))

    # -- planning -------------------------------------------------------------------

    def plan(self, ctx: RequestContext, detection: Detection) -> MethodPlan | None:
        if not self.has_targets(ctx):
            return None
        in_play = self.in_play(ctx, detection)
        user_text = _user_text(ctx) if in_play else ""
        if self.config.refuse_named and in_play and self._named_by_user(ctx, in_play, user_text):
            return MethodPlan(refuse=True)
        plan = MethodPlan()
        terms = self._key_terms(ctx, in_play, user_text) if in_play else []
        tokenizer = self._tokenizer()
        if tokenizer is not None:
            tries = self._tries(ctx.targets, tokenizer, terms)
            cfg = self.config
            plan.hook_factories.append(
                lambda: ShardedRestriction(tries, mode=cfg.mode, penalty=cfg.penalty, prefix_penalty=cfg.prefix_penalty)
            )
        if in_play:
            if terms:
                plan.gate_matchers.append(ctx.targets.memo("guard:gate:" + ",".join(terms),
                                                           lambda: ForbiddenMatcher(terms)))
            if self._embedder is not None:
                plan.sentence_checks.append(self._sentence_check(ctx, in_play))
        return plan

    @staticmethod
    def _named_by_user(ctx: RequestContext, in_play: list[ForgetTarget], user_text: str) -> bool:
        """Does a user turn name a target in play? (System prompts may name targets to avoid.)"""
        named = targets_named_in(ctx.targets, user_text)
        return any(t.id in named for t in in_play)

    def _tries(self, targets: TenantTargets, tokenizer: Any, terms: list[str]) -> TrieUnion:
        """The floor (each shard's trie of guard targets' names), plus a trie of the key terms of
        the targets in play; the same object for every request of a tenant generation and terms."""
        key = "guard:tries:" + ",".join(terms)

        def build() -> TrieUnion:
            floor = [self._shard_floor(shard, tokenizer) for shard in targets.shards]
            extra = [TokenTrie.build(tokenizer, terms)] if terms else []
            return TrieUnion(tuple(t for t in (*floor, *extra) if len(t)))

        return targets.memo(key, build)

    @staticmethod
    def _key_terms(ctx: RequestContext, in_play: list[ForgetTarget], user_text: str) -> list[str]:
        """Key terms of the targets in play, less those the user wrote: echoing the user's own
        words reveals nothing, and banning them would refuse "Tell me about the Battle of the
        Somme" because "Somme" is in Tolkien's facts."""
        ids = ",".join(sorted(t.id for t in in_play))
        terms = ctx.targets.memo(f"guard:key-terms:{ids}",
                                 lambda: list(dict.fromkeys(w for t in in_play for w in key_terms(t))))
        if not terms:
            return []
        matcher = ctx.targets.memo(f"guard:key-terms-matcher:{ids}", lambda: ForbiddenMatcher(terms))
        echoed: set[int] = set()
        end = 0
        while (match := matcher.first_match(user_text, min_end=end)) is not None:
            echoed.add(match.pattern)
            end = match.end
        return [term for i, term in enumerate(terms) if i not in echoed]

    def _sentence_check(self, ctx: RequestContext, in_play: list[ForgetTarget]):
        index = SemanticIndex((t.id, self._passages(t)) for t in in_play)
        embedder, threshold = self._embedder, self.config.sentence_threshold

        async def reveals_target(sentences: Sequence[str]) -> bool:
            vectors = await asyncio.to_thread(embedder.encode, list(sentences))
            return bool(index.score(vectors, threshold=threshold))

        return reveals_target


class TrieUnion:
    """Several token tries enforced as one (a tenant's shards, plus key terms in play)."""

    def __init__(self, tries: tuple[TokenTrie, ...]):
        self.tries = tries

    @cached_property
    def sequences(self) -> tuple[tuple[int, ...], ...]:
        """All tries' sequences, for backends that ban them upstream (`banned_sequences`): each
        trie's sorted tuple, concatenated (a pointer copy: sorting them again cost 2.6 s at 10k
        targets per change; a sequence two shards share is listed twice, which bans it the same)."""
        if len(self.tries) == 1:
            return self.tries[0].sequences
        return SequenceUnion(trie.sequences for trie in self.tries)


class ShardedRestriction:
    """A `TrieRestriction` per trie of a `TrieUnion`, applied in turn: a token completing a name
    in any trie is banned. A token extending partial matches in several tries is penalised once
    per trie (they hold different names, so this is rare)."""

    def __init__(self, tries: TrieUnion, **options: Any):
        self.trie = tries  # `banned_sequences` export reads `trie.sequences`
        self._hooks = [TrieRestriction(trie, **options) for trie in tries.tries]

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        for hook in self._hooks:
            logits = hook(prompt_ids, output_ids, logits)
        return logits


def _user_text(ctx: RequestContext) -> str:
    return "\n".join(m["content"] for m in ctx.conversation if m.get("role") == "user")
