"""Wire types of `POST /v1/responses`, and their translation into a chat request.

The Responses API is served by mapping it onto the chat endpoint's request
(`ChatCompletionRequest`): the same detection text, backend messages, feature
checks and pipeline, so there is no second path by which output could leave.
Responses are not stored: `previous_response_id` (and `store: true`) is a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.openai.chat.parts import JSONSchemaFormat
from gateway.openai.chat.protocol import ChatCompletionRequest
from gateway.openai.common import MAX_TOKENS_LIMIT

UNSUPPORTED = {
    "previous_response_id": "responses are not stored by this gateway; send the whole conversation in 'input'",
    "conversation": "conversations are not stored by this gateway; send the whole conversation in 'input'",
    "background": "background responses are not available",
    "reasoning": "the served model has no reasoning mode",
    "prompt": "stored prompts are not available",
    "include": "no optional output data is available",
}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Wire):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # on `output_text` parts a client sends back as history


class InputImage(_Wire):
    type: Literal["input_image"]
    image_url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class Refusal(_Wire):
    type: Literal["refusal"]
    refusal: str


InputPart = Annotated[InputText | InputImage | Refusal, Field(discriminator="type")]


class MessageItem(_Wire):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]
    id: str | None = None
    status: str | None = None

    def chat(self) -> dict[str, Any]:
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        parts: list[dict[str, Any]] = []
        for part in self.content:
            if isinstance(part, InputImage):
                image = {"url": part.image_url, **({"detail": part.detail} if part.detail else {})}
                parts.append({"type": "image_url", "image_url": image})
            else:
                parts.append({"type": "text", "text": part.refusal if isinstance(part, Refusal) else part.text})
        return {"role": self.role, "content": parts}


class FunctionCallItem(_Wire):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str
    id: str | None = None
    status: str | None = None


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem,
                      Field(discriminator="type")]


def _item_type(value: Any) -> Any:
    """Items without `type` are messages (the SDK's EasyInputMessage)."""
    return {"type": "message", **value} if isinstance(value, dict) and "type" not in value else value


class FunctionTool(_Wire):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Wire):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Wire):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_Wire):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: Literal[False] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    truncation: Literal["disabled"] | None = None
    service_tier: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed_items(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("input"), list):
            data = {**data, "input": [_item_type(item) for item in data["input"]]}
        return data

    def chat_request(self) -> ChatCompletionRequest:
        """The same request as a chat completion (validated again there: tool turns must pair up)."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        for item in items:
            if isinstance(item, MessageItem):
                messages.append(item.chat())
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                    messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        chat: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
        for key in ("temperature", "top_p", "user", "metadata", "service_tier"):
            if getattr(self, key) is not None:
                chat[key] = getattr(self, key)
        if self.tools and self.parallel_tool_calls is not None:  # chat refuses tool options without tools
            chat["parallel_tool_calls"] = self.parallel_tool_calls
        if self.max_output_tokens is not None:
            chat["max_completion_tokens"] = self.max_output_tokens
        if self.tools:
            chat["tools"] = [{"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})}
                             for t in self.tools]
        if isinstance(self.tool_choice, NamedFunction):
            chat["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None and (self.tools or self.tool_choice == "required"):
            chat["tool_choice"] = self.tool_choice  # "auto"/"none" with no tools say nothing
        fmt = self.text.format if self.text else None
        if fmt is not None and fmt.type == "json_schema":
            spec = JSONSchemaFormat.model_validate(fmt.model_dump(by_alias=True, exclude_none=True,
                                                                  exclude={"type"}))
            chat["response_format"] = {"type": "json_schema", "json_schema": spec.wire()}
        elif fmt is not None:
            chat["response_format"] = {"type": fmt.type}
        return ChatCompletionRequest.model_validate(chat)
