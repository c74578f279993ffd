"""`ll.RuntimeEndpoint`: a program backend over an `lmlang serve` server (HTTP, httpx).

Gens and selects go to `POST /generate` as token ids (tokenized by `POST /tokenize`, so the
text stays the source of truth exactly as in-process); the chat template is the model's own,
read from `GET /model_info` and rendered locally; a compiled program is one `POST /program`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Optional, Union

from lmlang.backends.tokens import TokenBackend


class RuntimeEndpoint(TokenBackend):
    """Runs programs against the lmlang server at `url` (`Authorization: Bearer api_key` if given).

    The server is contacted at construction (`/model_info`), so a wrong URL or key fails here.
    """

    def __init__(self, url: str, api_key: Optional[str] = None, *, timeout: float = 600.0) -> None:
        import httpx

        super().__init__()
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._sync = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout)
        self._clients: dict = {}
        self.model_info = self._get("/model_info")
        self._renderer: Any = None

    # ---- HTTP --------------------------------------------------------------------------
    def _get(self, path: str) -> Any:
        import httpx

        try:
            response = self._sync.get(path)
        except httpx.TransportError as e:
            raise ConnectionError(f"cannot reach the lmlang server at {self.url}: {e}") from e
        return _answer(response, path)

    def _client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout)
        return client

    async def _post(self, path: str, body: dict) -> Any:
        return _answer(await self._client().post(path, json=body), path)

    # ---- TokenBackend --------------------------------------------------------------------
    async def encode(self, text: str) -> list:
        bos = self.model_info.get("bos_token")
        add = not (bos and text.startswith(bos))
        ids = (await self._post("/tokenize", {"text": text, "add_special_tokens": add}))["input_ids"]
        return ids if ids else self.unconditional_prefix()

    def unconditional_prefix(self) -> list:
        start = self.model_info.get("bos_token_id")
        if start is None:
            start = self.model_info.get("eos_token_id")
        if start is None:
            raise ValueError("the server's model has neither a BOS nor an EOS token to stand for an empty prompt")
        return [start]

    def render_chat(self, messages: list) -> str:
        if self._renderer is None:
            from lmlang.chat import render_with_jinja

            template = self.model_info.get("chat_template")
            if not template:
                raise ValueError("the server's model has no chat template, so roles (system/user/assistant) cannot be used")
            tokens = {k: self.model_info.get(k) for k in ("bos_token", "eos_token")}
            self._renderer = render_with_jinja(template, tokens)
        return self._renderer(messages)

    async def generate_ids(self, input_ids: list, sampling_params: list, return_logprob: bool,
                           logprob_start_len: Union[int, list], top_logprobs_num: int) -> list:
        body = {
            "input_ids": input_ids, "sampling_params": sampling_params, "return_logprob": return_logprob,
            "logprob_start_len": logprob_start_len, "top_logprobs_num": top_logprobs_num,
        }
        out = await self._post("/generate", body)
        return out if isinstance(out, list) else [out]

    async def generate_ids_stream(self, input_ids: list, sampling_params: dict, return_logprob: bool,
                                  top_logprobs_num: int) -> AsyncIterator[dict]:
        body = {
            "input_ids": input_ids, "sampling_params": sampling_params, "return_logprob": return_logprob,
            "top_logprobs_num": top_logprobs_num, "stream": True,
        }
        async with self._client().stream("POST", "/generate", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                _answer(response, "/generate")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"the server failed the stream: {chunk['error'].get('message', chunk['error'])}")
                yield chunk

    # ---- compiled programs -------------------------------------------------------------
    def run_program(self, program: Any, arguments: dict, defaults: dict, stream: bool) -> Any:
        """One `POST /program`; the server runs the whole DAG and answers the final state
        (with `stream=True` too: streaming is per gen, and the server returns the program whole)."""
        from lmlang.remote_state import FinishedHandle, state_from_dict
        from lmlang.state import ProgramState

        body = {
            "program": program.to_dict(),
            "arguments": arguments,
            "sampling_params": {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()},
        }
        return ProgramState(FinishedHandle(state_from_dict(_answer(self._sync.post("/program", json=body), "/program"))))

    def __repr__(self) -> str:
        return f"ll.RuntimeEndpoint({self.url!r})"


def _answer(response: Any, path: str) -> Any:
    """The JSON of a response; an error status raises with the server's message."""
    if response.status_code < 400:
        return response.json()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    if 400 <= response.status_code < 500:
        raise ValueError(f"the server rejected {path} ({response.status_code}): {message}")
    raise RuntimeError(f"the server failed {path} ({response.status_code}): {message}")
