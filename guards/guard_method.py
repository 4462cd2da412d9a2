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

Everything derived from the target list is memoised on the target snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.pipeline.methods import Detection, MethodPlan, RequestContext, UnlearningMethod
from gateway.store.models import ForgetTarget
from guards.fuzzy_terms import FuzzyTermIndex
from guards.gate_method import NameIndex, name_index, names_in_conversation
from guards.key_terms import cue_terms, floor_names, fuzzy_terms, key_terms
from guards.output_gate import ForbiddenMatcher
from guards.semantic import (
    DEFAULT_THRESHOLD,
    EMBEDDING_MODEL,
    Embedder,
    SemanticDetector,
    decode_embeddings,
    embed_target,
)
from guards.semantic_index import SemanticIndex
from guards.token_trie import TokenTrie, TrieRestriction

log = logging.getLogger(__name__)

CUE_SCORE = 0.9
"""Detection score of a target whose rare fact term (`cue_terms`) is in the conversation."""
FUZZY_SCORE = 0.8
"""Detection score of a target one of whose terms is misspelt in the conversation (`fuzzy_terms`)."""


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

    # -- detection ------------------------------------------------------------------

    async def detect(self, ctx: RequestContext) -> Mapping[str, float]:
        """Token and semantic detection over all active targets: other methods rely on it too."""
        if not ctx.targets.active:
            return {}
        scores = dict(names_in_conversation(ctx))
        # Built once per snapshot, off the event loop (seconds at 100k targets).
        cues, typos = ctx.targets.memoized("guard:term-indexes") or await asyncio.to_thread(self._term_indexes, ctx)
        for target_id, score in cues.targets_in(ctx.text, score=CUE_SCORE).items():
            scores.setdefault(target_id, score)
        for target_id, score in typos.targets_in(ctx.text, score=FUZZY_SCORE).items():
            scores.setdefault(target_id, score)
        if self._embedder is not None:
            index = ctx.targets.memoized("guard:semantic") or await asyncio.to_thread(self._semantic_index, ctx)
            detector = SemanticDetector(self._embedder, threshold=self.config.detect_threshold)
            for target_id, score in (await detector.detect_async(ctx.conversation, index)).items():
                scores[target_id] = max(score, scores.get(target_id, 0.0))
        return scores

    @staticmethod
    def _term_indexes(ctx: RequestContext) -> tuple[NameIndex, FuzzyTermIndex]:
        return ctx.targets.memo("guard:term-indexes", lambda: (
            NameIndex.build(ctx.targets.active, cue_terms), FuzzyTermIndex.build(ctx.targets.active, fuzzy_terms)))

    def _semantic_index(self, ctx: RequestContext) -> SemanticIndex:
        return ctx.targets.memo("guard:semantic", lambda: SemanticIndex(
            (t.id, self._passages(t)) for t in ctx.targets.active))

    def _passages(self, target: ForgetTarget):
        stored = target.derived.get(self.name) or {}
        if stored.get("model") == EMBEDDING_MODEL and stored.get("passages"):
            return decode_embeddings(stored["passages"])
        log.warning("target %s has no stored embeddings; computing them now", target.id)
        return decode_embeddings(embed_target(self._embedder, target))

    # -- planning -------------------------------------------------------------------

    def plan(self, ctx: RequestContext, detection: Detection) -> MethodPlan | None:
        targets = self.targets_for(ctx)
        if not targets:
            return None
        in_play = self.in_play(ctx, detection)
        user_text = _user_text(ctx) if in_play else ""
        if self.config.refuse_named and in_play and self._named_by_user(ctx, in_play, user_text):
            return MethodPlan(refuse=True)
        plan = MethodPlan()
        terms = self._key_terms(ctx, in_play, user_text) if in_play else []
        tokenizer = self._tokenizer()
        if tokenizer is not None:
            trie = self._trie(ctx, tokenizer, targets, terms)
            cfg = self.config
            plan.hook_factories.append(
                lambda: TrieRestriction(trie, mode=cfg.mode, penalty=cfg.penalty, prefix_penalty=cfg.prefix_penalty)
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
        named = name_index(ctx.targets).targets_in(user_text)
        return any(t.id in named for t in in_play)

    def _trie(self, ctx: RequestContext, tokenizer: Any, targets: list[ForgetTarget], terms: list[str]) -> TokenTrie:
        """The floor (names of every guard target), plus the key terms of the targets in play."""
        floor = ctx.targets.memo("guard:floor-phrases", lambda: [n for t in targets for n in floor_names(t)])
        if not terms:
            return ctx.targets.memo("guard:floor-trie", lambda: TokenTrie.build(tokenizer, floor))
        key = "guard:trie:" + ",".join(terms)
        return ctx.targets.memo(key, lambda: TokenTrie.build(tokenizer, [*floor, *terms]))

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


def _user_text(ctx: RequestContext) -> str:
    return "\n".join(m["content"] for m in ctx.conversation if m.get("role") == "user")
