"""The embedded engine decodes its active sequences as one batch: same answers as alone, per-row hooks."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gateway.backends.base import GenerationRequest, SamplingParams
from gateway.backends.decode_batch import DecodeBatch

pytestmark = pytest.mark.model

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village far away,",
    "List three colours:",
    "Water boils at",
]


def _request(prompt: str, max_tokens: int = 16, **extra) -> GenerationRequest:
    return GenerationRequest(params=SamplingParams(temperature=0.0, max_tokens=max_tokens), prompt=prompt, **extra)


async def _text(engine, request: GenerationRequest) -> str:
    return "".join([chunk.text async for chunk in engine.generate(request)])


def test_batched_answers_equal_the_answers_alone(engine):
    async def run():
        alone = [await _text(engine, _request(p)) for p in PROMPTS]
        together = await asyncio.gather(*(_text(engine, _request(p)) for p in PROMPTS))
        return alone, together

    alone, together = asyncio.run(run())
    assert all(alone)
    assert together == alone


def test_a_cancelled_row_leaves_the_others_untouched(engine):
    async def run():
        expected = await _text(engine, _request(PROMPTS[0], max_tokens=24))
        stream = engine.generate(_request(PROMPTS[1], max_tokens=200))
        survivor = asyncio.create_task(_text(engine, _request(PROMPTS[0], max_tokens=24)))
        await anext(stream)
        await stream.aclose()  # the client went away after its first token
        return expected, await survivor

    expected, survivor = asyncio.run(run())
    assert survivor == expected


def test_hooks_apply_to_their_own_row_only(engine):
    """A hook that bans every token but one forces its row; the other rows decode as before."""
    forced = engine.tokenizer.encode(" banana", add_special_tokens=False)[0]

    def only_banana(prompt_ids, output_ids, logits):
        out = torch.full_like(logits, float("-inf"))
        out[forced] = 0.0
        return out

    async def run():
        plain = await _text(engine, _request(PROMPTS[3], max_tokens=8))
        hooked, other = await asyncio.gather(
            _text(engine, _request(PROMPTS[2], max_tokens=4, logits_hooks=[only_banana])),
            _text(engine, _request(PROMPTS[3], max_tokens=8)),
        )
        return plain, hooked, other

    plain, hooked, other = asyncio.run(run())
    assert hooked == " banana" * 4
    assert other == plain


def test_rows_join_and_leave_with_different_lengths(engine):
    """Left padding: rows of different lengths joining a running batch keep their exact greedy answer."""
    model = engine._model  # noqa: SLF001 -- the batch is an engine internal
    tokenizer = engine.tokenizer
    from transformers import DynamicCache

    def prefill(text: str):
        ids = tokenizer.encode(text)
        out = model(input_ids=torch.tensor([ids]), past_key_values=DynamicCache(), use_cache=True)
        return out.past_key_values, out.logits[0, -1]

    def greedy_alone(text: str, steps: int) -> list[int]:
        cache, logits = prefill(text)
        batch, tokens = DecodeBatch(model), []
        batch.add(cache)
        for _ in range(steps):
            tokens.append(int(logits.argmax()))
            logits = batch.step([tokens[-1]])[0]
        return tokens

    with torch.inference_mode():
        expected = {p: greedy_alone(p, 8) for p in PROMPTS[:3]}
        batch = DecodeBatch(model)
        rows: list[str] = []
        outputs: dict[str, list[int]] = {p: [] for p in PROMPTS[:3]}
        logits: list[torch.Tensor] = []
        for prompt in PROMPTS[:2]:
            cache, last = prefill(prompt)
            batch.add(cache)
            rows.append(prompt)
            logits.append(last)
        for step in range(8):
            tokens = [int(row.argmax()) for row in logits]
            for prompt, token in zip(rows, tokens):
                outputs[prompt].append(token)
            if step == 3:  # the long row leaves, a third joins
                batch.keep([0])
                rows, tokens = rows[:1], tokens[:1]
            step_logits = list(batch.step(tokens))
            if step == 3:
                cache, last = prefill(PROMPTS[2])
                batch.add(cache)
                rows.append(PROMPTS[2])
                step_logits.append(last)
            logits = step_logits
        assert outputs[PROMPTS[0]] == expected[PROMPTS[0]]
        assert outputs[PROMPTS[1]] == expected[PROMPTS[1]][:4]
        assert outputs[PROMPTS[2]] == expected[PROMPTS[2]][: len(outputs[PROMPTS[2]])]
        assert len(outputs[PROMPTS[2]]) == 4
