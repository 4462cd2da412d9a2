"""Bad input never breaks the gateway: every case gets an OpenAI error object with the right status.

The cases run against one real gateway (uvicorn on a free port, the real SmolLM2 engine);
afterwards the same gateway must still be healthy and answer a valid request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest
from conftest import ADMIN_TOKEN
from gateway_server import GatewayServer

from gateway.settings import Settings

pytestmark = pytest.mark.model

MODEL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": HI, "max_tokens": 2, **fields}


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}


@dataclass(frozen=True)
class Case:
    """One bad request and the error it must get; `param=...` checks `error.param` exactly."""

    id: str
    path: str
    body: object = None  # JSON-encoded; ignored when `raw` is set
    raw: bytes | None = None
    content_type: str = "application/json"  # sent with `raw`
    method: str = "POST"
    status: int = 400
    param: str | None = None
    param_prefix: str | None = None  # when pydantic's location is more precise than the field
    code: str | None = None
    message: str | None = None  # substring of error.message
    extra: dict = field(default_factory=dict)


CASES = [
    Case("malformed-json", CHAT, raw=b'{"model": "x", "messages": [', code="invalid_json"),
    Case("not-json-at-all", CHAT, raw=b"hello", code="invalid_json"),
    Case("json-array-body", CHAT, body=[chat()], code="invalid_json"),
    Case("json-string-body", COMPLETIONS, body="hi", code="invalid_json"),
    Case("messages-is-string", CHAT, body=chat(messages="hi"), param="messages"),
    Case("temperature-is-string", CHAT, body=chat(temperature="hot"), param="temperature"),
    Case("max-tokens-is-string", CHAT, body=chat(max_tokens="x"), param="max_tokens"),
    Case("prompt-is-number", COMPLETIONS, body=completion(prompt=42), param_prefix="prompt"),
    Case("model-missing", CHAT, body={"messages": HI}, param="model"),
    Case("empty-messages", CHAT, body=chat(messages=[]), param="messages"),
    Case("only-empty-content", CHAT,
         body=chat(messages=[{"role": "system", "content": ""}, {"role": "user", "content": "   "}]),
         param="messages"),
    Case("unknown-role", CHAT, body=chat(messages=[{"role": "wizard", "content": "hi"}]),
         param_prefix="messages.0.role"),
    Case("image-content-part", CHAT,
         body=chat(messages=[{"role": "user", "content": [
             {"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]),
         param_prefix="messages.0.content"),
    Case("unknown-top-level-field", CHAT, body=chat(frobnicate=True), param="frobnicate",
         message="Unrecognized request argument"),
    Case("unknown-field-completions", COMPLETIONS, body=completion(foo=1), param="foo",
         message="Unrecognized request argument"),
    Case("tools", CHAT, body=chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
         param="tools", code="unsupported_parameter"),
    Case("response-format-schema-missing", CHAT, body=chat(response_format={"type": "json_schema"}),
         param_prefix="response_format"),
    Case("completions-suffix", COMPLETIONS, body=completion(suffix="!"), param="suffix",
         code="unsupported_parameter"),
    Case("completions-echo", COMPLETIONS, body=completion(echo=True), param="echo"),
    Case("n-too-large", CHAT, body=chat(n=9), param="n"),
    Case("n-zero", CHAT, body=chat(n=0), param="n"),
    Case("max-tokens-negative", CHAT, body=chat(max_tokens=-5), param="max_tokens"),
    Case("max-tokens-zero", CHAT, body=chat(max_tokens=0), param="max_tokens"),
    Case("completions-max-tokens-zero", COMPLETIONS, body=completion(max_tokens=0), param="max_tokens"),
    Case("temperature-3", CHAT, body=chat(temperature=3), param="temperature"),
    Case("top-logprobs-50", CHAT, body=chat(logprobs=True, top_logprobs=50), param="top_logprobs"),
    Case("five-stop-sequences", CHAT, body=chat(stop=["a", "b", "c", "d", "e"]), param="stop"),
    Case("logit-bias-non-numeric-key", CHAT, body=chat(logit_bias={"hello": 1}), param="logit_bias"),
    Case("logit-bias-out-of-vocab", CHAT, body=chat(logit_bias={"99999999": 1}), param="logit_bias"),
    # issue #12, items 8 and 10: these answered 500, or were accepted silently
    Case("logit-bias-superscript-digit-key", CHAT, body=chat(logit_bias={"\u00b2": 1}), param="logit_bias"),
    Case("logit-bias-arabic-indic-digit-key", COMPLETIONS, body=completion(logit_bias={"\u0663": 1}),
         param="logit_bias"),
    Case("logit-bias-5000-digit-key", CHAT, body=chat(logit_bias={"9" * 5000: 1}), param="logit_bias"),
    Case("seed-above-int64", CHAT, body=chat(seed=2**64 - 1, n=2), param="seed"),
    Case("seed-below-int64", COMPLETIONS, body=completion(seed=-(2**63) - 1), param="seed"),
    Case("max-tokens-above-int32", COMPLETIONS, body=completion(max_tokens=2**64), param="max_tokens"),
    Case("top-logprobs-without-logprobs", CHAT, body=chat(top_logprobs=3), param="top_logprobs"),
    Case("top-logprobs-with-logprobs-false", CHAT, body=chat(logprobs=False, top_logprobs=0), param="top_logprobs"),
    Case("content-type-text-plain", CHAT, raw=b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", '
         b'"content": "hi"}], "max_tokens": 2}', content_type="text/plain", code="unsupported_content_type"),
    Case("content-type-form", COMPLETIONS, raw=b'{"model": "SmolLM2-135M-Instruct", "prompt": "hi"}',
         content_type="application/x-www-form-urlencoded", code="unsupported_content_type"),
    Case("unknown-model", CHAT, body=chat(model="gpt-17"), status=404, param="model", code="model_not_found"),
    Case("unknown-model-completions", COMPLETIONS, body=completion(model="gpt-17"), status=404,
         code="model_not_found"),
    Case("get-on-post-route", CHAT, method="GET", status=405, extra={"allow": "POST"}),
    Case("unknown-route", "/v1/does-not-exist", body=chat(), status=404),
    Case("unknown-route-get", "/nowhere", method="GET", status=404),
    Case("context-length-exceeded", CHAT,
         body=chat(messages=[{"role": "user", "content": " ".join(["hello"] * 9000)}]),
         code="context_length_exceeded"),
    Case("completions-context-length-exceeded", COMPLETIONS, body=completion(prompt=" ".join(["hello"] * 9000)),
         code="context_length_exceeded"),
]


def send(client: httpx.Client, case: Case) -> httpx.Response:
    if case.method == "GET":
        return client.get(case.path)
    if case.raw is not None:
        return client.post(case.path, content=case.raw, headers={"Content-Type": case.content_type})
    return client.post(case.path, json=case.body)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    """The response is exactly the OpenAI error object, with the given status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip()
    assert error["type"] == {401: "authentication_error"}.get(status, "invalid_request_error")
    return error


