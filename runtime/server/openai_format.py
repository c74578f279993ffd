"""Engine results -> OpenAI response objects: finish reasons, usage, logprobs, deltas.

The engine reports logprobs SGLang-style: per token `(logprob, token_id, ...)`, and per token a
list of the top alternatives in the same shape. OpenAI wants token strings: completions get
`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, chat gets
`{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`.
"""

from __future__ import annotations

from typing import Any, Optional

from lmlang.runtime.server.errors import APIError


def finish_reason(meta: dict) -> Optional[str]:
    """OpenAI's finish reason for an engine result, None while running.

    An engine abort that carries a message is a failure of the request and raised as a 400.
    """
    reason = meta.get("finish_reason")
    if reason is None:
        return None
    kind = reason.get("type")
    if kind == "abort":
        raise APIError(400, reason.get("message") or "the request was aborted by the engine")
    return "length" if kind == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    d = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
         "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens:
        d["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return d


def sum_usage(metas: list, n: int) -> dict:
    """Usage over the choices; each prompt counts once although it was sampled `n` times."""
    prompt = sum(int(m.get("prompt_tokens", 0)) for i, m in enumerate(metas) if i % n == 0)
    cached = sum(int(m.get("cached_tokens", 0)) for i, m in enumerate(metas) if i % n == 0)
    completion = sum(int(m.get("completion_tokens", 0)) for m in metas)
    return usage(prompt, completion, cached)


class LogprobFormatter:
    """Converts engine logprob entries into OpenAI's shapes with the server's tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def completion(self, entries: list, tops: Optional[list], text_offset: int) -> dict:
        """OpenAI completions `logprobs` for `entries` (one per token), offsets from `text_offset`."""
        tokens, logprobs, top, offsets = [], [], [], []
        for k, e in enumerate(entries):
            text = self.token_text(e[1])
            tokens.append(text)
            logprobs.append(e[0])
            offsets.append(text_offset)
            text_offset += len(text)
            row = tops[k] if tops is not None and k < len(tops) else None
            top.append(None if row is None else {self.token_text(t[1]): t[0] for t in row})
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top if tops is not None else None,
                "text_offset": offsets}

    def chat(self, entries: list, tops: Optional[list]) -> list:
        """OpenAI chat `logprobs.content` for `entries`."""
        out = []
        for k, e in enumerate(entries):
            row = tops[k] if tops is not None and k < len(tops) else None
            item = self._chat_token(e)
            item["top_logprobs"] = [self._chat_token(t) for t in row] if row else []
            out.append(item)
        return out

    def _chat_token(self, e: Any) -> dict:
        text = self.token_text(e[1])
        return {"token": text, "logprob": e[0], "bytes": list(text.encode("utf-8"))}


def output_logprobs(meta: dict, start: int = 0) -> tuple:
    """(entries, tops) of the output tokens from index `start` on; `tops` None if not asked."""
    entries = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs")
    return entries[start:], (tops[start:] if tops is not None else None)


class TextDelta:
    """Turns cumulative texts into deltas (the engine streams the whole text so far).

    The engine holds back text that may still change (a possible stop string, an incomplete
    UTF-8 sequence), so each text extends the previous one; a delta is the part not sent yet.
    """

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, text: str) -> str:
        delta = text[self.sent:]
        self.sent = max(self.sent, len(text))
        return delta
