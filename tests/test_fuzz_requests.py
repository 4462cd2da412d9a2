"""No request body makes a 5xx (issue #12, item 8), on the embedded engine and on the upstream path.

Hypothesis builds chat and completion bodies from the real field names with hostile values: ints
past int64 (`seed` 2**64-1 with `n: 2` was a 500), non-ASCII digits as `logit_bias` keys (`"²"` was
a 500), huge or negative numbers, odd unicode, wrong types, unknown fields, and valid requests in
between. Every answer must be a 2xx with the endpoint's shape or a 4xx OpenAI error object.
"""

from __future__ import annotations

import json

import httpx
import pytest
from fake_backend import FakeBackend
from fuzz_servers import TINY_MODEL, UPSTREAM_MODEL, engine_gateway, tiny_engine, upstream_gateway  # noqa: F401
from gateway_server import GatewayServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.backends.base import BackendBusy
from gateway.settings import Settings

EDGE_INTS = [0, 1, -1, 2, 5, 20, 21, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
             2**64 - 1, 2**64, 10**30, -(10**30)]
ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(min_value=-(2**70), max_value=2**70),
                 st.integers(min_value=0, max_value=8))
texts = st.one_of(st.sampled_from(["", " ", "hi", "\u00b2", "\u0663", "\x00", "\ufeff", "Zorblax Quintavern",
                                   "Tol", "kien", "\u202e", "9" * 50]),
                  st.text(max_size=40))
floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 2.0, 2.0001, -2.0, 1e308]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(texts, inner, max_size=4)), max_leaves=8)
bias_keys = st.one_of(st.sampled_from(["\u00b2", "\u0663", "\uff11", "0", "2", "49151", "49152", "-1", "1.0", " 1",
                                       "9" * 12, "9" * 5000]), st.integers(0, 60000).map(str), texts)
short_text = st.one_of(st.sampled_from(["hi", "Who wrote The Hobbit?", "Zorblax Quintavern", "Tol", "\u00b2"]), texts)
roles = st.sampled_from(["system", "developer", "user", "assistant"])
valid_message = st.fixed_dictionaries({"role": roles, "content": short_text})
hostile_message = st.fixed_dictionaries(
    {"role": st.one_of(roles, texts),
     "content": st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                                          max_size=2), json_values)},
    optional={"name": texts, "extra": json_values})


