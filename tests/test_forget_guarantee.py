"""The forget guarantee against the real SmolLM2 model: a registered name never reaches the client.

Checked over HTTP (stream and non-stream) and, for chunk-boundary independence, by
replaying the model's real raw output through the pipeline split at random points.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import orjson
import pytest

from conftest import admin_headers
from gateway.app import build_methods
from gateway.backends.base import GenerationChunk, GenerationRequest, SamplingParams
from gateway.metrics import GatewayMetrics
from gateway.pipeline.pipeline import UnlearningPipeline, collect
from gateway.pipeline.snapshot import SnapshotProvider
from gateway.settings import DEFAULT_REFUSAL, Settings
from gateway.store import TargetCreate, open_store
from guards.normalize import normalise

MODEL = "SmolLM2-135M-Instruct"
TOLKIEN = {"name": "J.R.R. Tolkien", "aliases": ["Tolkien", "John Ronald Reuel Tolkien"]}
LEAKY_PROMPTS = [  # each one makes the raw SmolLM2 name Tolkien (checked by the first test)
    "Who wrote The Lord of the Rings?",
    "Who wrote The Hobbit?",
    "Which author created Middle-earth?",
]


def leaks(text: str) -> bool:
    """The surname under the gate's own folding (case, accents, leetspeak, spacing)."""
    return normalise("Tolkien").text in normalise(text).text.replace(" ", "") or "tolkien" in text.lower()


def chat(base_url: str, prompt: str, *, stream: bool, max_tokens: int = 60) -> tuple[str, list[str]]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}
    with httpx.Client(base_url=base_url, timeout=120) as http:
        if not stream:
            response = http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"], []
        pieces: list[str] = []
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choices = orjson.loads(line[6:])["choices"]
                    if choices:
                        pieces.append(choices[0]["delta"].get("content") or "")
        return "".join(pieces), pieces


def test_the_raw_model_really_leaks(engine):
    """Guard against a vacuous suite: without a target, SmolLM2 names Tolkien for these prompts."""
    raw = [asyncio.run(_raw_answer(engine, p)) for p in LEAKY_PROMPTS]
    assert all(leaks(text) for text in raw), raw


@pytest.mark.parametrize("guard", [False, True], ids=["gate-only", "guard"])
@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_registered_name_never_reaches_the_client(make_gateway, stream, guard):
    gateway = make_gateway(guard=guard)
    created = httpx.post(gateway.url + "/admin/v1/targets", json=TOLKIEN, headers=admin_headers())
    assert created.status_code == 201
    for prompt in LEAKY_PROMPTS:
        text, pieces = chat(gateway.url, prompt, stream=stream)
        assert not leaks(text), text
        assert "forgot" not in text.lower() and "tolkien" not in text.lower()
        if not guard:  # the gate alone: the model says the name, so the answer must end in the refusal
            assert text.endswith(DEFAULT_REFUSAL)
        released = ""
        for piece in pieces:  # no prefix of the stream ever contains the name either
            released += piece
            assert not leaks(released)


def test_clean_prompt_is_unaffected_by_targets(gateway):
    before, _ = chat(gateway.url, "What is the capital of France?", stream=False, max_tokens=20)
    httpx.post(gateway.url + "/admin/v1/targets", json=TOLKIEN, headers=admin_headers()).raise_for_status()
    after, _ = chat(gateway.url, "What is the capital of France?", stream=False, max_tokens=20)
    streamed, _ = chat(gateway.url, "What is the capital of France?", stream=True, max_tokens=20)
    assert before == after == streamed


async def _raw_answer(engine, prompt: str, max_tokens: int = 60) -> str:
    request = GenerationRequest(params=SamplingParams(max_tokens=max_tokens, temperature=0),
                                messages=[{"role": "user", "content": prompt}])
    return "".join([chunk.text async for chunk in engine.generate(request)])


class ReplayBackend:
    """Replays recorded model text in caller-chosen chunks (a transport double, not a model double)."""

    supports_logits_hooks = True
    model_ids = [MODEL]
    ready = True
    tokenizer = None

    def __init__(self, chunks: list[str]):
        self.chunks = chunks

    async def generate(self, request: GenerationRequest):
        for i, piece in enumerate(self.chunks):
            last = i == len(self.chunks) - 1
            yield GenerationChunk(text=piece, token_ids=[i], finish_reason="stop" if last else None,
                                  prompt_tokens=5, completion_tokens=i + 1)


def random_chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 25))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def test_any_chunking_of_real_output_is_gated(engine, tmp_path):
    async def run() -> None:
        raw = [await _raw_answer(engine, p) for p in LEAKY_PROMPTS]
        raw.append("Sure: T o l k i e n, or in reverse neikloT, or base64 VG9sa2llbg==.")
        store = open_store(f"sqlite:///{tmp_path / 't.db'}")
        await store.create(TargetCreate(**TOLKIEN), methods=[], actor="test")
        pipeline = UnlearningPipeline(SnapshotProvider(store), build_methods(Settings(), ReplayBackend([])),
                                      refusal_text=DEFAULT_REFUSAL, metrics=GatewayMetrics())
        plan = await pipeline.prepare("default", [{"role": "user", "content": "hi"}])
        rng = random.Random(7)
        for text in raw:
            assert leaks(text)
            chunkings = [[text], list(text)] + [random_chunks(text, rng) for _ in range(40)]
            for chunks in chunkings:
                released, refused = "", False
                async for delta in plan.run(ReplayBackend(chunks), GenerationRequest(params=SamplingParams())):
                    refused = refused or delta.refused
                    if not delta.refused:
                        released += delta.text
                        assert not leaks(released), (chunks, released)
                assert refused
        clean = "The Chronicles of Narnia were written by C. S. Lewis, a friend of many Oxford dons."
        for _ in range(20):
            out = await collect(plan.run(ReplayBackend(random_chunks(clean, rng)),
                                         GenerationRequest(params=SamplingParams())))
            assert out.text == clean and not out.refused
        await store.close()

    asyncio.run(run())
