"""GUARD as a pipeline plug-in: detect targets in play, restrict decoding, check finished sentences.

After "GUARD: Generation-time LLM Unlearning via Adaptive Restriction and
Detection" (arXiv 2505.13312), hardened for serving:

* detection runs on the whole conversation: Aho-Corasick over normalised names
  and aliases (cost independent of the number of targets) plus MiniLM cosine
  against passage embeddings computed once at registration (`derive`);
* decoding: a token trie over every surface form of the names of *all* guard
  targets is always banned (the floor: an innocent-looking prompt cannot extract
  a name); targets in play add their distinctive name words;
* output: for targets in play, each finished sentence is embedded and compared
  with their passages; a sentence above the threshold turns the answer into the
  generic refusal.

Everything derived from the target list is memoised on the target snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.pipeline.methods import Detection, MethodPlan, RequestContext, UnlearningMethod
from gateway.store.models import ForgetTarget
from guards.gate_method import name_index
from guards.output_gate import ForbiddenMatcher
from guards.semantic import (
    DEFAULT_THRESHOLD,
    EMBEDDING_MODEL,
    Embedder,
    SemanticDetector,
    SemanticIndex,
    decode_embeddings,
    embed_target,
)
from guards.token_trie import TokenTrie, TrieRestriction

log = logging.getLogger(__name__)

# Capitalised words too common to ban on their own when a target is in play.
_COMMON_NAME_WORDS = frozenset(
    "the of and a an lord lady king queen prince princess saint sir dame doctor mount lake river city "
    "new old great little big first second third university college book books series band group".split()
)
_WORD = re.compile(r"[^\W\d_][\w'’-]*")


@dataclass(frozen=True)
class GuardConfig:
    detect_threshold: float = DEFAULT_THRESHOLD
    sentence_threshold: float = DEFAULT_THRESHOLD
    mode: Literal["ban", "penalty"] = "ban"
    penalty: float = 10.0
    prefix_penalty: float = 2.0
    semantic: bool = True


def name_words(target: ForgetTarget) -> list[str]:
    """Distinctive single words of the name and aliases ("Tolkien", "Granger"), banned while in play."""
    words: list[str] = []
    for phrase in target.surface_names:
        for word in _WORD.findall(phrase):
            if len(word) >= 4 and word[0].isupper() and word.lower() not in _COMMON_NAME_WORDS:
                words.append(word)
    return list(dict.fromkeys(words))


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
        scores = dict(name_index(ctx.targets).targets_in(ctx.text))
        if self._embedder is not None:
            index = await asyncio.to_thread(self._semantic_index, ctx)
            detector = SemanticDetector(self._embedder, threshold=self.config.detect_threshold)
            for target_id, score in (await asyncio.to_thread(detector.detect, ctx.conversation, index)).items():
                scores[target_id] = max(score, scores.get(target_id, 0.0))
        return scores

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
        in_play = detection.in_play(targets)
        plan = MethodPlan()
        tokenizer = self._tokenizer()
        if tokenizer is not None:
            trie = self._trie(ctx, tokenizer, targets, in_play)
            cfg = self.config
            plan.hook_factories.append(
                lambda: TrieRestriction(trie, mode=cfg.mode, penalty=cfg.penalty, prefix_penalty=cfg.prefix_penalty)
            )
        if in_play:
            words = [w for t in in_play for w in name_words(t)]
            if words:
                plan.gate_matchers.append(ForbiddenMatcher(words))
            if self._embedder is not None:
                plan.sentence_checks.append(self._sentence_check(ctx, in_play))
        return plan

    def _trie(self, ctx: RequestContext, tokenizer: Any, targets: list[ForgetTarget],
              in_play: list[ForgetTarget]) -> TokenTrie:
        floor = ctx.targets.memo("guard:floor-phrases", lambda: [n for t in targets for n in t.surface_names])
        if not in_play:
            return ctx.targets.memo("guard:floor-trie", lambda: TokenTrie.build(tokenizer, floor))
        key = "guard:trie:" + ",".join(sorted(t.id for t in in_play))
        extra = [w for t in in_play for w in name_words(t)]
        return ctx.targets.memo(key, lambda: TokenTrie.build(tokenizer, [*floor, *extra]))

    def _sentence_check(self, ctx: RequestContext, in_play: list[ForgetTarget]):
        index = SemanticIndex((t.id, self._passages(t)) for t in in_play)
        embedder, threshold = self._embedder, self.config.sentence_threshold

        async def reveals_target(sentences: Sequence[str]) -> bool:
            vectors = await asyncio.to_thread(embedder.encode, list(sentences))
            return bool(index.score(vectors, threshold=threshold))

        return reveals_target
