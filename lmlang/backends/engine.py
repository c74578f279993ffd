"""`ll.Engine`: the in-process lmlang runtime as a backend (imported only when constructed)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, AsyncIterator, Optional, Union

from lmlang.backends.tokens import TokenBackend


class Engine(TokenBackend):
    """Runs programs on `lmlang.runtime.Engine(model_path, **engine_args)` in this process.

    `engine_args` are the runtime engine's (`device`, `dtype`, `prefix_cache`, ...). The chat
    template is the tokenizer's own. `engine` is the runtime engine (for `stats()` etc.);
    `shutdown()` or a `with` block stops it.
    """

    def __init__(self, model_path: str, **engine_args: Any) -> None:
        from lmlang.runtime import Engine as RuntimeEngine

        super().__init__()
        self.engine = RuntimeEngine(model_path, **engine_args)
        self._owns_engine = True

    @classmethod
    def from_runtime(cls, engine: Any) -> "Engine":
        """Wraps an already running `lmlang.runtime.Engine` (not shut down by this backend)."""
        backend = cls.__new__(cls)
        TokenBackend.__init__(backend)
        backend.engine = engine
        backend._owns_engine = False
        return backend

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def stats(self) -> dict:
        return self.engine.stats()

    def flush_cache(self) -> bool:
        return self.engine.flush_cache()

    def shutdown(self) -> None:
        if self._owns_engine:
            self.engine.shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ---- TokenBackend --------------------------------------------------------------------
    async def encode(self, text: str) -> list:
        return self.encode_now(text)

    def encode_now(self, text: str) -> list:
        tok = self.engine.tokenizer
        bos = tok.bos_token
        ids = tok.encode(text, add_special_tokens=not (bos and text.startswith(bos)))
        return ids if ids else self.unconditional_prefix()

    def unconditional_prefix(self) -> list:
        tok = self.engine.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand for an empty prompt")
        return [start]

    def render_chat(self, messages: list) -> str:
        tok = self.engine.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ValueError("the model's tokenizer has no chat template, so roles (system/user/assistant) cannot be used")
        return tok.apply_chat_template(messages, tokenize=False)

    async def generate_ids(self, input_ids: list, sampling_params: list, return_logprob: bool,
                           logprob_start_len: Union[int, list], top_logprobs_num: int) -> list:
        return await self.engine.async_generate(
            input_ids=input_ids, sampling_params=sampling_params, return_logprob=return_logprob,
            logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        )

    async def generate_ids_stream(self, input_ids: list, sampling_params: dict, return_logprob: bool,
                                  top_logprobs_num: int) -> AsyncIterator[dict]:
        chunks = self.engine.async_generate(
            input_ids=input_ids, sampling_params=sampling_params, return_logprob=return_logprob,
            top_logprobs_num=top_logprobs_num, stream=True,
        )
        if inspect.isawaitable(chunks):
            chunks = await chunks
        async for chunk in chunks:
            yield chunk

    async def pin(self, text: str) -> Optional[int]:
        return await asyncio.to_thread(self.engine.pin, input_ids=self.encode_now(text))

    async def unpin(self, handle: Any) -> None:
        await asyncio.to_thread(self.engine.unpin, handle)

    def __repr__(self) -> str:
        return f"ll.Engine({self.engine.config.model_path!r})"
