"""Request bodies of the OpenAI-compatible endpoints (`/v1/completions`, `/v1/chat/completions`).

Strict pydantic models: an unknown field or a value of the wrong type is a 400 naming it, never a
silent coercion. Besides OpenAI's fields, the SGLang / vLLM extensions that the official client
sends through `extra_body` are accepted (`top_k`, `min_p`, `regex`, `json_schema`, ...).
OpenAI fields with no equivalent here (`logit_bias`, `suffix`, `tools`, ...) are accepted only in
their empty form and otherwise refused by name.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

StopField = Optional[Union[str, list[str]]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingExtensions(_Strict):
    """Fields shared by both endpoints: OpenAI's sampling fields plus SGLang's extensions."""

    model: Optional[str] = None
    temperature: Optional[float] = Field(default=None, ge=0)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    stop: StopField = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    seed: Optional[int] = None
    user: Optional[str] = None
    logit_bias: Optional[dict[str, float]] = None
    # SGLang / vLLM extensions
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    min_tokens: Optional[int] = Field(default=None, ge=0)
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: Optional[bool] = None
    skip_special_tokens: Optional[bool] = None
    regex: Optional[str] = None
    json_schema: Optional[Union[str, dict[str, Any]]] = None
    grammar: Optional[str] = None
    priority: int = 0

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> "SamplingExtensions":
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by this server")
        return self

    def sampling_dict(self, max_new_tokens: int) -> dict:
        """The engine's `sampling_params` (SGLang names) for this request; unset fields omitted."""
        d: dict = {"max_new_tokens": max_new_tokens}
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "top_k", "min_p",
                     "repetition_penalty", "stop", "stop_token_ids", "ignore_eos", "skip_special_tokens",
                     "regex", "json_schema", "grammar"):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        if self.min_tokens is not None:
            d["min_new_tokens"] = self.min_tokens
        return d


class CompletionRequest(SamplingExtensions):
    """`POST /v1/completions`."""

    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = Field(default=16, ge=0)
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    @model_validator(mode="after")
    def _check(self) -> "CompletionRequest":
        if self.suffix:
            raise ValueError("suffix is not supported by this server")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported (only best_of == n)")
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("prompt must not be an empty list")
        return self

    def prompts(self) -> list:
        """The prompts as a list, each a str or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [p]
        return list(p)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None
    # what the client echoes back from an earlier response; accepted when empty
    tool_calls: Optional[list[Any]] = None
    tool_call_id: Optional[str] = None
    refusal: Optional[str] = None
    function_call: Optional[Any] = None
    audio: Optional[Any] = None
    annotations: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _check(self) -> "ChatMessage":
        if self.tool_calls or self.function_call or self.role == "tool":
            raise ValueError("tool calls are not supported by this server")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def template_dict(self) -> dict:
        """The message as the tokenizer's chat template expects it."""
        role = "system" if self.role == "developer" else self.role
        d = {"role": role, "content": self.text()}
        if self.name is not None:
            d["name"] = self.name
        return d


class JsonSchemaFormat(_Strict):
    name: str = "response"
    description: Optional[str] = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _check(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a 'json_schema' object")
        return self


class ChatCompletionRequest(SamplingExtensions):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=0)
    max_completion_tokens: Optional[int] = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None

    @model_validator(mode="after")
    def _check(self) -> "ChatCompletionRequest":
        if self.tools:
            raise ValueError("tools are not supported by this server")
        if self.tool_choice not in (None, "none", "auto"):
            raise ValueError("tool_choice is not supported by this server")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        constraints = [n for n in ("regex", "json_schema", "grammar") if getattr(self, n) is not None]
        if self.response_format is not None and self.response_format.type != "text" and constraints:
            raise ValueError(f"response_format cannot be combined with {constraints[0]}")
        return self

    def requested_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def constraint_schema(self) -> Optional[str]:
        """The JSON schema (as a string) that `response_format` asks for, if any."""
        rf = self.response_format
        if rf is None or rf.type == "text":
            return None
        if rf.type == "json_object":
            return json.dumps({"type": "object"})
        return json.dumps(rf.json_schema.schema_)
