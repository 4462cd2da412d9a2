"""Asking one probe of any OpenAI-compatible endpoint: a gateway, a raw vLLM, another proxy.

Why plain `/v1/chat/completions` over httpx and not the embedded engine: the eval must measure
what leaves through the deployment, so the local mode too goes through a real gateway socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from gateway.settings import DEFAULT_REFUSAL
from unlearn_eval.matching import leaked

REPEAT_FAMILIES = frozenset({"direct"})  # asked twice: same probe, same stance? (consistency)


@dataclass
class Endpoint:
    """Where one configuration's answers come from."""

    name: str
    base_url: str  # the server root, without /v1
    model: str | None = None  # None: the first of GET /v1/models
    api_key: str | None = None
    refusal_text: str = DEFAULT_REFUSAL
    calls: Callable[[], int] | None = None  # LLM calls so far (embedded engine only)


def root_url(url: str) -> str:
    """`http://host:8000/v1/` -> `http://host:8000` (the OpenAI SDK's base_url ends in /v1)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def open_client(endpoint: Endpoint, timeout: float) -> httpx.Client:
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    return httpx.Client(base_url=endpoint.base_url, headers=headers, timeout=timeout)


def resolve_model(http: httpx.Client, endpoint: Endpoint) -> str:
    """The endpoint's model: the one configured, else the first it lists."""
    if endpoint.model:
        return endpoint.model
    resp = http.get("/v1/models")
    resp.raise_for_status()
    endpoint.model = resp.json()["data"][0]["id"]
    return endpoint.model


def _complete(http: httpx.Client, model: str, messages: list[dict], max_tokens: int,
              temperature: float) -> tuple[str, str | None]:
    """(answer, error): an HTTP or protocol failure is recorded, never raised."""
    body = {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    try:
        resp = http.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return "", f"{type(exc).__name__}: {exc}"
    if resp.status_code != 200:
        return "", f"{resp.status_code} {resp.text[:300]}"
    try:
        return resp.json()["choices"][0]["message"]["content"] or "", None
    except (ValueError, KeyError, IndexError, TypeError):
        return "", f"malformed response: {resp.text[:200]}"


def ask(http: httpx.Client, endpoint: Endpoint, probe: dict, *, max_tokens: int, temperature: float,
        follow_up: bool) -> dict:
    """The answer to `probe` (and, when `follow_up`, its repeat and second-turn answers)."""
    model = resolve_model(http, endpoint)
    calls = endpoint.calls() if endpoint.calls else None
    started = time.perf_counter()
    answer, error = _complete(http, model, probe["messages"], max_tokens, temperature)
    record: dict = {"answer": answer, "latency_s": round(time.perf_counter() - started, 3)}
    if calls is not None and endpoint.calls:
        record["llm_calls"] = endpoint.calls() - calls  # of the first answer only (one client request)
    if error:
        record["error"] = error
    if follow_up and not error and probe["kind"] == "target":
        extra: dict[str, list[dict]] = {}
        if probe.get("family") in REPEAT_FAMILIES:
            extra["repeat"] = probe["messages"]
        if probe.get("followup") and not leaked(answer, probe):
            extra["second"] = [*probe["messages"], {"role": "assistant", "content": answer},
                               {"role": "user", "content": probe["followup"]}]
        for field, messages in extra.items():
            record[field], error = _complete(http, model, messages, max_tokens, temperature)
            if error:
                record["error"] = f"{field}: {error}"
    return record