def check(response: httpx.Response, case: Case) -> None:
    error = assert_openai_error(response, case.status)
    if case.param is not None:
        assert error["param"] == case.param, error
    if case.param_prefix is not None:
        assert (error["param"] or "").startswith(case.param_prefix), error
    if case.code is not None:
        assert error["code"] == case.code, error
    if case.message is not None:
        assert case.message in error["message"], error
    for header, value in case.extra.items():
        assert value in response.headers.get(header, ""), dict(response.headers)


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory) -> Iterator[GatewayServer]:
    """One gateway for the whole batch, so the health check afterwards sees what the batch did to it."""
    store = tmp_path_factory.mktemp("bad-input") / "targets.db"
    server = GatewayServer(Settings(store=f"sqlite:///{store}", admin_token=ADMIN_TOKEN), backend=engine).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: GatewayServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_openai_error(client: httpx.Client, case: Case) -> None:
    check(send(client, case), case)


def test_largest_seed_with_several_choices(client: httpx.Client) -> None:
    """The choices' seeds (seed, seed + 1, ...) wrap within int64 instead of overflowing the sampler."""
    for path, body in ((CHAT, chat(seed=2**63 - 1, n=2, temperature=1)),
                       (COMPLETIONS, completion(seed=-(2**63), n=2, temperature=1))):
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        assert len(response.json()["choices"]) == 2


