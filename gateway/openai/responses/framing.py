"""Responses-API shapes: the `response` object and its stream of typed events.

`ResponseBuilder` turns the pipeline's gated `ChoiceDelta`s into output items (a
message with `output_text` or, in structured mode, a `refusal` part; one
`function_call` item per tool call) and into the events a streaming client reads
(`response.created` … `response.completed`, each with its `sequence_number`).
It only frames what the pipeline already released: nothing here sees raw output.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from gateway.backends.base import ToolCallDelta
from gateway.openai.responses.protocol import ResponsesRequest
from gateway.pipeline.pipeline import ChoiceDelta


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class ResponseBuilder:
    """One response's state: text so far, refusal, tool calls, usage; see the module docstring."""

    def __init__(self, body: ResponsesRequest, model: str, structured: bool):
        self._body = body
        self._model = model
        self._structured = structured
        self.id = _id("resp")
        self._created = int(time.time())
        self._message_id = _id("msg")
        self._seq = 0
        self._text: list[str] = []
        self._refusal: str | None = None
        self._message_open = False
        self._text_open = False
        self._calls: list[tuple[str, ToolCallDelta]] = []
        self._finish: str | None = None
        self._usage = (0, 0)

    # -- events ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def start(self) -> list[dict]:
        snapshot = self.response(status="in_progress")
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def delta(self, delta: ChoiceDelta) -> list[dict]:
        """The events for one gated delta (the last one also closes the response)."""
        events: list[dict] = []
        self._usage = (delta.prompt_tokens, delta.completion_tokens)
        if delta.refused and self._structured:
            self._refusal = delta.text
            index = 1 if self._text_open else 0
            where = {"item_id": self._message_id, "output_index": 0, "content_index": index}
            events += [*self._open_message(),
                       self._event("response.content_part.added", **where, part={"type": "refusal", "refusal": ""}),
                       self._event("response.refusal.delta", **where, delta=delta.text),
                       self._event("response.refusal.done", **where, refusal=delta.text),
                       self._event("response.content_part.done", **where,
                                   part={"type": "refusal", "refusal": delta.text})]
        elif delta.text:
            events += self._open_text()
            self._text.append(delta.text)
            events.append(self._event("response.output_text.delta", item_id=self._message_id, output_index=0,
                                      content_index=0, delta=delta.text, logprobs=[]))
        self._calls += [(_id("fc"), call) for call in delta.tool_calls]
        if delta.finish_reason is not None or delta.refused:
            self._finish = delta.finish_reason or "stop"
            events += self._close()
        return events

    def _open_message(self) -> list[dict]:
        if self._message_open:
            return []
        self._message_open = True
        item = {**self._message_item(), "status": "in_progress", "content": []}
        return [self._event("response.output_item.added", output_index=0, item=item)]

    def _open_text(self) -> list[dict]:
        if self._text_open:
            return []
        self._text_open = True
        return [*self._open_message(),
                self._event("response.content_part.added", item_id=self._message_id, output_index=0,
                            content_index=0, part={"type": "output_text", "text": "", "annotations": []})]

    def _close(self) -> list[dict]:
        events: list[dict] = []
        if not self._message_open and not self._calls:
            events += self._open_text()  # an empty answer is still one (empty) message
        if self._text_open:
            events += [self._event("response.output_text.done", item_id=self._message_id, output_index=0,
                                   content_index=0, text="".join(self._text), logprobs=[]),
                       self._event("response.content_part.done", item_id=self._message_id, output_index=0,
                                   content_index=0, part=self._content()[0])]
        if self._message_open:
            events.append(self._event("response.output_item.done", output_index=0, item=self._message_item()))
        first = 1 if self._message_open else 0
        for offset, (item_id, call) in enumerate(self._calls):
            index = first + offset
            item = self._call_item(item_id, call)
            events += [self._event("response.output_item.added", output_index=index,
                                   item={**item, "arguments": "", "status": "in_progress"}),
                       self._event("response.function_call_arguments.delta", item_id=item_id, output_index=index,
                                   delta=call.arguments),
                       self._event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                                   arguments=call.arguments),
                       self._event("response.output_item.done", output_index=index, item=item)]
        events.append(self._event("response.completed" if self._finish != "length" else "response.incomplete",
                                  response=self.response()))
        return events

    def error(self, status: int, message: str, code: str | None) -> dict:
        return self._event("error", code=code or str(status), message=message, param=None)

    # -- objects --------------------------------------------------------------------------

    def _content(self) -> list[dict]:
        parts: list[dict] = []
        if self._text_open:
            parts.append({"type": "output_text", "text": "".join(self._text), "annotations": [], "logprobs": []})
        if self._refusal is not None:
            parts.append({"type": "refusal", "refusal": self._refusal})
        return parts

    def _message_item(self) -> dict:
        return {"id": self._message_id, "type": "message", "status": "completed", "role": "assistant",
                "content": self._content()}

    @staticmethod
    def _call_item(item_id: str, call: ToolCallDelta) -> dict:
        return {"id": item_id, "type": "function_call", "status": "completed", "call_id": call.id,
                "name": call.name, "arguments": call.arguments}

    def collected(self, choice: ChoiceDelta) -> dict:
        """The non-stream answer: the whole (collected) choice framed at once."""
        self.delta(choice)
        return self.response()

    def response(self, status: str | None = None) -> dict:
        body = self._body
        output: list[dict] = []
        if status is None:
            if self._message_open:
                output.append(self._message_item())
            output += [self._call_item(item_id, call) for item_id, call in self._calls]
            status = "incomplete" if self._finish == "length" else "completed"
        prompt_tokens, completion_tokens = self._usage
        fmt = body.text.format if body.text and body.text.format else None
        return {
            "id": self.id, "object": "response", "created_at": self._created, "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens, "model": self._model,
            "output": output, "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None, "store": False, "temperature": body.temperature, "top_p": body.top_p,
            "tool_choice": body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump")
            else (body.tool_choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "truncation": "disabled", "metadata": body.metadata or {}, "user": body.user,
            "usage": None if status == "in_progress" else {
                "input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt_tokens + completion_tokens},
        }
