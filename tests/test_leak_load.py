"""Under concurrent load, no registered name reaches a client: every response of a bounded loopback
load test is scanned for every registered name.

The upstream is adversarial on purpose: for each request it writes a registered name (or, for the
control cases, none) split at random points across random chunks, in the text or in a tool call's
arguments, streamed or not. A gate that holds under one request at a time but mixes up state between
concurrent streams, or lets a chunk through early under load, shows up here as a leak.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conftest import admin_headers
from guards.output_gate import ForbiddenMatcher
from scripted_upstream import MODEL, text_events, tool_call_events
from threaded_server import ThreadedServer

REQUESTS = 240
CONCURRENCY = 16
TIME_LIMIT = 120.0
SYLLABLES = "zor blax quin ta vern mor dax vel thi ran kul bre sto fen gar lix pum wob".split()
CLEAN = "The weather was mild and the river ran quietly past the old mill. "
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}}}}


def _names(count: int) -> list[str]:
    rng = random.Random(7)
    names: set[str] = set()
    while len(names) < count:
        first = "".join(rng.sample(SYLLABLES, 2)).capitalize()
        last = "".join(rng.sample(SYLLABLES, 3)).capitalize()
        names.add(f"{first} {last}")
    return sorted(names)


NAMES = _names(40)


def _split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def answer_for(case: int) -> tuple[list[dict], str | None]:
    """The scripted stream for one case and the name it carries (None for the clean control cases)."""
    rng = random.Random(case)
    name = None if case % 8 == 0 else rng.choice(NAMES)
    text = CLEAN if name is None else f"{CLEAN[: rng.randint(0, len(CLEAN))]}{name}{CLEAN[: rng.randint(0, 30)]}"
    if name is not None and case % 4 == 1:
        return tool_call_events([("search", _split(json.dumps({"query": f"books by {name}"}), rng))]), name
    return text_events(_split(text, rng)), name


class AdversarialUpstream(ThreadedServer):
    """Answers request "case N" with `answer_for(N)`, one SSE event per piece."""

    def __init__(self) -> None:
        super().__init__(Starlette(routes=[Route("/v1/models", self._models),
                                           Route("/v1/chat/completions", self._chat, methods=["POST"])]),
                         "adversarial upstream")

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        case = int(re.search(r"case (\d+)", body["messages"][-1]["content"]).group(1))
        events, _ = answer_for(case)

        async def stream():
            for event in events:
                chunk = {"id": f"chatcmpl-{case}", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                         **event}
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                await asyncio.sleep(0)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


def _received(body: bytes, stream: bool) -> str:
    """Every string the client got: content, refusal, tool names and arguments, over all events."""
    payloads = ([orjson.loads(line[6:]) for line in body.splitlines()
                 if line.startswith(b"data: {")] if stream else [orjson.loads(body)])
    parts: list[str] = []
    for payload in payloads:
        for choice in payload.get("choices", []):
            message = choice.get("delta") or choice.get("message") or {}
            parts += [message.get("content") or "", message.get("refusal") or ""]
            for call in message.get("tool_calls") or []:
                parts += [call.get("function", {}).get("name") or "", call.get("function", {}).get("arguments") or ""]
    return "".join(parts)


@pytest.fixture(scope="module")
def adversarial():
    with AdversarialUpstream() as upstream:
        yield upstream


def test_no_registered_name_reaches_a_client_under_load(make_gateway, adversarial):
    server = make_gateway(backend="openai", upstream_url=adversarial.url, guard_semantic=False, alu=False, uld=False)
    batch = [{"name": name, "description": f"A person called {name}"} for name in NAMES]
    created = httpx.post(server.url + "/admin/v1/targets:batch", json={"targets": batch}, headers=admin_headers(),
                         timeout=120)
    assert created.status_code in (200, 201), created.text
    matcher = ForbiddenMatcher(NAMES)
    squeezed = [re.sub(r"\W", "", n).casefold() for n in NAMES]
    outcomes: dict[str, int] = {"leaked": 0, "refused": 0, "clean": 0, "errors": 0}
    leaks: list[tuple[int, str]] = []
    deadline = time.monotonic() + TIME_LIMIT

    async def one(client: httpx.AsyncClient, case: int) -> None:
        stream = case % 3 != 0
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell me something, case {case}."}],
                "stream": stream, "tools": [SEARCH]}
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            outcomes["errors"] += 1
            return
        text = _received(response.content, stream)
        flat = re.sub(r"\W", "", text).casefold()
        if matcher.first_match(text) is not None or any(s in flat for s in squeezed):
            outcomes["leaked"] += 1
            leaks.append((case, text))
        elif answer_for(case)[1] is None:
            outcomes["clean"] += 1
        else:
            outcomes["refused"] += 1

    async def run() -> None:
        cases = iter(range(REQUESTS))
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            async def worker() -> None:
                for case in cases:
                    if time.monotonic() > deadline:
                        return
                    await one(client, case)
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    asyncio.run(run())
    assert leaks == [], leaks[:3]
    assert outcomes["errors"] == 0, outcomes
    assert sum(outcomes.values()) >= REQUESTS // 2, outcomes  # the time bound did not hollow the test out
    assert outcomes["refused"] > 0 and outcomes["clean"] > 0, outcomes
