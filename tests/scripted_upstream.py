"""A real HTTP server that answers every chat request with a scripted stream of OpenAI chunks.

For features the llama.cpp peer does not have (or not reliably: streamed tool calls,
`json_schema` with a target's name in a field) and for leak tests, where the upstream
must write a target's name split at a chosen position. Each scripted piece is its own
SSE event and its own write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from threaded_server import ThreadedServer

MODEL = "SmolLM2-135M-Instruct"


def text_events(pieces: Iterable[str], finish: str = "stop") -> list[dict]:
    """Chunks writing `pieces` as content, then the finish and the usage."""
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    return events + _end(finish)


def tool_call_events(calls: list[tuple[str, list[str]]], content: Iterable[str] = ()) -> list[dict]:
    """Chunks of tool calls, each (name, argument pieces), streamed as OpenAI and vLLM do."""
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in content]
    for i, (name, pieces) in enumerate(calls):
        head = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
        events.append({"choices": [{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]})
        for piece in pieces:
            part = {"index": i, "function": {"arguments": piece}}
            events.append({"choices": [{"index": 0, "delta": {"tool_calls": [part]}, "finish_reason": None}]})
    return events + _end("tool_calls")


def _end(finish: str) -> list[dict]:
    return [{"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
            {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}]


class ScriptedUpstream(ThreadedServer):
    """`script` is what the next chat request gets; `bodies` is what the gateway sent."""

    def __init__(self) -> None:
        self.script: list[dict] = text_events(["Hello."])
        self.bodies: list[dict] = []
        app = Starlette(routes=[Route("/v1/models", self._models),
                                Route("/v1/chat/completions", self._chat, methods=["POST"])])
        super().__init__(app, "scripted upstream")

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        self.bodies.append(orjson.loads(await request.body()))
        script = list(self.script)

        async def events():
            for event in script:
                payload = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                           **event}
                yield b"data: " + orjson.dumps(payload) + b"\n\n"
                await asyncio.sleep(0)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


TOLKIEN = {"name": "J.R.R. Tolkien", "aliases": ["Tolkien", "John Ronald Reuel Tolkien"], "methods": ["guard"]}


def register(server, target: dict = TOLKIEN) -> None:
    """Register `target` through the gateway's admin API (the test admin token)."""
    import httpx
    from conftest import admin_headers

    response = httpx.post(server.url + "/admin/v1/targets", json=target, headers=admin_headers(), timeout=60)
    assert response.status_code == 201, response.text


def sdk(server):
    """The official OpenAI client pointed at the gateway, without retries (a retry would hide a 5xx)."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
