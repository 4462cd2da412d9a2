"""The official OpenAI SDK drives the gateway over real HTTP against the real SmolLM2 model."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_non_stream_greedy_is_deterministic_and_counts_usage(client):
    first = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    second = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    choice = first.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert first.usage.completion_tokens <= 12 and first.usage.prompt_tokens > 10
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert second.choices[0].message.content == choice.message.content


def test_chat_stream_yields_tokens_then_usage(client):
    pieces, usage, finish = [], None, None
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        pieces.append(delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert len([p for p in pieces if p]) > 3, "expected token-by-token streaming"
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert finish in ("stop", "length")


def test_max_tokens_gives_length_finish(client):
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=3, temperature=0)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 3


def test_stop_sequence_cuts_the_answer(client):
    base = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    text = base.choices[0].message.content
    stop_word = "Paris"
    assert stop_word in text
    cut = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                         stop=[stop_word])
    assert cut.choices[0].message.content == text[: text.index(stop_word)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_reproduces_and_n_gives_distinct_indices(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Write a word."}], max_tokens=8,
                  temperature=1.0, seed=1234, n=2)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_logprobs_are_real_distributions(client):
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0,
                                         logprobs=True, top_logprobs=3)
    entries = out.choices[0].logprobs.content
    assert len(entries) == out.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0])  # greedy picks the most likely token
    assert "".join(e.token for e in entries) == out.choices[0].message.content


def test_completions_endpoint_stream_and_non_stream(client):
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert "Paris" in out.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0, stream=True) if c.choices)
    assert streamed == out.choices[0].text
    multi = client.completions.create(model=MODEL, prompt=["One, two,", "A, B,"], max_tokens=2, temperature=0)
    assert [c.index for c in multi.choices] == [0, 1]


def test_logit_bias_is_honoured(client, engine):
    plain = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=1,
                                      temperature=0, logprobs=1)
    token = plain.choices[0].logprobs.tokens[0]
    (banned_id,) = engine.tokenizer.encode(token, add_special_tokens=False)
    biased = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=1,
                                       temperature=0, logit_bias={str(banned_id): -100})
    assert biased.choices[0].text != token


def test_client_disconnect_stops_generation(gateway, engine):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            got = [next(lines) for _ in range(3)]
            assert all(line.startswith("data: ") or line == "" for line in got)
        # Connection closed after a few tokens: the engine must drop the sequence promptly.
        deadline = time.monotonic() + 10
        while engine.active_sequences and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.active_sequences == 0
