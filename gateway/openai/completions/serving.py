"""`/v1/completions`: raw prompts (one or many) → pipeline → text-completion JSON or SSE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.backends.base import GenerationRequest, TokenLogprob
from gateway.openai.common import parse_body, usage
from gateway.openai.completions.protocol import UNSUPPORTED, CompletionRequest
from gateway.openai.serving import OpenAIServing
from gateway.pipeline.pipeline import ChoiceDelta


def completion_logprobs(entries: list[TokenLogprob], start_offset: int) -> dict:
    """The legacy shape: parallel lists plus character offsets into the completion text."""
    offsets, pos = [], start_offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t: lp for t, lp, _ in e.top} for e in entries],
        "text_offset": offsets,
    }


class CompletionFramer:
    def __init__(self, completion_id: str, created: int, model: str, with_logprobs: bool):
        self._base = {"id": completion_id, "object": "text_completion", "created": created, "model": model,
                      "system_fingerprint": None}
        self._with_logprobs = with_logprobs
        self._offsets: dict[int, int] = {}

    def _choice(self, index: int, delta: ChoiceDelta) -> dict:
        start = self._offsets.get(index, 0)
        self._offsets[index] = start + len(delta.text)
        return {
            "index": index,
            "text": delta.text,
            "logprobs": completion_logprobs(delta.logprobs, start) if self._with_logprobs else None,
            "finish_reason": delta.finish_reason,
        }

    def chunk(self, index: int, delta: ChoiceDelta) -> dict:
        return {**self._base, "choices": [self._choice(index, delta)], "usage": None}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return {**self._base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    def response(self, choices: list[ChoiceDelta], prompt_tokens: int, completion_tokens: int) -> dict:
        return {**self._base, "choices": [self._choice(i, c) for i, c in enumerate(choices)],
                "usage": usage(prompt_tokens, completion_tokens)}


async def create_completion(serving: OpenAIServing, request: Request) -> Response:
    body: CompletionRequest = await parse_body(request, CompletionRequest, UNSUPPORTED)
    serving.check_model(body.model)
    serving.check_n(body.n * len(body.prompts))
    plan = await serving.plan(request, [{"role": "user", "content": p} for p in body.prompts])
    with_logprobs = body.logprobs is not None
    jobs = [
        GenerationRequest(
            params=body.sampling_params(max_tokens=body.max_tokens or serving.settings.default_max_tokens,
                                        logprobs=with_logprobs, top_logprobs=body.logprobs or 0,
                                        seed_offset=i, vocab_size=serving.vocab_size),
            prompt=prompt,
        )
        for prompt in body.prompts
        for i in range(body.n)
    ]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await serving.respond(
        request, plan, jobs, stream=body.stream, include_usage=include_usage, id_prefix="cmpl",
        framer_factory=lambda cid, created: CompletionFramer(cid, created, body.model, with_logprobs),
    )