def field(valid: st.SearchStrategy, *hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Usually (4 in 5) a value the gateway should serve (edge values included), else anything at all."""
    return st.sampled_from([valid] * 4 + [st.one_of(ints, json_values, *hostile)]).flatmap(lambda s: s)


SEEDS = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-(2**63), 2**63 - 1))
SAMPLING = {
    "temperature": field(st.floats(0, 2)), "top_p": field(st.floats(0.001, 1)),
    "n": field(st.integers(1, 3)), "seed": field(SEEDS),
    "stop": field(st.one_of(short_text, st.lists(short_text, max_size=5))),
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "presence_penalty": field(st.floats(-2, 2)), "frequency_penalty": field(st.floats(-2, 2)),
    "logit_bias": field(st.dictionaries(bias_keys, st.one_of(st.floats(-100, 100), st.integers(-100, 100)),
                                        max_size=3)),
    "user": field(short_text),
    "max_tokens": field(st.integers(1, 8)),
}
CHAT_FIELDS = {**SAMPLING, "max_completion_tokens": field(st.integers(1, 8)), "logprobs": field(st.booleans()),
               "top_logprobs": field(st.integers(0, 20)), "response_format": field(st.just({"type": "text"})),
               "metadata": field(st.dictionaries(short_text, short_text, max_size=2)), "unknown_field": json_values}
COMPLETION_FIELDS = {**SAMPLING, "logprobs": field(st.integers(0, 5)), "echo": field(st.just(False)),
                     "best_of": field(st.integers(1, 3)), "suffix": json_values, "unknown_field": json_values}


def bodies(model: str, required: dict, fields: dict) -> st.SearchStrategy[dict]:
    """The served model, the required field and up to four others: mostly a request to serve, with
    hostile values mixed in; now and then a wrong model or a missing required field."""
    picked = st.sets(st.sampled_from(sorted(fields)), max_size=4).flatmap(
        lambda chosen: st.fixed_dictionaries({k: fields[k] for k in sorted(chosen)}))
    model_value = field(st.just(model), texts)
    dropped = st.sampled_from([st.just(frozenset())] * 4 + [st.sets(st.sampled_from(["model", *required]),
                                                                    min_size=1, max_size=1)]).flatmap(lambda s: s)

    def body(m: object, req: dict, extra: dict, drop: frozenset) -> dict:
        return {k: v for k, v in {"model": m, **req, **extra}.items() if k not in drop}

    return st.builds(body, model_value, st.fixed_dictionaries(required), picked, dropped)


def chat_bodies(model: str) -> st.SearchStrategy[dict]:
    messages = field(st.lists(valid_message, min_size=1, max_size=2),
                     st.lists(hostile_message, min_size=1, max_size=3))
    return bodies(model, {"messages": messages}, CHAT_FIELDS)


def completion_bodies(model: str) -> st.SearchStrategy[dict]:
    prompt = field(st.one_of(short_text, st.lists(short_text, min_size=1, max_size=3)))
    return bodies(model, {"prompt": prompt}, COMPLETION_FIELDS)


def encode(body: dict) -> bytes:
    """Python's json (orjson cannot write ints past 64 bits; a client can)."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def check_answer(response: httpx.Response, body: dict) -> None:
    assert response.status_code < 500, (body, response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
        assert '"error"' not in response.text, response.text[-500:]
        return
    answer = response.json()
    assert answer["object"] in ("chat.completion", "text_completion") and answer["choices"], answer


FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def fuzz(server: GatewayServer, path: str, strategy: st.SearchStrategy[dict]) -> None:
    with server.client(headers={"Content-Type": "application/json"}) as client:

        @FUZZ
        @given(strategy)
        def one(body: dict) -> None:
            response = client.post(path, content=encode(body))
            event(f"HTTP {response.status_code}")
            check_answer(response, body)

        one()


def test_fuzz_chat_on_the_engine(engine_gateway: GatewayServer) -> None:
    fuzz(engine_gateway, "/v1/chat/completions", chat_bodies(TINY_MODEL))


def test_fuzz_completions_on_the_engine(engine_gateway: GatewayServer) -> None:
    fuzz(engine_gateway, "/v1/completions", completion_bodies(TINY_MODEL))


def test_fuzz_chat_on_the_upstream_path(upstream_gateway: GatewayServer) -> None:
    fuzz(upstream_gateway, "/v1/chat/completions", chat_bodies(UPSTREAM_MODEL))


def test_fuzz_completions_on_the_upstream_path(upstream_gateway: GatewayServer) -> None:
    fuzz(upstream_gateway, "/v1/completions", completion_bodies(UPSTREAM_MODEL))


@pytest.mark.parametrize("body", [
    {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "seed": 2**63 - 1, "n": 2},
    {"model": TINY_MODEL, "prompt": "hi", "seed": -(2**63), "n": 3, "max_tokens": 3},
    {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"49151": 100},
     "logprobs": True, "top_logprobs": 20, "max_tokens": 3},
])
def test_edge_values_that_are_valid_are_served(engine_gateway: GatewayServer, body: dict) -> None:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    with engine_gateway.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text


class BusyBackend(FakeBackend):
    async def generate(self, request):
        raise BackendBusy()
        yield  # pragma: no cover  (an async generator that fails on first use, as the engine does)


def test_429_says_when_to_retry(tmp_path) -> None:
    """OpenAI's 429s carry Retry-After, which its SDKs wait for; the gateway's did not (issue #12, item 10)."""
    settings = Settings(store=f"sqlite:///{tmp_path / 't.db'}", guard_semantic=False, alu=False, uld=False)
    with GatewayServer(settings, backend=BusyBackend()) as server, server.client() as client:
        for stream in (False, True):
            response = client.post("/v1/chat/completions", json={
                "model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
            assert response.status_code == 429, response.text
            assert response.json()["error"]["type"] == "rate_limit_error"
            assert int(response.headers["retry-after"]) >= 1
