"""Wire types of `POST /v1/chat/completions`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gateway.openai.chat.parts import (
    ContentPart,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    tool_calls_text,
    tool_choice_wire,
)
from gateway.openai.common import MAX_TOKENS_LIMIT, SamplingFields

UNSUPPORTED = {
    "functions": "the legacy 'functions' field is not available; use 'tools'",
    "function_call": "function calling is not available",
    "audio": "only text output is available",
    "prediction": "predicted outputs are not available",
    "web_search_options": "web search is not available",
    "reasoning_effort": "the served model has no reasoning mode",
}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _fields_fit_role(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.refusal)):
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry 'tool_calls'")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("'tool_call_id' is required on tool messages and allowed only there")
        if self.has_media and self.role != "user":
            raise ValueError("image and audio parts are allowed only in user messages")
        return self

    @property
    def has_media(self) -> bool:
        return isinstance(self.content, list) and any(not isinstance(p, TextPart) for p in self.content)

    def text(self) -> str:
        """What detection reads: the text (and text parts), plus an assistant turn's tool calls."""
        if self.content is None:
            text = ""
        else:
            text = self.content if isinstance(self.content, str) else "".join(
                p.text for p in self.content if isinstance(p, TextPart))
        if self.tool_calls:
            text = "\n".join(t for t in (text, tool_calls_text(self.tool_calls)) if t)
        return text

    def template_role(self) -> str:
        return "system" if self.role == "developer" else self.role

    def detection_role(self) -> str:
        """A tool result enters the model's context like user input, so detection reads it as a user turn."""
        return "user" if self.role == "tool" else self.template_role()

    def wire(self) -> dict[str, Any]:
        """The message for the backend: text content as one string, other parts as the client sent them."""
        if self.has_media:
            content: str | list[dict[str, Any]] | None = [p.wire() for p in self.content]  # type: ignore[union-attr]
        elif isinstance(self.content, list):
            content = "".join(p.text for p in self.content)  # type: ignore[union-attr]
        else:
            content = self.content
        # "", not null, for a tool-calling turn without text: llama.cpp's server and chat templates
        # reject a null content (and a missing one); OpenAI and vLLM read both the same way
        out: dict[str, Any] = {"role": self.template_role(), "content": "" if content is None else content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.wire() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text"]] | None = None
    tools: list[Tool] | None = Field(default=None, min_length=1)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("logprobs") is not True:
            raise ValueError("'logprobs' must be set to true when 'top_logprobs' is used")
        return value

    @field_validator("tool_choice", "parallel_tool_calls")
    @classmethod
    def _needs_tools(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("tools"):
            raise ValueError(f"'{info.field_name}' is only allowed when 'tools' are specified")
        return value

    @field_validator("messages")
    @classmethod
    def _has_content(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.text().strip() or m.has_media for m in messages):
            raise ValueError("at least one message must have non-empty content")
        return messages

    @field_validator("messages")
    @classmethod
    def _tool_results_answer_calls(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        called: set[str] = set()
        for message in messages:
            called.update(c.id for c in message.tool_calls or ())
            if message.role == "tool" and message.tool_call_id not in called:
                raise ValueError(f"the tool message for '{message.tool_call_id}' answers no preceding tool call")
        return messages

    def conversation(self) -> list[dict[str, str]]:
        """The text the pipeline's detection reads: every turn, tool calls and tool results included."""
        return [{"role": m.detection_role(), "content": m.text()} for m in self.messages]

    def backend_messages(self) -> list[dict[str, Any]]:
        return [m.wire() for m in self.messages]

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages)

    @property
    def uses_media(self) -> bool:
        return any(m.has_media for m in self.messages)

    def tool_fields(self) -> dict[str, Any]:
        """`GenerationRequest` keyword arguments for the tool fields the client set."""
        return {"tools": [t.wire() for t in self.tools] if self.tools else None,
                "tool_choice": tool_choice_wire(self.tool_choice), "parallel_tool_calls": self.parallel_tool_calls}

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
