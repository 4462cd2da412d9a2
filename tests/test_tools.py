"""Tool calling through the gateway: passed through to the upstream, every string of a call gated.

* a scripted upstream (streamed `tool_calls` deltas, as vLLM and OpenAI send them): pass-through of
  `tools`/`tool_choice`/`parallel_tool_calls`/tool turns, the SDK's and LangChain's view of the
  calls, and leak tests that split a target's name at every position of a tool name or argument;
* the real llama.cpp peer with `--chat_format chatml-function-calling`: a tools round trip with the
  `openai` SDK and LangChain's `bind_tools`;
* the embedded engine: a 400 that names the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from gateway.settings import DEFAULT_REFUSAL
from gateway_server import GatewayServer
from peers import start_llama_server
from scripted_upstream import MODEL, text_events, tool_call_events, register, sdk

SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the library catalogue.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
ASK = [{"role": "user", "content": "Find me the author of The Hobbit in the catalogue."}]


# -- pass-through -----------------------------------------------------------------------------


def test_tool_fields_and_tool_turns_reach_the_upstream(scripted_gateway, scripted):
    scripted.script = text_events(["It is in aisle 3."])
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "search", "arguments": '{"query": "Hobbit"}'}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "The Hobbit: aisle 3"}]
    answer = sdk(scripted_gateway).chat.completions.create(
        model=MODEL, messages=messages, tools=[SEARCH], tool_choice={"type": "function", "function": {"name": "search"}},
        parallel_tool_calls=False)
    assert answer.choices[0].message.content == "It is in aisle 3."
    sent = scripted.bodies[-1]
    assert sent["tools"] == [SEARCH]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "search"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"query": "Hobbit"}'
    assert sent["messages"][1]["content"] == ""
    assert sent["messages"][2] == {"role": "tool", "content": "The Hobbit: aisle 3", "tool_call_id": "call_0"}


@pytest.mark.parametrize("stream", [False, True])
def test_streamed_tool_calls_reach_the_client_whole(scripted_gateway, scripted, stream):
    scripted.script = tool_call_events([("search", ['{"que', 'ry": "Hob', 'bit"}']),
                                        ("lookup", ['{"shelf": 3}'])])
    client = sdk(scripted_gateway)
    if stream:
        with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[SEARCH]) as events:
            for _ in events:
                pass
            answer = events.get_final_completion()
    else:
        answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=[SEARCH])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls == [("call_0", "search", {"query": "Hobbit"}), ("call_1", "lookup", {"shelf": 3})]


def test_langchain_bind_tools_reads_the_calls(scripted_gateway, scripted):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def search(query: str) -> str:
        """Search the library catalogue."""
        return "aisle 3"

    scripted.script = tool_call_events([("search", ['{"query": ', '"Hobbit"}'])])
    llm = ChatOpenAI(model=MODEL, base_url=scripted_gateway.url + "/v1", api_key="unused", max_retries=0)
    message = llm.bind_tools([search]).invoke("Where is The Hobbit?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("search", {"query": "Hobbit"})]
    assert scripted.bodies[-1]["tools"][0]["function"]["name"] == "search"


# -- leaks --------------------------------------------------------------------------------------


def _raw(server: GatewayServer, stream: bool) -> tuple[int, str]:
    body = {"model": MODEL, "messages": ASK, "tools": [SEARCH], "stream": stream}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    return response.status_code, response.text


def _splits(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(1, len(text))]


@pytest.mark.parametrize("stream", [False, True])
def test_a_target_in_a_tool_argument_refuses_the_whole_answer_in_every_chunking(scripted_gateway, scripted, stream):
    register(scripted_gateway)
    for pieces in _splits('{"query": "books by Tolkien"}'):
        scripted.script = tool_call_events([("lookup", ['{"shelf": 3}']), ("search", pieces)])
        status, text = _raw(scripted_gateway, stream)
        assert status == 200, text
        assert "tolkien" not in text.lower(), (pieces, text)
        assert "tool_calls\":[" not in text.replace(" ", ""), (pieces, text)  # not even the clean first call
        assert DEFAULT_REFUSAL in text


@pytest.mark.parametrize("stream", [False, True])
def test_a_target_in_a_tool_name_is_refused(scripted_gateway, scripted, stream):
    register(scripted_gateway)
    for pieces in _splits("ask_tolkien"):
        scripted.script = tool_call_events([("".join(pieces), ['{}'])])
        # a name arriving in pieces: the upstream splits only arguments, so split the name by hand
        scripted.script[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] = pieces[0]
        scripted.script.insert(2, {"choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
            {"index": 0, "function": {"name": pieces[1]}}]}}]})
        status, text = _raw(scripted_gateway, stream)
        assert "tolkien" not in text.lower(), (pieces, text)
        assert DEFAULT_REFUSAL in text


def test_a_tool_result_naming_a_target_counts_for_detection(scripted_gateway, scripted):
    register(scripted_gateway)
    before = len(scripted.bodies)
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "search", "arguments": '{"q": "Hobbit"}'}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "The Hobbit, by J.R.R. Tolkien, aisle 3"}]
    answer = sdk(scripted_gateway).chat.completions.create(model=MODEL, messages=messages, tools=[SEARCH])
    assert answer.choices[0].message.content == DEFAULT_REFUSAL
    assert len(scripted.bodies) == before  # refused before generating: the upstream never saw it


# -- bad input and the embedded engine ----------------------------------------------------------


@pytest.mark.parametrize("message, param", [
    ({"role": "tool", "content": "x"}, "messages.1"),
    ({"role": "user", "content": "x", "tool_calls": []}, "messages.1"),
    ({"role": "assistant"}, "messages.1"),
])
def test_malformed_tool_turns_are_400s(scripted_gateway, message, param):
    body = {"model": MODEL, "messages": [*ASK, message]}
    response = httpx.post(scripted_gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert (response.json()["error"]["param"] or "").startswith(param)


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "search"}}}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
])
def test_tool_options_without_tools_are_400s(scripted_gateway, extra, param):
    """As OpenAI answers: a tool option with no `tools` is a mistake, not something to ignore."""
    body = {"model": MODEL, "messages": ASK, **extra}
    response = httpx.post(scripted_gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert "only allowed when 'tools' are specified" in response.json()["error"]["message"]


@pytest.mark.parametrize("extra, param", [
    ({"tools": [SEARCH]}, "tools"),
    ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "search", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "aisle 3"}]}, "messages"),
])
def test_the_embedded_engine_says_it_has_no_tools(gateway, extra, param):
    body = {"model": MODEL, "messages": ASK, **extra}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert "chat template has no tools" in error["message"]


# -- the real llama.cpp peer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_tools(tmp_path_factory) -> Iterator[str]:
    with start_llama_server(tmp_path_factory.mktemp("llama-tools"), "chatml-function-calling") as url:
        yield url


def test_tools_round_trip_with_llama_cpp(make_gateway, llama_tools):
    server = make_gateway(backend="openai", upstream_url=llama_tools, guard_semantic=False, upstream_timeout=120.0)
    client = sdk(server)
    messages: list = [{"role": "user", "content": "Search the catalogue for The Hobbit."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[SEARCH], max_tokens=48,
                                           temperature=0, tool_choice={"type": "function", "function": {"name": "search"}})
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "search"
    assert isinstance(json.loads(call.function.arguments), dict)
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "The Hobbit is in aisle 3."}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[SEARCH], max_tokens=24,
                                            temperature=0)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_langchain_bind_tools_with_llama_cpp(make_gateway, llama_tools):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def search(query: str) -> str:
        """Search the library catalogue."""
        return "aisle 3"

    server = make_gateway(backend="openai", upstream_url=llama_tools, guard_semantic=False, upstream_timeout=120.0)
    llm = ChatOpenAI(model=MODEL, base_url=server.url + "/v1", api_key="unused", max_retries=0, temperature=0,
                     max_tokens=48)
    message = llm.bind_tools([search], tool_choice="search").invoke("Search the catalogue for The Hobbit.")
    assert [c["name"] for c in message.tool_calls] == ["search"]
    assert isinstance(message.tool_calls[0]["args"], dict)


def test_a_tool_result_must_answer_a_call(scripted_gateway):
    body = {"model": MODEL, "messages": [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]}
    response = httpx.post(scripted_gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages"


# -- parsing an upstream's tool calls --------------------------------------------------------------


def _read(payloads: list[dict]) -> bytes:
    return b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


async def _parse(payloads: list[dict]):
    from gateway.backends.upstream_stream import StreamRecord, upstream_chunks

    class Replay:
        headers = {"content-type": "text/event-stream"}

        async def iter_chunks(self):
            yield _read(payloads)

    return [c async for c in upstream_chunks(Replay(), StreamRecord(), chat=True, want_logprobs=False, track=False,
                                             streamed=True, count_prompt=lambda: 0)]


async def test_a_whole_message_tool_call_is_parsed():  # a non-stream answer (the empty-stream fallback)
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": 1}'}}]}
    chunks = await _parse([{"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}])
    assert chunks[-1].finish_reason == "tool_calls"
    assert [(c.index, c.id, c.name, c.arguments) for c in chunks[-1].tool_calls] == [(0, "c1", "search", '{"q": 1}')]


async def test_llama_cpp_repeated_ids_and_names_are_not_doubled():
    def piece(args: str) -> dict:
        call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "search", "arguments": args}}
        return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}

    chunks = await _parse([piece('{"q"'), piece(': 1}'), {"choices": [{"index": 0, "delta": {},
                                                                       "finish_reason": "tool_calls"}]}])
    calls = [c for chunk in chunks for c in chunk.tool_calls]
    assert "".join(c.id for c in calls) == "c1" and "".join(c.name for c in calls) == "search"
    assert "".join(c.arguments for c in calls) == '{"q": 1}'


@pytest.mark.parametrize("tool_calls", ["nope", [{"index": 0, "function": {"name": 3}}], [{"index": "x"}]])
async def test_an_unreadable_tool_call_is_a_502(tool_calls):
    from gateway.backends.base import BackendError

    with pytest.raises(BackendError) as caught:
        await _parse([{"choices": [{"index": 0, "delta": {"tool_calls": tool_calls}, "finish_reason": None}]}])
    assert caught.value.status == 502


def test_detection_text_holds_tool_calls_and_tool_results():
    from gateway.openai.chat.protocol import ChatCompletionRequest

    body = ChatCompletionRequest.model_validate({"model": MODEL, "messages": [
        *ASK, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "search", "arguments": '{"q": "Tolkien"}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "The Hobbit, by J.R.R. Tolkien"}]})
    assert body.conversation()[1:] == [{"role": "assistant", "content": 'search {"q": "Tolkien"}'},
                                       {"role": "user", "content": "The Hobbit, by J.R.R. Tolkien"}]