def test_json_with_charset_is_accepted(client: httpx.Client) -> None:
    body = httpx.Request("POST", "/", json=chat(temperature=0)).content
    response = client.post(CHAT, content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


def assert_healthy(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    response = client.post(CHAT, json=chat(messages=[{"role": "user", "content": "Say hello."}], temperature=0))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= body["usage"]["completion_tokens"] <= 2


def test_still_healthy_after_the_batch(server: GatewayServer) -> None:
    # A fresh connection, after the whole batch again, on the same server.
    with server.client() as client:
        for case in CASES:
            check(send(client, case), case)
    with server.client() as client:
        assert_healthy(client)


# -- body size limit -----------------------------------------------------------------------


@pytest.fixture
def small_body_gateway(make_gateway) -> GatewayServer:
    return make_gateway(max_body_bytes=10_000)


def big_chat_body() -> bytes:
    return httpx.Request("POST", "/", json=chat(messages=[{"role": "user", "content": "a " * 20_000}])).content


def test_body_over_limit_with_content_length_gets_413(small_body_gateway: GatewayServer) -> None:
    body = big_chat_body()
    assert len(body) > 10_000
    with small_body_gateway.client() as client:
        response = client.post(CHAT, content=body, headers={"Content-Type": "application/json"})
        assert "content-length" in response.request.headers
        error = assert_openai_error(response, 413)
        assert error["code"] == "request_too_large"
    with small_body_gateway.client() as client:
        assert_healthy(client)


def test_chunked_body_over_limit_gets_413(small_body_gateway: GatewayServer) -> None:
    body = big_chat_body()

    def chunks() -> Iterator[bytes]:  # a generator: httpx sends it chunked, without Content-Length
        for start in range(0, len(body), 1_000):
            yield body[start:start + 1_000]

    with small_body_gateway.client() as client:
        response = client.post(CHAT, content=chunks(), headers={"Content-Type": "application/json"})
        assert "content-length" not in response.request.headers
        assert response.request.headers.get("transfer-encoding") == "chunked"
        error = assert_openai_error(response, 413)
        assert error["code"] == "request_too_large"
    with small_body_gateway.client() as client:
        assert_healthy(client)


def test_body_under_limit_is_served(small_body_gateway: GatewayServer) -> None:
    """The limit is a limit, not a blanket refusal: a small chunked body still goes through."""
    body = httpx.Request("POST", "/", json=chat(temperature=0)).content

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    with small_body_gateway.client() as client:
        response = client.post(CHAT, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


# -- the OpenAI Python SDK sees typed exceptions -------------------------------------------


def sdk(server: GatewayServer, api_key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def test_sdk_bad_request(server: GatewayServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).chat.completions.create(model=MODEL, messages=HI, max_tokens=2, temperature=3)
    assert info.value.status_code == 400
    assert info.value.body["param"] == "temperature"


def test_sdk_unknown_model(server: GatewayServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk(server).chat.completions.create(model="gpt-17", messages=HI, max_tokens=2)
    assert info.value.code == "model_not_found"


def test_sdk_authentication(make_gateway) -> None:
    keyed = make_gateway(api_keys="k1:acme")
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(keyed, api_key="wrong").chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    with keyed.client() as client:  # no key at all
        assert_openai_error(client.post(CHAT, json=chat()), 401)
    answer = sdk(keyed, api_key="k1").chat.completions.create(model=MODEL, messages=HI, max_tokens=2, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 2
