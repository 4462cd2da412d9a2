"""The vLLM logits-processor plug-in, driven like vLLM drives it, with plain torch tensors.

vLLM is not installed here: the fake `BatchUpdate`s below are simple dataclasses
with vLLM's shape (removed indices; added (index, params, prompt ids, output ids);
moved (a, b, direction)), applied in vLLM's order: removed, added, moved.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from enum import Enum, auto

import pytest
import torch

from gateway.backends.base import GenerationRequest, SamplingParams
from gateway.backends.openai_upstream import OpenAIUpstream
from gateway.backends.vllm_plugin import XARGS_KEY, BanTable, UnlearnLogitsProcessor, parse_sequences
from guards.token_trie import TokenTrie, TrieRestriction

VOCAB = 32
NEG_INF = float("-inf")


class Direction(Enum):  # vLLM's MoveDirectionality, mirrored independently of the plug-in's fallback
    UNIDIRECTIONAL = auto()
    SWAP = auto()


@dataclass
class Params:  # the part of vllm.SamplingParams the plug-in reads
    extra_args: dict | None = None


@dataclass(frozen=True)
class Update:
    batch_size: int
    removed: list[int] = field(default_factory=list)
    added: list[tuple] = field(default_factory=list)
    moved: list[tuple] = field(default_factory=list)


def params(seqs) -> Params:
    return Params({XARGS_KEY: json.dumps(seqs)})


def banned(logits: torch.Tensor, row: int) -> set[int]:
    return {int(i) for i in torch.nonzero(logits[row] == NEG_INF).flatten()}


def apply(proc: UnlearnLogitsProcessor, batch_size: int) -> torch.Tensor:
    return proc.apply(torch.zeros(batch_size, VOCAB))


def test_ban_table_completions_and_prefixes():
    table = BanTable([[5], [1, 2, 3], [2, 3], [7, 8]])
    assert sorted(table.banned_after([])) == [5]
    assert sorted(table.banned_after([9, 1, 2])) == [3, 5]  # [1,2]->3 and [2]->3 both complete with 3
    assert sorted(table.banned_after([4, 2])) == [3, 5]
    assert sorted(table.banned_after([7])) == [5, 8]
    assert table.max_prefix == 2 and table.num_sequences == 4


def test_added_rows_follow_their_live_output_lists():
    proc = UnlearnLogitsProcessor(None, torch.device("cpu"), False)
    out0: list[int] = []
    out2: list[int] = []
    proc.update_state(Update(3, added=[(0, params([[5], [1, 2]]), [9, 9], out0),
                                       (1, Params(), [9], []),
                                       (2, params([[6]]), [9], out2)]))
    logits = apply(proc, 3)
    assert banned(logits, 0) == {5} and banned(logits, 1) == set() and banned(logits, 2) == {6}
    out0.append(1)  # vLLM appends to the same list object; update_state(None) between steps
    proc.update_state(None)
    assert banned(apply(proc, 3), 0) == {5, 2}
    out0.append(2)
    proc.update_state(None)
    assert banned(apply(proc, 3), 0) == {5}


def test_prompt_tail_seeds_the_context():
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(1, added=[(0, params([[3, 4, 5]]), [1, 2, 3, 4], [])]))
    assert banned(apply(proc, 1), 0) == {5}  # the prompt ends in 3, 4: 5 would complete it
    proc.update_state(Update(1, added=[(0, params([[3, 4, 5]]), [4], [])]))  # shorter than the prefix
    assert banned(apply(proc, 1), 0) == set()


def test_removed_rows_are_dropped_and_requests_without_args_untouched():
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(2, added=[(0, params([[5]]), [], []), (1, params([[6]]), [], [])]))
    proc.update_state(Update(1, removed=[0]))
    assert set(proc.rows) == {1}
    logits = apply(proc, 2)
    assert banned(logits, 0) == set() and banned(logits, 1) == {6}
    assert torch.isfinite(logits[0]).all()


def test_an_added_request_replaces_the_row_it_lands_on():
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(1, added=[(0, params([[5]]), [], [])]))
    proc.update_state(Update(1, added=[(0, Params(), [], [])]))  # vLLM reuses the slot without a remove
    assert proc.rows == {} and banned(apply(proc, 1), 0) == set()


def test_remove_then_add_at_the_same_index_in_one_update():
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(1, added=[(0, params([[5]]), [], [])]))
    proc.update_state(Update(1, removed=[0], added=[(0, params([[7]]), [], [])]))
    assert banned(apply(proc, 1), 0) == {7}


def test_unidirectional_move_and_swap():
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(3, added=[(0, params([[4]]), [], []), (1, params([[5]]), [], []),
                                       (2, params([[6]]), [], [])]))
    proc.update_state(Update(2, removed=[0], moved=[(2, 0, Direction.UNIDIRECTIONAL)]))  # condense
    logits = apply(proc, 2)
    assert banned(logits, 0) == {6} and banned(logits, 1) == {5} and set(proc.rows) == {0, 1}
    proc.update_state(Update(2, moved=[(0, 1, Direction.SWAP)]))
    logits = apply(proc, 2)
    assert banned(logits, 0) == {5} and banned(logits, 1) == {6}


def test_moves_involving_rows_without_bans():
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(2, added=[(0, params([[4]]), [], []), (1, Params(), [], [])]))
    proc.update_state(Update(2, moved=[(0, 1, Direction.SWAP)]))
    assert set(proc.rows) == {1}
    proc.update_state(Update(2, moved=[(0, 1, Direction.UNIDIRECTIONAL)]))  # empty row 0 overwrites row 1
    assert proc.rows == {}


def test_validate_params_and_parsing():
    UnlearnLogitsProcessor.validate_params(Params())
    UnlearnLogitsProcessor.validate_params(Params({XARGS_KEY: "[[1, 2], [3]]"}))
    UnlearnLogitsProcessor.validate_params(Params({XARGS_KEY: [[1, 2], [3]]}))  # offline: lists directly
    for bad in ("not json", "[1, 2]", "[[-1]]", '[["a"]]', "{}"):
        with pytest.raises(ValueError):
            UnlearnLogitsProcessor.validate_params(Params({XARGS_KEY: bad}))
    assert parse_sequences("[[1,2]]") == [[1, 2]]


def test_tables_are_shared_between_requests_with_the_same_bans():
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(2, added=[(0, params([[4], [1, 2]]), [], []), (1, params([[4], [1, 2]]), [], [])]))
    assert proc.rows[0].table is proc.rows[1].table
    assert not UnlearnLogitsProcessor().is_argmax_invariant()


def test_ids_beyond_the_vocab_are_ignored():
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(1, added=[(0, params([[VOCAB + 3], [2]]), [], [])]))
    assert banned(apply(proc, 1), 0) == {2}


def _reference_bans(seqs: list[list[int]], prompt: list[int], output: list[int]) -> set[int]:
    """GUARD's own hook, ban mode, no prefix penalty: what the plug-in must reproduce."""
    # Callers add a sequence holding the largest id used: TokenTrie keys edges as state * (max id + 1) + token,
    # so a larger output id than any banned one would alias another edge.
    hook = TrieRestriction(TokenTrie(seqs), mode="ban", prefix_penalty=0.0)
    logits = hook(prompt, output, torch.zeros(VOCAB))
    return {int(i) for i in torch.nonzero(logits == NEG_INF).flatten()}


