"""`POST /v1/responses`: a Responses-API request → the chat request it means → the same pipeline.

One choice (the Responses API has no `n`). As on the chat endpoint, errors up to
the first gated delta are proper HTTP errors; after it, an `error` event ends the
stream (never a silent truncation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.backends.base import BackendError
from gateway.errors import APIError
from gateway.openai.chat.serving import chat_jobs, check_features
from gateway.openai.common import parse_body, sse
from gateway.openai.event_stream import EventStreamResponse, LastEvent, cancel_on_disconnect
from gateway.openai.responses.framing import ResponseBuilder
from gateway.openai.responses.protocol import UNSUPPORTED, ResponsesRequest
from gateway.openai.serving import OpenAIServing
from gateway.pipeline.pipeline import collect
from gateway.store.base import StoreUnavailable


def _event(payload: dict) -> bytes:
    """An SSE event named by its type, as OpenAI streams them (clients may dispatch on `event:`)."""
    return b"event: " + payload["type"].encode() + b"\n" + sse(payload)


async def create_response(serving: OpenAIServing, request: Request) -> Response:
    body: ResponsesRequest = await parse_body(request, ResponsesRequest, UNSUPPORTED)
    try:
        chat = body.chat_request()
    except ValidationError as exc:  # e.g. a function_call_output whose call is not in `input`
        first = exc.errors()[0]
        raise APIError(400, f"Invalid 'input': {first.get('msg', 'invalid item')}", code="invalid_request",
                       param="input") from None
    serving.check_model(chat.model)
    check_features(serving, chat)
    plan = await serving.plan(request, chat.conversation())
    [job] = chat_jobs(serving, chat)
    builder = ResponseBuilder(body, chat.model, structured=job.response_format is not None)
    deltas = plan.run(serving.backend, job)
    if not body.stream:
        choice = await cancel_on_disconnect(request.receive, collect(deltas))
        serving.count_tokens(choice.prompt_tokens, choice.completion_tokens)
        return Response(orjson.dumps(builder.collected(choice)), media_type="application/json")
    try:
        first = await anext(deltas)  # errors up to the first delta are still proper HTTP errors
    except BaseException:
        await deltas.aclose()
        raise

    async def events() -> AsyncIterator[bytes]:
        delta = first
        try:
            pending = b"".join(_event(e) for e in builder.start())
            while True:
                out = b"".join(_event(e) for e in builder.delta(delta))
                if delta.finish_reason is not None or delta.refused:
                    serving.count_tokens(delta.prompt_tokens, delta.completion_tokens)
                    yield LastEvent(pending + out)
                    return
                if pending + out:
                    yield pending + out
                pending = b""
                delta = await anext(deltas)
        except StopAsyncIteration:
            yield LastEvent(_event(builder.error(502, "The backend ended the response without finishing it.",
                                              "bad_upstream")))
        except (BackendError, StoreUnavailable) as exc:
            status = exc.status if isinstance(exc, BackendError) else 503
            yield LastEvent(_event(builder.error(status, str(exc), getattr(exc, "code", "service_unavailable"))))
        finally:
            await deltas.aclose()

    return EventStreamResponse(events())
