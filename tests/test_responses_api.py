"""`POST /v1/responses`: the `openai` SDK's `responses.create` (stream or not) through the same pipeline,
on the embedded engine and on a scripted upstream; a target never leaves through an output item."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.settings import DEFAULT_REFUSAL
from peers import start_llama_server
from scripted_upstream import MODEL, text_events, tool_call_events, register, sdk

SEARCH = {"type": "function", "name": "search", "description": "Search the catalogue.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def test_responses_create_on_the_embedded_engine(gateway):
    client = sdk(gateway)
    response = client.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.",
                                       max_output_tokens=16, temperature=0)
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage.output_tokens > 0
    events = list(client.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.",
                                          max_output_tokens=16, temperature=0, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events[-1].response  # response.completed, or response.incomplete when cut at max_output_tokens
    assert events[-1].type == f"response.{final.status}"
    assert "".join(deltas) == final.output_text == response.output_text


def test_input_items_and_instructions_reach_the_upstream(scripted_gateway, scripted):
    scripted.script = text_events(["Aisle ", "3."])
    response = sdk(scripted_gateway).responses.create(model=MODEL, instructions="You are a librarian.", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Where is The Hobbit?"},
                                     {"type": "input_image", "image_url": "https://example.com/cover.png"}]},
        {"type": "function_call", "call_id": "c1", "name": "search", "arguments": '{"query": "Hobbit"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "aisle 3"}], tools=[SEARCH])
    assert response.output_text == "Aisle 3."
    sent = scripted.bodies[-1]
    assert sent["messages"][0] == {"role": "system", "content": "You are a librarian."}
    assert sent["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.com/cover.png"}}
    assert sent["messages"][2]["tool_calls"][0]["id"] == "c1" and sent["messages"][3]["tool_call_id"] == "c1"
    assert sent["tools"][0]["function"]["name"] == "search"


@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_are_output_items(scripted_gateway, scripted, stream):
    scripted.script = tool_call_events([("search", ['{"query":', ' "Hobbit"}'])])
    client = sdk(scripted_gateway)
    if stream:
        with client.responses.stream(model=MODEL, input="Find The Hobbit.", tools=[SEARCH]) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model=MODEL, input="Find The Hobbit.", tools=[SEARCH])
    calls = [(i.type, i.name, json.loads(i.arguments)) for i in response.output]
    assert calls == [("function_call", "search", {"query": "Hobbit"})]


@pytest.mark.parametrize("stream", [False, True])
def test_a_target_never_leaves_through_a_response_in_any_chunking(scripted_gateway, scripted, stream):
    register(scripted_gateway)
    answer = "The Hobbit was written by J.R.R. Tolkien in 1937."
    for i in range(1, len(answer)):
        scripted.script = text_events([answer[:i], answer[i:]])
        body = {"model": MODEL, "input": "Who wrote The Hobbit?", "stream": stream}
        response = httpx.post(scripted_gateway.url + "/v1/responses", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert "tolkien" not in response.text.lower(), (i, response.text)
        assert DEFAULT_REFUSAL in response.text


def test_a_structured_refusal_is_a_refusal_part(scripted_gateway, scripted):
    register(scripted_gateway)
    scripted.script = text_events(['{"author": "Tol', 'kien"}'])
    fmt = {"type": "json_schema", "name": "Book", "schema": {"type": "object", "properties": {
        "author": {"type": "string"}}, "required": ["author"]}, "strict": True}
    response = sdk(scripted_gateway).responses.create(model=MODEL, input="Who wrote The Hobbit?",
                                                      text={"format": fmt})
    assert [p.type for p in response.output[0].content] == ["refusal"]
    assert response.output[0].content[0].refusal == DEFAULT_REFUSAL
    assert scripted.bodies[-1]["response_format"]["json_schema"]["name"] == "Book"


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}], "tools": [SEARCH]}, "input"),
])
def test_unsupported_responses_fields_are_400s(scripted_gateway, extra, param):
    body = {"model": MODEL, "input": "hi", **extra}
    response = httpx.post(scripted_gateway.url + "/v1/responses", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_embedded_engine_refuses_images_in_responses(gateway):
    body = {"model": MODEL, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/cat.png"}]}]}
    response = httpx.post(gateway.url + "/v1/responses", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert "image" in response.json()["error"]["message"]


def test_unknown_v1_routes_are_openai_404s_naming_the_route(gateway):
    response = httpx.post(gateway.url + "/v1/assistants", json={}, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/assistants)"


def test_responses_create_against_llama_cpp(make_gateway, tmp_path):
    with start_llama_server(tmp_path) as url:
        server = make_gateway(backend="openai", upstream_url=url, guard_semantic=False, upstream_timeout=120.0)
        client = sdk(server)
        response = client.responses.create(model=MODEL, input="What is the capital of France?",
                                           instructions="Answer in one word.", max_output_tokens=24, temperature=0)
        events = list(client.responses.create(model=MODEL, input="What is the capital of France?",
                                              instructions="Answer in one word.", max_output_tokens=24,
                                              temperature=0, stream=True))
    assert response.output_text and response.usage.output_tokens > 0
    assert events[-1].response.output_text == response.output_text
