"""Shared logic of backends that speak token ids and report prompt logprobs (SGLang's shape).

The in-process engine and an lmlang server both take `input_ids`, `sampling_params`,
`return_logprob`, `logprob_start_len` and `top_logprobs_num`, and return
`{"text", "output_ids", "meta_info"}`; token logprobs are `(logprob, token_id)` pairs, and
`input_token_logprobs[j]` scores prompt token `logprob_start_len + j` given the tokens before it.
On top of that this class implements gen (batched per loop iteration) and select.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import AsyncIterator, Hashable, Optional, Union

from lmlang.backends.base import Backend, GenRequest, GenResult, SelectRequest, SelectResult
from lmlang.backends.batching import SubmissionBatcher
from lmlang.chat import ChatTemplate
from lmlang.sampling import sampling_dict


class TokenBackend(Backend):
    """A backend over a token-level generate call. Subclasses supply tokenization and transport.

    Text is the source of truth: every prompt is `encode(text)`, the canonical tokenization of
    the whole text so far, with the model's BOS added unless the text already starts with it.
    """

    def __init__(self) -> None:
        self._batcher = SubmissionBatcher(self._submit_batch)
        self._template: Optional[ChatTemplate] = None

    # ---- what a subclass provides -----------------------------------------------------
    @abstractmethod
    async def encode(self, text: str) -> list:
        """Canonical token ids of `text` (BOS rule as above)."""

    @abstractmethod
    async def generate_ids(self, input_ids: list, sampling_params: list, return_logprob: bool,
                           logprob_start_len: Union[int, list], top_logprobs_num: int) -> list:
        """One submission of several prompts (`logprob_start_len` one value or one per prompt);
        returns one result dict per prompt."""

    @abstractmethod
    def generate_ids_stream(self, input_ids: list, sampling_params: dict, return_logprob: bool,
                            top_logprobs_num: int) -> AsyncIterator[dict]:
        """One streamed prompt: chunks whose "text" is the cumulative text."""

    @abstractmethod
    def render_chat(self, messages: list) -> str:
        """The model's own chat template applied to `messages` (no generation prompt)."""

    @abstractmethod
    def unconditional_prefix(self) -> list:
        """Token ids that stand for 'no prompt' (the model's BOS) for unconditional scoring."""

    # ---- Backend ---------------------------------------------------------------------
    def chat_template(self) -> ChatTemplate:
        if self._template is None:
            self._template = ChatTemplate(self.render_chat)
        return self._template

    async def generate(self, request: GenRequest) -> GenResult:
        input_ids = await self.encode(request.text)
        params = sampling_dict(request.params)
        if request.on_text is not None:
            text, last = "", None
            async for chunk in self.generate_ids_stream(input_ids, params, request.return_logprob, request.top_logprobs_num):
                piece = chunk["text"][len(text) :]
                text, last = chunk["text"], chunk
                if piece:
                    request.on_text(piece)
            if last is None:
                raise RuntimeError("the backend's stream ended without a result")
            return GenResult(last["text"], last.get("meta_info", {}))
        key = (request.return_logprob, request.top_logprobs_num)
        out = await self._batcher.add(key, (input_ids, params))
        return GenResult(out["text"], out.get("meta_info", {}))

    async def _submit_batch(self, key: Hashable, items: list) -> list:
        return_logprob, top_logprobs_num = key
        return await self.generate_ids(
            [ids for ids, _ in items], [params for _, params in items], return_logprob, -1, top_logprobs_num
        )

    async def select(self, request: SelectRequest) -> SelectResult:
        prefix = await self.encode(request.text)
        full = [await self.encode(request.text + choice) for choice in request.choices]
        shared = [_common_prefix_len(prefix, ids) for ids in full]
        for choice, ids, k in zip(request.choices, full, shared):
            if k >= len(ids):
                raise ValueError(f"select choice {choice!r} adds no tokens to the prompt")
        if min(shared) == 0:
            raise ValueError("select needs text before it (the first token of a prompt has no logprob)")
        # one submission: every choice scored from where it leaves the prefix (and, for methods that
        # need it, the same tokens after only the start token)
        bare = self.unconditional_prefix() if request.method.needs_unconditional else []
        prompts, starts = list(full), list(shared)
        if request.method.needs_unconditional:
            prompts += [bare + ids[k:] for ids, k in zip(full, shared)]
            starts += [len(bare)] * len(full)
        outs = await self.generate_ids(prompts, [{"max_new_tokens": 0}] * len(prompts), True, starts, 0)
        token_logprobs = [_scored(out, ids, k) for out, ids, k in zip(outs, full, shared)]
        unconditional = None
        if request.method.needs_unconditional:
            unconditional = [_scored(out, bare + ids[k:], len(bare)) for out, ids, k in zip(outs[len(full) :], full, shared)]
        decision = request.method.decide(
            [[lp for lp, _ in tl] for tl in token_logprobs],
            None if unconditional is None else [[lp for lp, _ in tl] for tl in unconditional],
        )
        meta = {
            "method": request.method.name,
            "choices": list(request.choices),
            "scores": decision.scores,
            "normalized_prompt_logprobs": [sum(lp for lp, _ in tl) / len(tl) for tl in token_logprobs],
            "input_token_logprobs": token_logprobs,
            "unconditional_token_logprobs": unconditional,
            "prompt_tokens": len(prefix),
            "cached_tokens": [out.get("meta_info", {}).get("cached_tokens") for out in outs[: len(full)]],
        }
        return SelectResult(decision.index, meta)


def _common_prefix_len(a: list, b: list) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _scored(out: dict, ids: list, start: int) -> list:
    """`(logprob, token_id)` of tokens `ids[start:]` from a result scored from `start`."""
    entries = out.get("meta_info", {}).get("input_token_logprobs")
    if entries is None or len(entries) != len(ids) - start:
        raise RuntimeError(
            f"the backend returned {None if entries is None else len(entries)} prompt logprobs for a "
            f"{len(ids)}-token prompt scored from {start}; expected {len(ids) - start}"
        )
    picked = [(float(e[0]), int(e[1])) for e in entries]  # servers may add the token text as e[2]
    if [tid for _, tid in picked] != list(ids[start:]):
        raise RuntimeError("the backend's prompt logprobs do not match the prompt's tokens")
    return picked
