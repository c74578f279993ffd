"""`ll.OpenAI`: chat and completion models behind any OpenAI-compatible API (`openai` package).

What the API cannot express raises `NotImplementedError` naming the primitive: `select`,
`regex` / `grammar` constraints, sampling options the API lacks (`min_tokens`, `top_k`,
`min_p`, `ignore_eos`, `stop_token_ids`), and on a chat model a gen anywhere but at the start of
an assistant message (the API cannot continue a partial message). `json_schema` becomes the
chat API's `response_format`. The program's text renders roles with ChatML markers (the real
template is the server's and is not visible to the client).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from lmlang.backends.base import Backend, GenRequest, GenResult, SelectRequest, SelectResult
from lmlang.chat import CHATML, ChatTemplate
from lmlang.runtime.protocol import SamplingParams

# SamplingParams fields the OpenAI API has no parameter for, with the gen keyword users wrote.
_UNSUPPORTED = {
    "min_new_tokens": "min_tokens", "top_k": "top_k", "min_p": "min_p", "ignore_eos": "ignore_eos",
    "stop_token_ids": "stop_token_ids", "repetition_penalty": "repetition_penalty",
    "regex": "regex", "grammar": "grammar",
}


class OpenAI(Backend):
    """`model` at `base_url` (default: OpenAI's; `api_key` default: `$OPENAI_API_KEY`).

    `is_chat_model` (default True) picks the chat completions API; False uses the legacy
    completions API with the program's whole text as the prompt.
    """

    def __init__(self, model: str, base_url: Optional[str] = None, api_key: Optional[str] = None, *,
                 is_chat_model: bool = True) -> None:
        import openai

        self.model = model
        self.is_chat_model = is_chat_model
        self._args = {"base_url": base_url, "api_key": api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"}
        self._openai = openai
        self._clients: dict = {}

    def _client(self) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            self._clients[loop] = self._openai.AsyncOpenAI(**self._args)
        return self._clients[loop]

    def chat_template(self) -> ChatTemplate:
        return CHATML

    def _check(self, params: SamplingParams) -> None:
        default = SamplingParams()
        for field, keyword in _UNSUPPORTED.items():
            if getattr(params, field) != getattr(default, field):
                raise NotImplementedError(f"gen({keyword}=...) is not supported by the OpenAI backend (model {self.model!r})")

    def _options(self, request: GenRequest) -> dict:
        p = request.params
        options: dict = {
            "model": self.model, "max_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p,
            "frequency_penalty": p.frequency_penalty, "presence_penalty": p.presence_penalty,
        }
        if p.stop_strings:
            options["stop"] = p.stop_strings
        if p.seed is not None:
            options["seed"] = p.seed
        return options

    async def generate(self, request: GenRequest) -> GenResult:
        self._check(request.params)
        options = self._options(request)
        stream = request.on_text is not None
        if self.is_chat_model:
            messages = request.messages
            if not messages or messages[-1]["role"] != "assistant" or messages[-1]["content"]:
                raise NotImplementedError(
                    "on an OpenAI chat model a gen must open an assistant message (ll.assistant(ll.gen(...))); "
                    "the API cannot continue text outside one"
                )
            if request.params.json_schema is not None:
                import json

                options["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": json.loads(request.params.json_schema)},
                }
            call = self._client().chat.completions.create(messages=messages[:-1], stream=stream, **options)
        else:
            if request.params.json_schema is not None:
                raise NotImplementedError("gen(json_schema=...) needs a chat model on the OpenAI backend")
            call = self._client().completions.create(prompt=request.text, stream=stream, **options)
        response = await call
        if stream:
            text, finish = "", None
            async for chunk in response:
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                piece = (choice.delta.content if self.is_chat_model else choice.text) or ""
                if piece:
                    text += piece
                    request.on_text(piece)
                finish = choice.finish_reason or finish
            return GenResult(text, {"finish_reason": _finish(finish)})
        choice = response.choices[0]
        text = (choice.message.content if self.is_chat_model else choice.text) or ""
        meta: dict = {"finish_reason": _finish(choice.finish_reason)}
        if response.usage is not None:
            meta.update(prompt_tokens=response.usage.prompt_tokens, completion_tokens=response.usage.completion_tokens)
        return GenResult(text, meta)

    async def select(self, request: SelectRequest) -> SelectResult:
        raise NotImplementedError(
            f"select is not supported by the OpenAI backend (model {self.model!r}): the API does not score "
            f"given continuations; use ll.Engine or ll.RuntimeEndpoint"
        )

    def __repr__(self) -> str:
        return f"ll.OpenAI({self.model!r})"


def _finish(reason: Optional[str]) -> Optional[dict]:
    if reason is None:
        return None
    return {"type": "length" if reason == "length" else "stop"}
