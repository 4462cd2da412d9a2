"""Upstream bans are translated per target shard: a change derives only its own part."""

from __future__ import annotations

import orjson

from gateway.backends.base import SequenceUnion
from gateway.backends.upstream_bans import BanTranslator


class _Tokenizer:
    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)

    def batch_decode(self, batch):
        return [self.decode(ids) for ids in batch]


SHARD_A = ((5,), (7, 8), (9, 10, 11))
SHARD_B = ((12,), (7, 13))
SHARD_C = ((20, 21),)


def test_merged_parts_equal_the_whole():
    translator, whole = BanTranslator("vllm"), BanTranslator("vllm")
    merged = translator.bans(SequenceUnion([SHARD_A, SHARD_B]), _Tokenizer())
    single = whole.bans(SHARD_A + SHARD_B, _Tokenizer())
    assert merged.logit_bias == single.logit_bias == {"5": -100.0, "12": -100.0}
    assert orjson.loads(merged.xargs) == orjson.loads(single.xargs)
    assert merged.bad_words == single.bad_words
    assert merged.single_texts == single.single_texts
    assert merged.violated_by([1, 7, 13]) and not merged.violated_by([1, 7, 1, 13])


def test_a_new_shard_derives_only_itself(monkeypatch):
    translator, tokenizer = BanTranslator("vllm"), _Tokenizer()
    derived: list[tuple] = []
    original = translator._derive

    def counting(sequences, tok):
        derived.append(tuple(sequences))
        return original(sequences, tok)

    monkeypatch.setattr(translator, "_derive", counting)
    first = translator.bans(SequenceUnion([SHARD_A, SHARD_B]), tokenizer)
    assert sorted(derived) == sorted([SHARD_A, SHARD_B])
    derived.clear()
    after_change = translator.bans(SequenceUnion([SHARD_A, SHARD_B, SHARD_C]), tokenizer)
    assert derived == [SHARD_C]  # the unchanged shards' translations were reused
    assert orjson.loads(after_change.xargs) == [list(s) for s in SHARD_A + SHARD_B + SHARD_C]
    assert first.logit_bias == after_change.logit_bias


def test_the_same_union_is_served_from_the_cache():
    translator = BanTranslator("openai")
    union = SequenceUnion([SHARD_A, SHARD_C])
    assert translator.bans(union, None) is translator.bans(union, None)
    assert translator.bans((), None) is None
