"""An upstream's streamed answer → `GenerationChunk`s: one per network read, checked as it arrives.

The upstream streams one token per SSE event. Events that arrived in the same read
are merged into one chunk (text, token ids and logprobs concatenated in order), so
the gateway gates, frames and sends them once: under load this is what keeps a
proxy from falling behind its upstream, and when the upstream is slower than the
gateway (a real model, one token every few ms) every read holds one event and the
client sees the upstream's own chunking.

Usage arrives after the finishing event (`stream_options.include_usage`), so the
finishing chunk is held until the stream ends and then carries the final counts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.backends.base import BackendError, GenerationChunk, TokenLogprob, ToolCallDelta
from gateway.backends.http_client import Response
from gateway.backends.upstream_http import EmptyStream, bad_upstream, error_fields, event_batches

log = logging.getLogger(__name__)

_MISSING_LOGPROB = -9999.0  # what vLLM reports for -inf
_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter", "eos": "stop",
           "tool_calls": "tool_calls", "function_call": "stop", "abort": "stop"}


@dataclass
class StreamRecord:
    """What one generation produced, for usage and the ignored-control check."""

    events: int = 0
    deltas: list[str] = field(default_factory=list)  # each event's text, when `track` is on
    token_ids: list[int] = field(default_factory=list)
    exact_ids: bool = False
    completion_tokens: int = 0
    prompt_tokens: int = 0
    usage_completion_tokens: int | None = None
    tool_heads: dict[int, tuple[str, str]] = field(default_factory=dict)  # each call's id and name so far


async def upstream_chunks(response: Response, record: StreamRecord, *, chat: bool,
                          want_logprobs: bool, track: bool, streamed: bool,
                          count_prompt: Callable[[], int]) -> AsyncIterator[GenerationChunk]:
    """The answer in `response`, merged per read; the last chunk has `finish_reason` and the usage.

    `count_prompt` counts the prompt's tokens locally, for upstreams that report no usage
    (llama.cpp).

    Raises `EmptyStream` for a stream without a single event (llama.cpp's way of failing
    before the first token) and a 502 `BackendError` for anything malformed or unfinished.
    """
    final: GenerationChunk | None = None
    async for batch in event_batches(response):
        merged = _Merged()
        for event in batch:
            try:
                choice = _event_choice(event, record)
            except BackendError:
                if merged:  # what came before the failure goes out first, as if read on its own
                    yield merged.chunk(None, record)
                raise
            if choice is None or final is not None:
                continue  # usage, or anything after the finishing chunk
            finish = merged.add(choice, record, chat=chat, want_logprobs=want_logprobs, track=track)
            if finish is not None:
                final = merged.chunk(finish, record)  # held until the usage that follows it
                merged = _Merged()
        if merged:
            yield merged.chunk(None, record)
    if final is None:
        if not record.events and streamed:
            raise EmptyStream()
        raise bad_upstream("the response ended before the answer was finished")
    if record.usage_completion_tokens is not None:
        final.completion_tokens = record.usage_completion_tokens
    elif not record.prompt_tokens:
        record.prompt_tokens = count_prompt()
    final.prompt_tokens = record.prompt_tokens
    yield final


def _event_choice(event: Any, record: StreamRecord) -> dict | None:
    """The one choice of an event (None for a usage-only event), with the usage noted in `record`."""
    record.events += 1
    if not isinstance(event, dict):
        raise bad_upstream("malformed response")
    if event.get("error") is not None:
        message, _, _ = error_fields(orjson.dumps({"error": event["error"]}))
        log.error("upstream error mid-stream: %s", message)
        raise bad_upstream("it reported an error while generating")
    usage = event.get("usage")
    if isinstance(usage, dict):
        record.prompt_tokens = _int(usage.get("prompt_tokens"), record.prompt_tokens)
        record.usage_completion_tokens = _int(usage.get("completion_tokens"), 0)
    choices = event.get("choices")
    if not isinstance(choices, list):
        if isinstance(usage, dict) and choices is None:
            return None
        raise bad_upstream("malformed response (no choices)")
    if not choices:
        return None
    choice = choices[0]
    if len(choices) > 1 or not isinstance(choice, dict) or choice.get("index", 0) != 0:
        raise bad_upstream("malformed response (unexpected choice)")
    return choice


class _Merged:
    """The choices of one read, concatenated in order."""

    __slots__ = ("texts", "token_ids", "logprobs", "tool_calls")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.tool_calls: list[ToolCallDelta] = []

    def __bool__(self) -> bool:
        return bool(self.texts or self.logprobs or self.tool_calls)

    def add(self, choice: dict, record: StreamRecord, *, chat: bool, want_logprobs: bool,
            track: bool) -> str | None:
        """Take one choice in; returns its finish reason (None while the answer goes on)."""
        text, token_ids, logprobs = choice_parts(choice, chat, want_logprobs)
        calls = [_unrepeated(c, record) for c in tool_call_deltas(choice)] if chat else []
        if calls:
            self.tool_calls.extend(calls)
            if not (text or token_ids or logprobs):
                record.completion_tokens += 1
        if token_ids:
            record.exact_ids = True
            record.token_ids.extend(token_ids)
            self.token_ids.extend(token_ids)
        if text or token_ids or logprobs:
            record.completion_tokens += max(1, len(token_ids), len(logprobs))
            if track:
                record.deltas.append(text)
        if text:
            self.texts.append(text)
        if logprobs:
            self.logprobs.extend(logprobs)
        finish = choice.get("finish_reason")
        return _FINISH.get(finish, "stop") if finish else None

    def chunk(self, finish_reason: str | None, record: StreamRecord) -> GenerationChunk:
        return GenerationChunk("".join(self.texts), self.token_ids, self.logprobs, finish_reason,
                               record.prompt_tokens, record.completion_tokens, self.tool_calls)


def _unrepeated(call: ToolCallDelta, record: StreamRecord) -> ToolCallDelta:
    """The delta without a repeat of its call's whole id or name: OpenAI and vLLM send them once, in
    the call's first delta; llama.cpp's server repeats both in every delta (the client would read
    "searchsearch…")."""
    call_id, name = record.tool_heads.get(call.index, ("", ""))
    if call.id == call_id:
        call.id = ""
    if call.name and call.name == name:
        call.name = ""
    record.tool_heads[call.index] = (call_id + call.id, name + call.name)
    return call


def tool_call_deltas(choice: dict) -> list[ToolCallDelta]:
    """The tool-call fragments of a chat choice: streamed `delta.tool_calls` (with their `index`) or a
    whole `message.tool_calls` (indexed by position). Anything malformed is a 502: a call the gateway
    cannot read is one it cannot gate."""
    part = choice.get("delta")
    if part is None:
        part = choice.get("message")
    calls = part.get("tool_calls") if isinstance(part, dict) else None
    if not calls:
        return []
    if not isinstance(calls, list):
        raise bad_upstream("malformed response (tool_calls is not a list)")
    out: list[ToolCallDelta] = []
    for position, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        function = {} if function is None else function
        index = call.get("index", position) if isinstance(call, dict) else None
        fields = (call.get("id") or "", function.get("name") or "", function.get("arguments") or "") \
            if isinstance(function, dict) and isinstance(index, int) else None
        if fields is None or not all(isinstance(f, str) for f in fields):
            raise bad_upstream("malformed response (unreadable tool call)")
        out.append(ToolCallDelta(index, *fields))
    return out


def choice_parts(choice: dict, chat: bool, want_logprobs: bool) -> tuple[str, list[int], list[TokenLogprob]]:
    """(text, token ids, logprobs) of one OpenAI choice: a chat `delta`/`message` or completions `text`."""
    if chat:
        part = choice.get("delta")
        if part is None:
            part = choice.get("message")
        text = part.get("content") if isinstance(part, dict) else None
    else:
        text = choice.get("text")
    if text is None:
        text = ""
    elif not isinstance(text, str):
        raise bad_upstream("malformed response (content is not text)")
    ids = choice.get("token_ids")
    token_ids = [int(t) for t in ids if isinstance(t, int)] if isinstance(ids, list) else []
    raw = choice.get("logprobs") if want_logprobs else None
    return text, token_ids, _logprobs(raw, chat) if raw else []


def _logprobs(raw: Any, chat: bool) -> list[TokenLogprob]:
    if not isinstance(raw, dict):
        return []
    out: list[TokenLogprob] = []
    if chat:
        for entry in raw.get("content") or []:
            if not isinstance(entry, dict):
                continue
            token = str(entry.get("token", ""))
            top = tuple(
                (str(alt.get("token", "")), _float(alt.get("logprob")), _bytes(alt.get("bytes"), str(alt.get("token", ""))))
                for alt in entry.get("top_logprobs") or [] if isinstance(alt, dict)
            )
            out.append(TokenLogprob(token, _float(entry.get("logprob")), _bytes(entry.get("bytes"), token), top))
        return out
    tokens = raw.get("tokens") or []
    values = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or []
    for i, token in enumerate(tokens):
        token = str(token)
        alts = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top = tuple((str(t), _float(lp), list(str(t).encode())) for t, lp in alts.items())
        out.append(TokenLogprob(token, _float(values[i] if i < len(values) else None), list(token.encode()), top))
    return out


def _float(value: Any) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return _MISSING_LOGPROB
    return result if result == result and result > _MISSING_LOGPROB else _MISSING_LOGPROB


def _bytes(value: Any, token: str) -> list[int]:
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return list(value)
    return list(token.encode())


def _int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, (int, float)) else default
