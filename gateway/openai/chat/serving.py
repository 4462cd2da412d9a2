"""`/v1/chat/completions`: request → conversation → pipeline → chat-shaped JSON or SSE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.backends.base import CONTENT_PARTS, JSON_OUTPUT, TOOLS, GenerationRequest, ToolCallDelta, backend_features
from gateway.errors import APIError
from gateway.openai.chat.protocol import UNSUPPORTED, ChatCompletionRequest
from gateway.openai.common import chat_logprobs, parse_body, usage
from gateway.openai.serving import OpenAIServing
from gateway.pipeline.pipeline import ChoiceDelta


def tool_calls_wire(calls: list[ToolCallDelta], *, streamed: bool) -> list[dict]:
    return [{**({"index": c.index} if streamed else {}), "id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


class ChatFramer:
    """Chat-shaped JSON. In structured-output mode a refusal goes in `refusal` (content null), as
    OpenAI does, so a client's JSON parser never sees the refusal sentence."""

    def __init__(self, completion_id: str, created: int, model: str, with_logprobs: bool, structured: bool = False):
        self._base = {"id": completion_id, "created": created, "model": model, "system_fingerprint": None}
        self._with_logprobs = with_logprobs
        self._structured = structured
        self._started: set[int] = set()

    def _message(self, delta: ChoiceDelta, *, streamed: bool) -> dict:
        refusal = self._structured and delta.refused
        text = delta.text if delta.text or not delta.tool_calls else None
        body: dict = {"content": None if refusal else text}
        if refusal:
            body["refusal"] = delta.text
        if delta.tool_calls:
            body["tool_calls"] = tool_calls_wire(delta.tool_calls, streamed=streamed)
        return body

    def chunk(self, index: int, delta: ChoiceDelta) -> dict:
        body = self._message(delta, streamed=True)
        if index not in self._started:  # the first chunk of each choice names the role
            self._started.add(index)
            body = {"role": "assistant", **body}
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
                    "message": {"role": "assistant", "refusal": None, **self._message(c, streamed=False)},
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
    check_features(serving, body)
    plan = await serving.plan(request, body.conversation())
    jobs = chat_jobs(serving, body)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    structured = jobs[0].response_format is not None
    return await serving.respond(
        request, plan, jobs, stream=body.stream, include_usage=include_usage, id_prefix="chatcmpl",
        framer_factory=lambda cid, created: ChatFramer(cid, created, body.model, body.logprobs, structured),
    )


def chat_jobs(serving: OpenAIServing, body: ChatCompletionRequest) -> list[GenerationRequest]:
    """The request's `n` generations (also what `/v1/responses` runs, mapped onto a chat request)."""
    max_tokens = body.requested_max_tokens or serving.settings.default_max_tokens
    top = body.top_logprobs or 0
    structured = body.response_format is not None and body.response_format.structured
    messages = body.backend_messages()
    return [
        GenerationRequest(
            params=body.sampling_params(max_tokens=max_tokens, logprobs=body.logprobs, top_logprobs=top,
                                        seed_offset=i, vocab_size=serving.vocab_size),
            messages=messages,
            response_format=body.response_format.wire() if structured else None,  # type: ignore[union-attr]
            **body.tool_fields(),
        )
        for i in range(body.n)
    ]


def check_features(serving: OpenAIServing, body: ChatCompletionRequest) -> None:
    """A 400 naming the field when the backend cannot honour it (before any detection or generation)."""
    features = backend_features(serving.backend)
    if body.uses_tools and TOOLS not in features:
        param = "tools" if body.tools else "messages"
        raise APIError(400, f"'{param}': tool calling is not supported by this gateway's backend (the embedded "
                       "engine's chat template has no tools); serve through an upstream (UNLEARN_BACKEND=openai).",
                       code="unsupported_parameter", param=param)
    media = next((i for i, m in enumerate(body.messages) if m.has_media), None)
    if media is not None and CONTENT_PARTS not in features:
        param = f"messages.{media}.content"
        raise APIError(400, f"'{param}': image and audio parts are not supported by this gateway's backend (the "
                       "embedded engine reads text only); serve through a multimodal upstream.",
                       code="unsupported_parameter", param=param)
    if body.response_format is not None and body.response_format.structured and JSON_OUTPUT not in features:
        raise APIError(400, "'response_format': structured outputs are not supported by this gateway's backend.",
                       code="unsupported_parameter", param="response_format")
