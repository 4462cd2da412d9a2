"""Wire types of the chat API beyond plain text: content parts, tools, tool calls, `response_format`.

They are validated here (so a malformed tool or part is a 400 naming the field)
and passed on to a backend that declares the matching feature
(`gateway.backends.base.backend_features`); a backend without it answers a 400
that says why, never a silently dropped field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def wire(self) -> dict[str, Any]:
        """The object as the OpenAI API spells it (unset optional fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class ImageURL(_Wire):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Wire):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Wire):
    data: str = Field(min_length=1)
    format: Literal["wav", "mp3"]


class AudioPart(_Wire):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class FunctionCall(_Wire):
    name: str = Field(min_length=1)
    arguments: str


class ToolCall(_Wire):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(_Wire):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class _FunctionName(_Wire):
    name: str = Field(min_length=1)


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: _FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaFormat(_Wire):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_matches_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is required with type 'json_schema' and allowed only with it")
        return self

    @property
    def structured(self) -> bool:
        return self.type != "text"


def tool_choice_wire(choice: ToolChoice | None) -> str | dict[str, Any] | None:
    return choice.wire() if isinstance(choice, NamedToolChoice) else choice


def tool_calls_text(calls: list[ToolCall]) -> str:
    """An assistant turn's tool calls as text for detection: the name and the arguments of each."""
    return "\n".join(f"{c.function.name} {c.function.arguments}" for c in calls)
