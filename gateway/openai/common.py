"""Wire pieces shared by the chat and completions endpoints: sampling fields, body parsing, SSE.

Bodies are parsed by hand (orjson, then pydantic) instead of by FastAPI so that
malformed JSON, unknown fields and unsupported options all become precise
OpenAI-format 400s, and so the hot path skips FastAPI's extra validation layer.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request

from gateway.backends.base import SamplingParams, TokenLogprob
from gateway.errors import APIError, validation_error

MAX_STOP_SEQUENCES = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOKENS_LIMIT = 2**31 - 1
"""Largest `max_tokens` passed on: a JSON int every backend parses (JSON allows any size, orjson 64 bits)."""
_TOKEN_ID = re.compile(r"[0-9]{1,10}")  # ASCII digits only: "²".isdigit() is True but int("²") fails


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields both endpoints accept. Unknown fields are rejected, never ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)  # OpenAI's (and vLLM's) int64
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not _TOKEN_ID.fullmatch(key):
                raise ValueError(f"keys must be token ids (non-negative integers), got {key[:20]!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError("bias values must be between -100 and 100")
        return value

    def sampling_params(self, *, max_tokens: int, logprobs: bool, top_logprobs: int, seed_offset: int,
                        vocab_size: int | None) -> SamplingParams:
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            token = int(key)
            if vocab_size is not None and token >= vocab_size:
                raise APIError(400, f"logit_bias token id {token} is out of range (vocabulary size {vocab_size}).",
                               code="invalid_request", param="logit_bias")
            bias[token] = value
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=None if self.seed is None else choice_seed(self.seed, seed_offset),
            stop=tuple(self.stop or ()),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=bias,
        )


def choice_seed(seed: int, offset: int) -> int:
    """The seed of choice `offset`: `seed + offset`, wrapped to stay an int64 (what torch and vLLM take)."""
    return (seed + offset - INT64_MIN) % 2**64 + INT64_MIN


async def parse_body(request: Request, model: type[BaseModel], unsupported: dict[str, str]) -> Any:
    """JSON body → validated model, or an APIError naming the offending field."""
    check_json_content_type(request)
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    for field, why in unsupported.items():
        if data.get(field) is not None:
            raise APIError(400, f"'{field}' is not supported by this gateway: {why}", code="unsupported_parameter",
                           param=field)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def check_json_content_type(request: Request) -> None:
    """A body declared as anything but JSON is refused, as OpenAI does (400 `unsupported_content_type`);
    parameters (`; charset=utf-8`) are allowed, and a body without a Content-Type is read as JSON."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media_type = declared.partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(400, f"Unsupported content type: {declared[:100]!r}. This API method only accepts "
                            "'application/json' requests.", code="unsupported_content_type")


def sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
