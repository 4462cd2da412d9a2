"""`/v1/chat/completions`: request → conversation → pipeline → chat-shaped JSON or SSE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.backends.base import GenerationRequest
from gateway.openai.chat.protocol import UNSUPPORTED, ChatCompletionRequest
from gateway.openai.common import chat_logprobs, parse_body, usage
from gateway.openai.serving import OpenAIServing
from gateway.pipeline.pipeline import ChoiceDelta


class ChatFramer:
    def __init__(self, completion_id: str, created: int, model: str, with_logprobs: bool):
        self._base = {"id": completion_id, "created": created, "model": model, "system_fingerprint": None}
        self._with_logprobs = with_logprobs
        self._started: set[int] = set()

    def chunk(self, index: int, delta: ChoiceDelta) -> dict:
        body: dict = {"content": delta.text}
        if index not in self._started:  # the first chunk of each choice names the role
            self._started.add(index)
            body = {"role": "assistant", "content": delta.text}
        choice = {
            "index": index,
            "delta": body,
            "logprobs": chat_logprobs(delta.logprobs) if self._with_logprobs and delta.logprobs else None,
            "finish_reason": delta.finish_reason,
        }
        return {**self._base, "object": "chat.completion.chunk", "choices": [choice], "usage": None}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return {**self._base, "object": "chat.completion.chunk", "choices": [],
                "usage": usage(prompt_tokens, completion_tokens)}

    def response(self, choices: list[ChoiceDelta], prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            **self._base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": chat_logprobs(c.logprobs) if self._with_logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage(prompt_tokens, completion_tokens),
        }


async def create_chat_completion(serving: OpenAIServing, request: Request) -> Response:
    body: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest, UNSUPPORTED)
    serving.check_model(body.model)
    serving.check_n(body.n)
    conversation = body.conversation()
    plan = await serving.plan(request, conversation)
    max_tokens = body.requested_max_tokens or serving.settings.default_max_tokens
    top = body.top_logprobs or 0
    jobs = [
        GenerationRequest(
            params=body.sampling_params(max_tokens=max_tokens, logprobs=body.logprobs, top_logprobs=top,
                                        seed_offset=i, vocab_size=serving.vocab_size),
            messages=conversation,
        )
        for i in range(body.n)
    ]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await serving.respond(
        request, plan, jobs, stream=body.stream, include_usage=include_usage, id_prefix="chatcmpl",
        framer_factory=lambda cid, created: ChatFramer(cid, created, body.model, body.logprobs),
    )