def test_same_bans_as_guards_trie_restriction():
    rng = random.Random(7)
    for _ in range(200):
        seqs = [[rng.randrange(8) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 6))] + [[7, 7]]
        prompt = [rng.randrange(8) for _ in range(rng.randint(0, 5))]
        output = [rng.randrange(8) for _ in range(rng.randint(0, 6))]
        proc = UnlearnLogitsProcessor()
        proc.update_state(Update(1, added=[(0, params(seqs), prompt, output)]))
        assert banned(apply(proc, 1), 0) == _reference_bans(seqs, prompt, output), (seqs, prompt, output)


def test_random_persistent_batch_matches_each_requests_own_bans():
    """A vLLM-like producer: finish requests, fill holes with new ones, condense, swap; check every row."""
    rng = random.Random(11)
    proc = UnlearnLogitsProcessor()
    slots: list[dict | None] = []  # the persistent batch: request or None (hole)
    for step in range(300):
        removed, added, moved = [], [], []
        for i, req in enumerate(slots):  # finish some requests
            if req is not None and rng.random() < 0.2:
                slots[i] = None
                removed.append(i)
        for _ in range(rng.randint(0, 3)):  # add into the first hole, else append
            seqs = [[rng.randrange(6) for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 3))] + [[5, 5]]
            req = {"seqs": seqs if rng.random() < 0.7 else None, "prompt": [rng.randrange(6) for _ in range(3)],
                   "output": []}
            index = slots.index(None) if None in slots else len(slots)
            if index == len(slots):
                slots.append(None)
            slots[index] = req
            added.append((index, params(seqs) if req["seqs"] else Params(), req["prompt"], req["output"]))
        while None in slots:  # condense: move the last request into the first hole
            hole = slots.index(None)
            if slots[-1] is None:
                slots.pop()
                continue
            if hole >= len(slots) - 1:
                break
            slots[hole] = slots.pop()
            moved.append((len(slots), hole, Direction.UNIDIRECTIONAL))
        if len(slots) >= 2 and rng.random() < 0.5:
            a, b = rng.sample(range(len(slots)), 2)
            slots[a], slots[b] = slots[b], slots[a]
            moved.append((a, b, Direction.SWAP))
        update = Update(len(slots), removed, added, moved) if (removed or added or moved) else None
        proc.update_state(update)
        logits = apply(proc, max(1, len(slots)))
        for i, req in enumerate(slots):
            expected = _reference_bans(req["seqs"], req["prompt"], req["output"]) if req and req["seqs"] else set()
            assert banned(logits, i) == expected, (step, i)
        for req in slots:  # decode one token each: the live output lists grow
            if req is not None:
                req["output"].append(rng.randrange(6))


def test_the_gateway_sends_what_the_plugin_reads():
    backend = OpenAIUpstream("http://127.0.0.1:9", kind="vllm", tokenizer=None, served_model_name="m")
    request = GenerationRequest(SamplingParams(max_tokens=8), messages=[{"role": "user", "content": "hi"}],
                                banned_sequences=[(5,), (1, 2)])
    path, body = backend.payload(request, backend._bans(request.banned_sequences))
    assert path == "/chat/completions" and body["logit_bias"] == {"5": -100.0}
    xargs = body["vllm_xargs"]
    assert set(xargs) == {XARGS_KEY} and isinstance(xargs[XARGS_KEY], str)  # vllm_xargs values must be flat
    UnlearnLogitsProcessor.validate_params(Params(xargs))
    proc = UnlearnLogitsProcessor()
    proc.update_state(Update(1, added=[(0, Params(xargs), [0], [1])]))
    assert banned(apply(proc, 1), 0) == {2, 5}
