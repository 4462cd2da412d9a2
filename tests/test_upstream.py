"""The OpenAI-compatible upstream backend against real peers.

* a real llama.cpp server (`llama-cpp-python[server]`, installed by `make upstream-peer`)
  serving the same SmolLM2 GGUF as the embedded engine: chat and completions, stream
  and not, GUARD through `logit_bias` plus the gate, 4xx pass-through, disconnects;
* small real HTTP servers that misbehave on purpose (500s, garbage, truncation, a
  server that ignores `logit_bias`, a black hole that accepts and never answers).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conftest import REPO, admin_headers
from gateway.backends.base import BackendError, GenerationRequest, SamplingParams
from gateway.backends.model_files import resolve_model_dir
from gateway.backends.openai_upstream import OpenAIUpstream, normalise_base_url
from gateway.backends.upstream_http import map_status_error
from gateway.metrics import GatewayMetrics
from gateway.pipeline.methods import Detection, MethodPlan, RequestContext
from gateway.pipeline.pipeline import RequestPlan
from gateway.pipeline.snapshot import TenantTargets
from gateway.settings import DEFAULT_REFUSAL
from gateway_server import GatewayServer, free_port
from threaded_server import ThreadedServer
from guards.token_trie import TokenTrie, TrieRestriction
from peers import MODEL, start_llama_server

TOLKIEN = {"name": "J.R.R. Tolkien", "aliases": ["Tolkien", "John Ronald Reuel Tolkien"], "methods": ["guard"]}
QUESTION = "Who wrote The Lord of the Rings?"


# -- peers ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tokenizer_dir() -> str:
    """The HF directory of the bundled SmolLM2: the upstream's tokenizer (same GGUF as llama.cpp serves)."""
    return str(resolve_model_dir(None, REPO / "var" / "models"))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on the SmolLM2 GGUF; a missing package fails the tests, never skips them."""
    with start_llama_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.fixture
def upstream_gateway(make_gateway, tokenizer_dir) -> Callable[..., GatewayServer]:
    def make(url: str, **overrides) -> GatewayServer:
        values = {"backend": "openai", "upstream_url": url, "upstream_tokenizer": tokenizer_dir,
                  "guard_semantic": False, "upstream_timeout": 60.0, **overrides}
        return make_gateway(**values)

    return make


@pytest.fixture
def llama_gateway(upstream_gateway, llama_server) -> GatewayServer:
    return upstream_gateway(llama_server)


class FakeUpstream(ThreadedServer):
    """A real HTTP server speaking (or mangling) the OpenAI API, one behaviour per `mode`."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.stream_closed = threading.Event()
        app = Starlette(routes=[
            Route("/v1/models", self._models),
            Route("/v1/chat/completions", self._complete, methods=["POST"]),
            Route("/v1/completions", self._complete, methods=["POST"]),
        ])
        super().__init__(app, "fake upstream")

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _complete(self, request: Request) -> Response:
        self.bodies.append(orjson.loads(await request.body()))
        self.headers.append(dict(request.headers))
        mode = self.mode
        if mode == "status500":
            return JSONResponse({"error": {"message": "CUDA error: out of memory", "type": "server_error"}}, 500)
        if mode == "html":
            return Response("<html><body>upstream proxy error</body></html>", 200, media_type="text/html")
        if mode == "context":
            return JSONResponse({"error": {"message": "This model's maximum context length is 2048 tokens.",
                                           "type": "invalid_request_error", "param": "messages",
                                           "code": "context_length_exceeded"}}, 400)
        if mode == "unauthorized":
            return JSONResponse({"error": {"message": "Incorrect API key provided: sk-...", "code": "invalid_api_key"}},
                                401)
        if mode == "empty_stream" and not self.bodies[-1].get("stream"):
            return JSONResponse({"id": "x", "object": "chat.completion", "model": MODEL, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Paris it is."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
        return StreamingResponse(self._events(mode), media_type="text/event-stream")

    async def _events(self, mode: str):
        def event(payload: dict | str) -> bytes:
            return b"data: " + (payload.encode() if isinstance(payload, str) else orjson.dumps(payload)) + b"\n\n"

        def delta(text: str, finish: str | None = None, **extra) -> bytes:
            return event({"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": [
                {"index": 0, "delta": {"content": text}, "finish_reason": finish, **extra}]})

        try:
            if mode == "bad_sse":
                yield delta("Hello")
                yield b"data: {this is not json\n\n"
            elif mode == "truncated":
                yield delta("Hello there")  # then the connection ends: no finish_reason, no [DONE]
            elif mode == "midstream_error":
                yield delta("Hello")
                yield event({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
            elif mode in ("ignores_bias", "ignores_bias_ids"):
                ids = mode == "ignores_bias_ids"
                for piece, token in (("The", 504), (" author", 3036), (" is", 314), (" Tolkien", 35619), (".", 30)):
                    yield delta(piece, **({"token_ids": [token]} if ids else {}))
                yield delta("", "stop")
                yield event({"id": "x", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5}})
                yield event("[DONE]")
            elif mode == "ok":
                yield delta("Paris")
                yield delta(" it is.", "stop")
                yield event({"id": "x", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
                yield event("[DONE]")
            elif mode == "slow":
                for i in range(10_000):
                    yield delta(f" word{i}")
                    await asyncio.sleep(0.05)
        finally:
            self.stream_closed.set()


class BlackHole:
    """Accepts TCP connections (the kernel's backlog does) and never reads or answers."""

    def __enter__(self) -> BlackHole:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


# -- helpers --------------------------------------------------------------------------------


def chat_body(prompt: str = "What is the capital of France?", **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0,
            **extra}


def sse_events(response: httpx.Response) -> list[dict | str]:
    events: list[dict | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append("[DONE]" if line == "data: [DONE]" else orjson.loads(line[6:]))
    return events


def stream_chat(client: httpx.Client, body: dict) -> tuple[str, list[dict | str]]:
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        events = sse_events(response)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))
    return text, events


def metric(server: GatewayServer, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not exported")


def register_tolkien(server: GatewayServer) -> None:
    response = httpx.post(server.url + "/admin/v1/targets", json=TOLKIEN, headers=admin_headers(), timeout=60)
    assert response.status_code == 201, response.text


def backend_of(server: GatewayServer) -> OpenAIUpstream:
    backend = server.app.state.serving.backend
    assert isinstance(backend, OpenAIUpstream)
    return backend


def spy_payloads(backend: OpenAIUpstream) -> list[dict]:
    sent: list[dict] = []
    original = backend.payload

    def payload(request, bans=None):
        path, body = original(request, bans)
        sent.append(body)
        return path, body

    backend.payload = payload  # type: ignore[method-assign]
    return sent


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- against llama.cpp --------------------------------------------------------------------------


def test_models_listed_from_the_upstream(llama_gateway):
    with llama_gateway.client() as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == [MODEL]
        assert client.get("/readyz").status_code == 200
    assert backend_of(llama_gateway).upstream_models == [MODEL]


def test_chat_stream_and_non_stream(llama_gateway):
    with llama_gateway.client() as client:
        response = client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200, response.text
        data = response.json()
        answer = data["choices"][0]["message"]["content"]
        assert answer.strip()
        assert data["choices"][0]["finish_reason"] in ("stop", "length")
        assert data["usage"]["prompt_tokens"] > 5 and data["usage"]["completion_tokens"] > 0

        text, events = stream_chat(client, chat_body(stream_options={"include_usage": True}))
    assert text == answer  # greedy: the same answer, streamed
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0
    content_chunks = [e for e in events[:-2] if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content_chunks) > 1  # tokens arrive as the upstream produces them, not in one block
    assert events[-3]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions_stream_and_non_stream(llama_gateway):
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    with llama_gateway.client() as client:
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        text = response.json()["choices"][0]["text"]
        assert text.strip()
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as streamed:
            events = sse_events(streamed)
    assert "".join(e["choices"][0]["text"] for e in events if isinstance(e, dict) and e["choices"]) == text


def test_openai_sdk_through_the_gateway(llama_gateway):
    from openai import OpenAI

    client = OpenAI(base_url=llama_gateway.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices).strip()


def test_guard_bans_through_logit_bias_and_the_gate(llama_server, upstream_gateway, tokenizer_dir):
    from transformers import AutoTokenizer

    tolkien_id = AutoTokenizer.from_pretrained(tokenizer_dir).encode(" Tolkien", add_special_tokens=False)
    assert len(tolkien_id) == 1
    raw = httpx.post(llama_server + "/v1/chat/completions", json=chat_body(QUESTION, max_tokens=40), timeout=120)
    assert "Tolkien" in raw.json()["choices"][0]["message"]["content"]  # the raw upstream does leak

    server = upstream_gateway(llama_server)
    register_tolkien(server)
    sent = spy_payloads(backend_of(server))
    with server.client() as client:
        response = client.post("/v1/chat/completions", json=chat_body(QUESTION, max_tokens=40))
        assert response.status_code == 200, response.text
        answer = response.json()["choices"][0]["message"]["content"]
        streamed, _ = stream_chat(client, chat_body(QUESTION, max_tokens=40))
    for text in (answer, streamed):
        assert "tolkien" not in text.lower()
    assert sent and all(body["logit_bias"].get(str(tolkien_id[0])) == -100.0 for body in sent)
    assert "bad_words" not in sent[0] and "vllm_xargs" not in sent[0]  # plain OpenAI servers reject unknown fields

    # The ban itself works upstream: the same bias sent straight to llama.cpp removes the token.
    biased = httpx.post(llama_server + "/v1/chat/completions", timeout=120,
                        json=chat_body(QUESTION, max_tokens=40, logit_bias=sent[0]["logit_bias"]))
    assert " Tolkien" not in biased.json()["choices"][0]["message"]["content"]
    assert metric(server, "unlearn_upstream_ignored_controls_total") == 0


def test_context_length_error_passes_through(llama_gateway):
    with llama_gateway.client() as client:
        response = client.post("/v1/chat/completions", json=chat_body("hello " * 3000, max_tokens=8))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "context" in error["message"].lower() and error["type"] == "invalid_request_error"


def test_client_disconnect_cancels_the_upstream_stream(llama_gateway):
    backend = backend_of(llama_gateway)
    body = chat_body("Write a very long story about a dragon and a knight.", max_tokens=1500, temperature=1.0)
    with llama_gateway.client() as client:
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    assert backend.active_requests == 1  # generating upstream while we read
                    break  # leaving iter_lines early closes the connection: the client is gone
    assert wait_for(lambda: backend.active_requests == 0, 10)
    started = time.monotonic()
    with llama_gateway.client() as client:  # llama.cpp serves one request at a time: it must be free again
        assert client.post("/v1/chat/completions", json=chat_body(max_tokens=4)).status_code == 200
    assert time.monotonic() - started < 15


# -- against misbehaving servers ------------------------------------------------------------------


def test_upstream_down_is_503(upstream_gateway):
    server = upstream_gateway(f"http://127.0.0.1:{free_port()}", served_model_name=MODEL, upstream_start_timeout=0.3)
    with server.client() as client:
        assert client.get("/readyz").status_code == 503
        for stream in (False, True):
            response = client.post("/v1/chat/completions", json=chat_body(stream=stream))
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "upstream_unavailable"


def test_black_hole_is_504_within_the_timeout(upstream_gateway):
    with BlackHole() as hole:
        server = upstream_gateway(hole.url, served_model_name=MODEL, upstream_start_timeout=0.3,
                                  upstream_timeout=1.0)
        with server.client() as client:
            for stream in (False, True):
                started = time.monotonic()
                response = client.post("/v1/chat/completions", json=chat_body(stream=stream))
                assert response.status_code == 504, response.text
                assert response.json()["error"]["code"] == "upstream_timeout"
                assert time.monotonic() - started < 5


@pytest.mark.parametrize("mode", ["status500", "html", "bad_sse", "truncated", "midstream_error"])
def test_broken_upstream_is_502(upstream_gateway, mode):
    with FakeUpstream(mode) as fake:
        server = upstream_gateway(fake.url)
        with server.client() as client:
            response = client.post("/v1/chat/completions", json=chat_body())
            assert response.status_code == 502, response.text
            error = response.json()["error"]
            assert error["code"] == "bad_upstream" and "CUDA" not in error["message"]
            if mode in ("status500", "html"):  # nothing streamed yet: the stream request is an HTTP error too
                assert client.post("/v1/chat/completions", json=chat_body(stream=True)).status_code == 502
            else:  # text came first: the stream ends with an error event, never silently
                with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as streamed:
                    events = sse_events(streamed)
                assert "[DONE]" not in events and events[-1]["error"]["code"] == "bad_upstream"


def test_upstream_4xx_keeps_status_and_message_but_credentials_are_ours(upstream_gateway):
    with FakeUpstream("context") as fake:
        server = upstream_gateway(fake.url)
        response = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), timeout=30)
        assert response.status_code == 400
        assert response.json()["error"] == {"message": "This model's maximum context length is 2048 tokens.",
                                             "type": "invalid_request_error", "param": "messages",
                                             "code": "context_length_exceeded"}
        fake.mode = "unauthorized"
        response = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), timeout=30)
        assert response.status_code == 502 and "sk-" not in response.text


def test_the_upstream_api_key_goes_to_the_upstream_only(upstream_gateway):
    with FakeUpstream("ok") as fake:
        server = upstream_gateway(fake.url, upstream_api_key="sk-upstream-secret")
        with server.client() as client:
            response = client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200 and "sk-upstream-secret" not in response.text
        assert fake.headers[0]["authorization"] == "Bearer sk-upstream-secret"
        assert fake.headers[0]["content-type"] == "application/json"
        assert fake.headers[0]["host"] == f"127.0.0.1:{fake.port}"


def test_disconnect_closes_the_upstream_connection(upstream_gateway):
    with FakeUpstream("slow") as fake:
        server = upstream_gateway(fake.url)
        with server.client() as client:
            with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        break
        assert fake.stream_closed.wait(10), "the upstream kept streaming after the client left"
        assert wait_for(lambda: backend_of(server).active_requests == 0, 5)


@pytest.mark.parametrize("mode", ["ignores_bias", "ignores_bias_ids"])
def test_an_upstream_ignoring_the_ban_is_counted_and_gated(upstream_gateway, mode):
    with FakeUpstream(mode) as fake:
        server = upstream_gateway(fake.url)
        register_tolkien(server)
        with server.client() as client:
            response = client.post("/v1/chat/completions", json=chat_body(QUESTION))
        assert response.json()["choices"][0]["message"]["content"] == DEFAULT_REFUSAL
        assert fake.bodies[0]["logit_bias"]["35619"] == -100.0
        assert metric(server, "unlearn_upstream_ignored_controls_total") == 1
        assert backend_of(server).ignored_controls == 1


def test_vllm_kind_sends_bad_words_token_ids_and_plugin_args(upstream_gateway):
    with FakeUpstream("ok") as fake:
        server = upstream_gateway(fake.url, upstream_kind="vllm")
        register_tolkien(server)
        with server.client() as client:
            response = client.post("/v1/chat/completions", json=chat_body("Tell me about Paris."))
        assert response.json()["choices"][0]["message"]["content"] == "Paris it is."
        assert response.json()["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        body = fake.bodies[0]
        assert body["return_token_ids"] is True and body["stream"] is True
        assert "Tolkien" in body["bad_words"] and "J.R.R. Tolkien" in body["bad_words"]
        sequences = orjson.loads(body["vllm_xargs"]["unlearn_banned_sequences"])
        assert [35619] in sequences and body["logit_bias"]["35619"] == -100.0
        assert metric(server, "unlearn_upstream_ignored_controls_total") == 0


def test_an_empty_stream_is_asked_again_without_streaming(upstream_gateway):
    """llama.cpp's way of failing a stream before its first token: 200 and no events."""
    with FakeUpstream("empty_stream") as fake:
        server = upstream_gateway(fake.url)
        with server.client() as client:
            text, events = stream_chat(client, chat_body())
        assert text == "Paris it is." and events[-1] == "[DONE]"
        assert [b.get("stream") for b in fake.bodies] == [True, None]


def test_sampling_params_are_mapped(upstream_gateway):
    with FakeUpstream("ok") as fake:
        server = upstream_gateway(fake.url)
        body = chat_body(temperature=0.7, top_p=0.9, seed=3, stop=["\n\n"], presence_penalty=0.5,
                         frequency_penalty=0.25, logit_bias={"42": 5}, logprobs=True, top_logprobs=2, max_tokens=7)
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
        sent = fake.bodies[0]
        assert {k: sent[k] for k in ("model", "max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty",
                                     "frequency_penalty", "logit_bias", "logprobs", "top_logprobs")} == {
            "model": MODEL, "max_tokens": 7, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n\n"],
            "presence_penalty": 0.5, "frequency_penalty": 0.25, "logit_bias": {"42": 5.0}, "logprobs": True,
            "top_logprobs": 2 + 6}  # a margin (a third of the upstream's cap of 20) to refill dropped alternatives
        assert sent["stream_options"] == {"include_usage": True}


# -- units ----------------------------------------------------------------------------------------


def test_hooks_export_their_bans_and_unexportable_hooks_are_a_configuration_error():
    class Upstream:
        supports_logits_hooks = False

        async def generate(self, request):  # pragma: no cover - never reached
            raise AssertionError("generation must not start")
            yield

    ctx = RequestContext("default", [{"role": "user", "content": "hi"}], TenantTargets("default", []))
    trie = TokenTrie([(5,), (1, 2)])
    plan = RequestPlan(ctx, Detection(), {"guard": MethodPlan(hook_factories=[lambda: TrieRestriction(trie)])},
                       "no", GatewayMetrics())
    assert plan.banned_sequences() == ((1, 2), (5,))

    plan = RequestPlan(ctx, Detection(), {"uld": MethodPlan(hook_factories=[lambda: (lambda p, o, logits: logits)])},
                       "no", GatewayMetrics())
    request = GenerationRequest(SamplingParams(), messages=ctx.conversation)

    async def first():
        return await anext(plan.run(Upstream(), request))

    with pytest.raises(BackendError) as err:
        asyncio.run(first())
    assert err.value.status == 501 and "'uld'" in str(err.value)


def test_error_mapping_and_urls():
    assert map_status_error(500, b"{}").status == 502
    assert map_status_error(503, b"").status == 503
    assert map_status_error(504, b"").status == 504
    assert map_status_error(429, b"").status == 429
    assert map_status_error(422, b'{"detail": [{"msg": "field required"}]}').status == 400
    assert str(map_status_error(422, b'{"detail": [{"msg": "field required"}]}')) == "field required"
    assert map_status_error(400, b'{"object": "error", "message": "too long", "code": 400}').args[0] == "too long"
    assert map_status_error(401, b"").status == 502
    assert normalise_base_url("http://vllm:8000") == "http://vllm:8000/v1"
    assert normalise_base_url("http://vllm:8000/v1/") == "http://vllm:8000/v1"
    assert normalise_base_url("https://example.com/openai/v1") == "https://example.com/openai/v1"
    with pytest.raises(ValueError):
        normalise_base_url("vllm:8000")


def test_start_without_a_reachable_upstream_or_model_name_fails_clearly():
    backend = OpenAIUpstream(f"http://127.0.0.1:{free_port()}", start_timeout=0.2)
    with pytest.raises(RuntimeError, match="UNLEARN_SERVED_MODEL_NAME"):
        asyncio.run(backend.start())
