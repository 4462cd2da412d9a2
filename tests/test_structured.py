"""Structured outputs: `response_format` passed to the upstream, constrained decoding on the embedded
engine (xgrammar, composed with GUARD's bans), the JSON gated like any text, and refusals in
OpenAI's convention (`message.refusal` set, content null) so a client's parser never sees them.
"""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import BaseModel

from gateway.settings import DEFAULT_REFUSAL
from peers import start_llama_server
from scripted_upstream import MODEL, text_events, register, sdk

ASK = [{"role": "user", "content": "Who wrote The Hobbit? Answer in JSON."}]


class Book(BaseModel):
    title: str
    author: str


BOOK_FORMAT = {"type": "json_schema", "json_schema": {"name": "Book", "strict": True, "schema": {
    "type": "object", "properties": {"title": {"type": "string"}, "author": {"type": "string"}},
    "required": ["title", "author"], "additionalProperties": False}}}


# -- upstream -----------------------------------------------------------------------------------


def test_sdk_parse_through_the_upstream(scripted_gateway, scripted):
    scripted.script = text_events(['{"title": "The Hob', 'bit", "author": "an Oxford professor"}'])
    answer = sdk(scripted_gateway).chat.completions.parse(model=MODEL, messages=ASK, response_format=Book)
    assert answer.choices[0].message.parsed == Book(title="The Hobbit", author="an Oxford professor")
    sent = scripted.bodies[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Book"
    assert sent["json_schema"]["strict"] is True and sent["json_schema"]["schema"]["required"] == ["title", "author"]


def test_langchain_with_structured_output(scripted_gateway, scripted):
    from langchain_openai import ChatOpenAI

    scripted.script = text_events(['{"title": "The Hobbit", ', '"author": "someone"}'])
    llm = ChatOpenAI(model=MODEL, base_url=scripted_gateway.url + "/v1", api_key="unused", max_retries=0)
    assert llm.with_structured_output(Book).invoke("Who wrote The Hobbit?") == Book(title="The Hobbit",
                                                                                   author="someone")
    assert scripted.bodies[-1]["response_format"]["type"] == "json_schema"


def _splits(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(1, len(text))]


def test_a_target_in_a_json_field_is_a_refusal_in_every_chunking(scripted_gateway, scripted):
    register(scripted_gateway)
    for pieces in _splits('{"title": "The Hobbit", "author": "J.R.R. Tolkien"}'):
        scripted.script = text_events(pieces)
        body = {"model": MODEL, "messages": ASK, "response_format": BOOK_FORMAT}
        plain = httpx.post(scripted_gateway.url + "/v1/chat/completions", json=body, timeout=60)
        assert "tolkien" not in plain.text.lower(), (pieces, plain.text)
        message = plain.json()["choices"][0]["message"]
        assert message["content"] is None and message["refusal"] == DEFAULT_REFUSAL
        streamed = httpx.post(scripted_gateway.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60)
        assert "tolkien" not in streamed.text.lower(), (pieces, streamed.text)
        refusals = [json.loads(line[6:])["choices"][0]["delta"].get("refusal") for line in streamed.text.splitlines()
                    if line.startswith("data: {") and '"refusal"' in line]
        assert DEFAULT_REFUSAL in refusals


def test_sdk_parse_sees_a_refusal_not_broken_json(scripted_gateway, scripted):
    register(scripted_gateway)
    scripted.script = text_events(['{"title": "The Hobbit", "author": "Tol', 'kien"}'])
    message = sdk(scripted_gateway).chat.completions.parse(model=MODEL, messages=ASK, response_format=Book
                                                       ).choices[0].message
    assert message.parsed is None and message.refusal == DEFAULT_REFUSAL


def test_plain_text_refusals_stay_in_content(scripted_gateway, scripted):
    register(scripted_gateway)
    scripted.script = text_events(["It was Tol", "kien."])
    message = sdk(scripted_gateway).chat.completions.create(model=MODEL, messages=ASK).choices[0].message
    assert message.content == DEFAULT_REFUSAL and message.refusal is None


@pytest.mark.parametrize("response_format", [
    {"type": "json_schema"},
    {"type": "json_object", "json_schema": BOOK_FORMAT["json_schema"]},
    {"type": "yaml"},
])
def test_malformed_response_formats_are_400s(scripted_gateway, response_format):
    body = {"model": MODEL, "messages": ASK, "response_format": response_format}
    response = httpx.post(scripted_gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("response_format")


def test_json_object_with_llama_cpp(make_gateway, tmp_path):
    with start_llama_server(tmp_path) as url:
        server = make_gateway(backend="openai", upstream_url=url, guard_semantic=False, upstream_timeout=120.0)
        answer = sdk(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Describe a cat as JSON."}], max_tokens=64,
            temperature=0, response_format={"type": "json_object"})
    text = answer.choices[0].message.content
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens: still JSON so far
        assert text.lstrip().startswith("{")


# -- the embedded engine: xgrammar --------------------------------------------------------------


def test_embedded_engine_follows_the_schema(gateway):
    answer = sdk(gateway).chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Name a famous novel and its author, as JSON."}],
        response_format=Book, max_tokens=96, temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.parsed, Book)


def test_embedded_engine_grammar_and_bans_hold_together(gateway):
    register(gateway)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Who wrote The Lord of the Rings? Answer as JSON."}],
            "response_format": BOOK_FORMAT, "max_tokens": 96, "temperature": 0}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert "tolkien" not in response.text.lower()
    message = response.json()["choices"][0]["message"]
    if message["refusal"] is None:
        assert set(json.loads(message["content"])) == {"title", "author"}
    else:
        assert message["content"] is None


def test_embedded_engine_rejects_a_schema_it_cannot_compile(gateway):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 5, "maximum": 1}}}}}
    body = {"model": MODEL, "messages": ASK, "response_format": bad, "max_tokens": 8}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "response_format"


def test_grammar_hook_masks_after_the_bans(engine):
    import torch

    from gateway.backends.grammar import GrammarCompiler, GrammarHook

    tokenizer = engine.tokenizer
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    compiled = GrammarCompiler(tokenizer, [stop]).compile({"type": "json_object"})
    hook = GrammarHook(compiled)
    vocab = len(tokenizer)
    allowed = torch.isfinite(hook([], [], torch.zeros(vocab))).nonzero().flatten().tolist()
    assert allowed and all(tokenizer.decode([t]).lstrip().startswith("{") or not tokenizer.decode([t]).strip()
                           for t in allowed)
    banned = torch.zeros(vocab)
    banned[allowed] = float("-inf")  # a ban hook took every token the grammar allows
    out = GrammarHook(compiled)([], [], banned)
    assert torch.isfinite(out).nonzero().flatten().tolist() == [stop]  # the answer ends; no banned token
