"""What chat and completions share: plan the request, run n choices, stream or collect them.

The endpoints differ only in how a request becomes a conversation and how deltas
are framed; `OpenAIServing.respond` does the rest once for both, including
the rule that errors before the first byte are proper HTTP errors and errors
after it are an SSE error event (never a silent truncation).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import orjson

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import ClientAuth
from gateway.backends.base import Backend, BackendError, GenerationRequest
from gateway.errors import APIError, error_payload
from gateway.metrics import GatewayMetrics
from gateway.openai.common import SSE_DONE, sse
from gateway.openai.event_stream import EventStreamResponse, LastEvent, cancel_on_disconnect
from gateway.pipeline.pipeline import ChoiceDelta, RequestPlan, UnlearningPipeline, collect
from gateway.settings import Settings
from gateway.store.base import StoreUnavailable

log = logging.getLogger(__name__)

_DONE = object()


class Framer(Protocol):
    """Endpoint-specific JSON shapes."""

    def chunk(self, index: int, delta: ChoiceDelta) -> dict: ...

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict: ...

    def response(self, choices: list[ChoiceDelta], prompt_tokens: int, completion_tokens: int) -> dict: ...


class OpenAIServing:
    def __init__(self, backend: Backend, pipeline: UnlearningPipeline, auth: ClientAuth, settings: Settings,
                 metrics: GatewayMetrics):
        self.backend = backend
        self.pipeline = pipeline
        self.auth = auth
        self.settings = settings
        self.metrics = metrics
        # Response ids only need to be unique: a generator seeded once from the OS, not a syscall each.
        self._ids = random.Random(os.urandom(16))

    def check_model(self, name: str) -> None:
        if name not in self.backend.model_ids:
            raise APIError(404, f"The model '{name}' does not exist or you do not have access to it.",
                           code="model_not_found", param="model")

    def check_n(self, n: int) -> None:
        if n > self.settings.max_n:
            raise APIError(400, f"'n' must be at most {self.settings.max_n}.", code="invalid_request", param="n")

    @property
    def vocab_size(self) -> int | None:
        tokenizer = self.backend.tokenizer
        return len(tokenizer) if tokenizer is not None else None

    async def plan(self, request: Request, conversation: list[dict[str, str]]) -> RequestPlan:
        tenant = self.auth.tenant(request)
        try:
            return await self.pipeline.prepare(tenant, conversation)
        except StoreUnavailable:
            self.metrics.store_errors.inc()
            raise

    async def respond(self, request: Request, plan: RequestPlan, jobs: list[GenerationRequest], *, stream: bool,
                      include_usage: bool, framer_factory: Callable[[str, int], Framer], id_prefix: str) -> Response:
        framer = framer_factory(f"{id_prefix}-{self._ids.getrandbits(96):024x}", int(time.time()))
        if stream:
            return await self._stream(plan, jobs, framer, include_usage)
        choices = await cancel_on_disconnect(request.receive, self._collect_all(plan, jobs))
        prompt_tokens = max((c.prompt_tokens for c in choices), default=0)
        completion_tokens = sum(c.completion_tokens for c in choices)
        self.count_tokens(prompt_tokens, completion_tokens)
        return Response(orjson.dumps(framer.response(choices, prompt_tokens, completion_tokens)),
                        media_type="application/json")

    async def _collect_all(self, plan: RequestPlan, jobs: list[GenerationRequest]) -> list[ChoiceDelta]:
        if len(jobs) == 1:  # no task per choice for the usual n=1
            return [await collect(plan.run(self.backend, jobs[0]))]
        return list(await asyncio.gather(*(collect(plan.run(self.backend, job)) for job in jobs)))

    async def _stream(self, plan: RequestPlan, jobs: list[GenerationRequest], framer: Framer,
                      include_usage: bool) -> Response:
        deltas = _merge([plan.run(self.backend, job) for job in jobs])
        try:
            first = await anext(deltas)  # errors up to the first token are still proper HTTP errors
        except BaseException:
            await deltas.aclose()
            raise
        prompt_tokens: dict[int, int] = {}
        completion_tokens: dict[int, int] = {}

        async def body() -> AsyncIterator[bytes]:
            open_choices, last = len(jobs), b""
            try:
                item = first
                while True:
                    index, delta = item
                    prompt_tokens[index], completion_tokens[index] = delta.prompt_tokens, delta.completion_tokens
                    event = sse(framer.chunk(index, delta))
                    open_choices -= delta.finish_reason is not None
                    if open_choices:
                        yield event
                    else:  # the answer's last delta: sent with the usage, [DONE] and the body's end
                        last = event
                    try:
                        item = await anext(deltas)
                    except StopAsyncIteration:
                        break
                p, c = max(prompt_tokens.values(), default=0), sum(completion_tokens.values())
                self.count_tokens(p, c)
                usage_event = sse(framer.usage_chunk(p, c)) if include_usage else b""
                yield LastEvent(last + usage_event + SSE_DONE)
            except (BackendError, StoreUnavailable) as exc:
                status = exc.status if isinstance(exc, BackendError) else 503
                error = sse(error_payload(status, str(exc), code=getattr(exc, "code", "service_unavailable")))
                yield LastEvent(last + error)
            finally:
                await deltas.aclose()

        return EventStreamResponse(body())

    def count_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.completion_tokens.inc(completion_tokens)


async def _merge(streams: list[AsyncIterator[ChoiceDelta]]) -> AsyncIterator[tuple[int, ChoiceDelta]]:
    """Interleave the n choices of one request as their deltas arrive."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[ChoiceDelta]) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
            await queue.put((index, _DONE))
        except Exception as exc:
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
