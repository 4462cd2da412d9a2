"""A cheap stand-in for the model in HTTP-level tests (auth, metrics, faults): a transport double.

It answers every request with the same text, as the engine would frame it (one chunk per
word, usage counted), so the gateway's serving, pipeline and gate run for real without
loading a model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.backends.base import GenerationChunk, GenerationRequest

FAKE_MODEL = "fake-model"


class FakeBackend:
    supports_logits_hooks = True
    model_ids = [FAKE_MODEL]
    ready = True
    tokenizer = None

    def __init__(self, text: str = "Hello there, how can I help?"):
        self.text = text
        self.requests: list[GenerationRequest] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        words = self.text.split(" ")[: max(1, request.params.max_tokens)]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield GenerationChunk(text=word if i == 0 else " " + word, finish_reason="stop" if last else None,
                                  prompt_tokens=5, completion_tokens=i + 1)
