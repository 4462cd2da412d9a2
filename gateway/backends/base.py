"""The one protocol every generation backend implements.

The serving layer speaks only in `GenerationRequest` and `GenerationChunk`, so
the embedded engine and an upstream OpenAI/vLLM server are interchangeable and
the unlearning pipeline plugs into both the same way (logits hooks, output gate).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class LogitsHook(Protocol):
    """Per-request logits processor: returns the (possibly modified) next-token scores.

    Same shape as vLLM's per-request processors: it sees the prompt and the tokens
    generated so far. Hooks may keep state between calls (ULD keeps its own KV cache),
    so each request gets fresh hook objects.
    """

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor: ...


class SequenceUnion(tuple):
    """Banned token sequences made of `parts` (each an immutable tuple, e.g. one per target shard).

    It is the plain concatenation, so any consumer can read it as a tuple; a backend that derives
    request parameters from the sequences (the upstream's `logit_bias` and vLLM arguments) may do so
    per part and reuse a part's result while that part lives, so a target change costs the size of
    the change, not of the whole target set.
    """

    parts: tuple[tuple[tuple[int, ...], ...], ...]

    def __new__(cls, parts: Iterable[tuple[tuple[int, ...], ...]]) -> SequenceUnion:
        parts = tuple(parts)
        union = super().__new__(cls, chain.from_iterable(parts))
        union.parts = parts
        return union


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class GenerationRequest:
    """One sequence to generate: either chat `messages` or a raw `prompt`.

    `messages` are OpenAI chat messages: role/content strings for plain text, and for
    the upstream backend also content-part lists, assistant `tool_calls` and `tool`
    turns, passed on as the client sent them (`features` says which backend takes what).
    """

    params: SamplingParams
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    logits_hooks: list[LogitsHook] = field(default_factory=list)
    request_id: str = ""
    banned_sequences: tuple[tuple[int, ...], ...] = ()
    """Forbidden token-id sequences exported from the logits hooks, set (instead of `logits_hooks`)
    for backends with `supports_logits_hooks == False`: an upstream server cannot run our Python
    hooks, so the backend translates these into the upstream's own controls (`logit_bias` for
    single-token sequences, vLLM `bad_words` / logits-processor args). Ids are in `tokenizer`'s vocab."""
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    """OpenAI `response_format` (`json_object` / `json_schema`); None for free text."""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: tuple[tuple[str, float, list[int]], ...] = ()


@dataclass
class ToolCallDelta:
    """A piece of one streamed tool call (OpenAI `delta.tool_calls[i]`): fragments to append by `index`."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class GenerationChunk:
    """Text produced since the last chunk; `finish_reason` set on the last one."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


class BackendError(RuntimeError):
    """A backend failure the HTTP layer maps to an OpenAI error."""

    def __init__(self, message: str, *, status: int = 503, code: str = "backend_unavailable", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


class BackendBusy(BackendError):
    def __init__(self, message: str = "The server is at capacity; retry shortly."):
        super().__init__(message, status=429, code="rate_limit_exceeded")


def count_prompt_tokens(tokenizer: Any, request: GenerationRequest) -> int:
    """Prompt tokens of `request` under `tokenizer` (0 without one, or when it cannot tell).

    For usage a backend did not report: an upstream without usage, or a request the
    pipeline answered without generating. Never raises: usage is bookkeeping.
    """
    if tokenizer is None:
        return 0
    try:
        if request.messages is not None:
            ids = tokenizer.apply_chat_template(request.messages, tokenize=True, add_generation_prompt=True)
            return len(ids if isinstance(ids, list) else ids["input_ids"])  # newer transformers: a BatchEncoding
        return len(tokenizer.encode(request.prompt or "", add_special_tokens=True))
    except Exception:  # e.g. a tokenizer without a chat template: usage stays unknown
        return 0


TOOLS = "tools"
CONTENT_PARTS = "content_parts"
JSON_OUTPUT = "json_output"
"""Names in `Backend.features`: what a backend takes beyond plain-text chat."""


def backend_features(backend: Any) -> frozenset[str]:
    """A backend's optional capabilities (none unless it declares `features`)."""
    return frozenset(getattr(backend, "features", ()))


@runtime_checkable
class Backend(Protocol):
    """A source of tokens. Implementations: embedded engine, OpenAI-compatible upstream."""

    @property
    def model_ids(self) -> list[str]: ...

    @property
    def ready(self) -> bool: ...

    @property
    def supports_logits_hooks(self) -> bool:
        """False for upstreams that cannot run our processors in-loop."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream one sequence. Closing the iterator early cancels generation."""
        ...

    @property
    def tokenizer(self) -> Any | None:
        """A Hugging Face tokenizer of the served model, for plug-ins that ban token ids."""
        ...
