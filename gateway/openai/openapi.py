"""The OpenAPI document says what the routes really take and answer.

The routes parse their JSON bodies by hand (`parse_body`, the admin API's `_body`) so that every
mistake is an OpenAI-format 400; FastAPI therefore sees no body to publish and documents a 422 the
gateway never sends. `install_openapi` completes FastAPI's document once, on first request: the
request models as bodies, the response models, the OpenAI error object for every error status a
route can answer, and the bearer schemes. Client generators and schemathesis
(`tests/test_fuzz_openapi.py`) read this document.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.openai.chat.protocol import ChatCompletionRequest
from gateway.openai.completions.protocol import CompletionRequest
from gateway.openai.responses.protocol import ResponsesRequest
from gateway.store.models import TargetCreate, TargetPatch

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The OpenAI error object: every 4xx/5xx of the gateway has this body."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float | None  # JSON has no -inf: a token the model ruled out is null
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a chat stream; the last one before `[DONE]` may carry only `usage`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float | None]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(Completion):
    """One `data:` event of a completions stream."""

    usage: Usage | None = None  # type: ignore[assignment]


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, bool]




def _event_stream(chunk: type[BaseModel] | None) -> dict[str, Any]:
    """SSE: each event's `data` is a JSON chunk (or an error object after text was sent), then `[DONE]`."""
    payload: dict[str, Any] = {"type": "object"}
    if chunk is not None:
        payload = {"anyOf": [{"$ref": REF.format(model=chunk.__name__)}, {"$ref": REF.format(model="ErrorResponse")}]}
    data = {"anyOf": [{"const": "[DONE]"},
                      {"type": "string", "contentMediaType": "application/json", "contentSchema": payload}]}
    return {"text/event-stream": {"schema": {"type": "object", "required": ["data"],
                                             "properties": {"data": data, "event": {"type": "string"}}}}}


_CHUNKS: dict[type[BaseModel], type[BaseModel]] = {ChatCompletion: ChatCompletionChunk, Completion: CompletionChunk}
_GENERATION_ERRORS = {400: "invalid request", 401: "missing or wrong API key", 404: "unknown model",
                      413: "body too large", 429: "at capacity (see Retry-After)",
                      501: "a target's method cannot run on this backend", 502: "bad upstream answer",
                      503: "target store or backend unavailable (fail closed)", 504: "upstream timed out"}
_ADMIN_ERRORS = {400: "invalid request", 401: "wrong admin token", 403: "admin API disabled", 404: "unknown target",
                 409: "conflict", 413: "body too large", 503: "target store unavailable"}

# (path, method) -> request body model, success status, success model, stream?, error statuses, security
_OPERATIONS: dict[tuple[str, str], tuple[type[BaseModel] | None, int, type[BaseModel] | None, bool,
                                         dict[int, str], str | None]] = {
    ("/v1/chat/completions", "post"): (ChatCompletionRequest, 200, ChatCompletion, True, _GENERATION_ERRORS,
                                       "ClientKey"),
    ("/v1/completions", "post"): (CompletionRequest, 200, Completion, True, _GENERATION_ERRORS, "ClientKey"),
    ("/v1/responses", "post"): (ResponsesRequest, 200, None, True, _GENERATION_ERRORS, "ClientKey"),
    ("/v1/models", "get"): (None, 200, ModelList, False, {401: "missing or wrong API key"}, "ClientKey"),
    ("/admin/v1/targets", "post"): (TargetCreate, 201, None, False, _ADMIN_ERRORS, "AdminToken"),
    ("/admin/v1/targets", "get"): (None, 200, None, False, _ADMIN_ERRORS, "AdminToken"),
    ("/admin/v1/targets/{target_id}", "get"): (None, 200, None, False, _ADMIN_ERRORS, "AdminToken"),
    ("/admin/v1/targets/{target_id}", "patch"): (TargetPatch, 200, None, False, _ADMIN_ERRORS, "AdminToken"),
    ("/admin/v1/targets/{target_id}", "delete"): (None, 200, None, False, _ADMIN_ERRORS, "AdminToken"),
    ("/admin/v1/audit", "get"): (None, 200, None, False, _ADMIN_ERRORS, "AdminToken"),
    ("/readyz", "get"): (None, 200, Readiness, False, {}, None),
    ("/metrics", "get"): (None, 200, None, False, {401: "wrong metrics token",
                                                    403: "disabled: client keys set, no metrics token"},
                          "MetricsToken"),
}
_SECURITY_SCHEMES = {
    "ClientKey": {"type": "http", "scheme": "bearer", "description": "a key of UNLEARN_API_KEYS (when set)"},
    "AdminToken": {"type": "http", "scheme": "bearer", "description": "UNLEARN_ADMIN_TOKEN"},
    "MetricsToken": {"type": "http", "scheme": "bearer", "description": "UNLEARN_METRICS_TOKEN (when set)"},
}


def _by_prefix(path: str) -> tuple[None, int, None, bool, dict[int, str], str] | None:
    """An operation not listed in `_OPERATIONS` still declares its API's errors and credentials."""
    if path.startswith("/admin/"):
        return None, 200, None, False, _ADMIN_ERRORS, "AdminToken"
    if path.startswith("/v1/"):
        return None, 200, None, False, _GENERATION_ERRORS, "ClientKey"
    return None


def _json_content(model: type[BaseModel] | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": REF.format(model=model.__name__)} if model else {}
    return {"application/json": {"schema": schema}}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document → the gateway's real contract (returns a new document)."""
    doc = copy.deepcopy(document)
    models = [ErrorResponse, Readiness, *_CHUNKS.values()]
    for body, _, success, *_ in _OPERATIONS.values():
        models += [m for m in (body, success) if m is not None]
    requests = {body for body, *_ in _OPERATIONS.values()}
    modes = [(m, "validation" if m in requests else "serialization") for m in dict.fromkeys(models)]
    _, defs = models_json_schema(modes, ref_template=REF)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body: never sent
        schemas.pop(name, None)
    schemas.update(defs.get("$defs", {}))
    doc["components"]["securitySchemes"] = _SECURITY_SCHEMES
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            spec = _OPERATIONS.get((path, method)) or _by_prefix(path)
            if spec is None:
                continue
            body, status, success, stream, errors, security = spec
            if body is not None:
                operation["requestBody"] = {"required": True, "content": _json_content(body)}
            ok = responses.pop("200", {"description": "OK"})
            ok["content"] = _json_content(success)
            if stream:
                ok["content"].update(_event_stream(_CHUNKS.get(success)))
                ok["description"] = "the answer; with `stream: true` an event stream"
            if path == "/metrics":
                ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
            responses[str(status)] = ok
            if path == "/readyz":
                responses["503"] = {"description": "not ready", "content": _json_content(Readiness)}
            for code, why in errors.items():
                responses[str(code)] = {"description": why, "content": _json_content(ErrorResponse)}
            if security:
                operation["security"] = [{security: []}]
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, like FastAPI's own)."""
    fastapi_document = app.openapi

    def document() -> dict[str, Any]:
        if not getattr(app.state, "openapi_complete", False):
            app.openapi_schema = complete(fastapi_document())
            app.state.openapi_complete = True
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
