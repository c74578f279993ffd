"""OpenAI-compatible endpoints: `/v1/models`, `/v1/completions`, `/v1/chat/completions`.

Each prompt is sampled `n` times as `n` engine requests (sharing the prompt through the prefix
cache; with a `seed`, sample `j` uses `seed + j`). Chat prompts are rendered with the tokenizer's
own chat template (`apply_chat_template`) and sent as token ids.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Request

from lmlang.runtime.protocol import SamplingParams
from lmlang.runtime.server.body import json_body
from lmlang.runtime.server.context import ServerContext, ctx_of
from lmlang.runtime.server.errors import APIError
from lmlang.runtime.server.generation import (gather_or_cancel, merge_streams, new_request_id, prompt_over_context,
                                              until_disconnected)
from lmlang.runtime.server.openai_format import (LogprobFormatter, TextDelta, finish_reason, output_logprobs,
                                                 sum_usage)
from lmlang.runtime.server.openai_protocol import ChatCompletionRequest, CompletionRequest, SamplingExtensions
from lmlang.runtime.server.sse import event, start_stream

router = APIRouter(prefix="/v1")


@router.get("/models")
async def models(request: Request) -> dict:
    return ctx_of(request).models_list()


@router.get("/models/{model:path}")
async def model(model: str, request: Request) -> dict:
    ctx = ctx_of(request)
    ctx.check_model(model)
    return ctx.models_list()["data"][0]


def _expand(ctx: ServerContext, body: SamplingExtensions, prompt: Any, max_new_tokens: Optional[int],
            logprob_opts: dict) -> list:
    """The `n` engine requests for one prompt (a str or token ids), validated."""
    if isinstance(prompt, list):
        message = prompt_over_context(len(prompt), max_new_tokens, ctx.context_length)
        if message:
            raise APIError(400, message, "prompt")
    if max_new_tokens is None:
        ids = prompt if isinstance(prompt, list) else ctx.tokenizer.encode(prompt)
        max_new_tokens = max(ctx.context_length - len(ids), 0)
    jobs = []
    for j in range(body.n):
        sampling = body.sampling_dict(max_new_tokens)
        if body.seed is not None:
            sampling["seed"] = body.seed + j
        SamplingParams.from_dict(sampling)
        job = {"sampling_params": sampling, "priority": body.priority, **logprob_opts}
        job["input_ids" if isinstance(prompt, list) else "prompt"] = prompt
        jobs.append(job)
    return jobs


def _include_usage(body: SamplingExtensions) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


@router.post("/completions")
async def completions(request: Request, body: CompletionRequest = json_body(CompletionRequest)) -> Any:
    ctx = ctx_of(request)
    ctx.check_model(body.model)
    prompts = body.prompts()
    want_logprobs = body.logprobs is not None
    logprob_opts = {
        "return_logprob": want_logprobs,
        "top_logprobs_num": body.logprobs or 0,
        "logprob_start_len": 0 if (body.echo and want_logprobs) else -1,
    }
    jobs = [job for p in prompts for job in _expand(ctx, body, p, body.max_tokens, logprob_opts)]
    prompt_texts = [p if isinstance(p, str) else ctx.tokenizer.decode(p) for p in prompts]
    fmt = LogprobFormatter(ctx.tokenizer)
    rid, created, name = new_request_id("cmpl-"), int(time.time()), ctx.served_model_name
    n = body.n

    def choice_logprobs(meta: dict, start: int, offset: int, with_prompt: bool) -> Optional[dict]:
        if not want_logprobs:
            return None
        entries, tops = output_logprobs(meta, start)
        if with_prompt and body.echo:
            entries = list(meta.get("input_token_logprobs") or []) + list(entries)
            if tops is not None:
                tops = list(meta.get("input_top_logprobs") or [None] * (len(entries) - len(tops))) + list(tops)
        return fmt.completion(entries, tops, offset)

    if not body.stream:
        results = await until_disconnected(request, gather_or_cancel([ctx.client.generate("completions", **j)
                                                                       for j in jobs]))
        choices = []
        for k, res in enumerate(results):
            meta = res["meta_info"]
            prefix = prompt_texts[k // n] if body.echo else ""
            choices.append({"index": k, "text": prefix + res["text"], "logprobs": choice_logprobs(meta, 0, 0, True),
                            "finish_reason": finish_reason(meta)})
        return {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": choices,
                "usage": sum_usage([r["meta_info"] for r in results], n), "system_fingerprint": None}

    deltas = [TextDelta() for _ in jobs]
    logprobs_sent = [0] * len(jobs)
    text_offsets = [0] * len(jobs)
    started = [False] * len(jobs)
    last_meta: list = [{} for _ in jobs]

    async def render(item: tuple) -> AsyncIterator[str]:
        k, chunk = item
        meta = chunk.get("meta_info", {})
        last_meta[k] = meta
        text = deltas[k](chunk.get("text", ""))
        first = not started[k]
        started[k] = True
        if first and body.echo:
            text = prompt_texts[k // n] + text
        logprobs = choice_logprobs(meta, logprobs_sent[k], text_offsets[k], first)
        if logprobs is not None:
            logprobs_sent[k] = len(meta.get("output_token_logprobs") or [])
            text_offsets[k] += sum(len(t) for t in logprobs["tokens"])
        reason = finish_reason(meta)
        if text or reason is not None or (logprobs and logprobs["tokens"]):
            yield event({"id": rid, "object": "text_completion", "created": created, "model": name,
                         "choices": [{"index": k, "text": text, "logprobs": logprobs, "finish_reason": reason}]})

    async def finish() -> AsyncIterator[str]:
        if _include_usage(body):
            yield event({"id": rid, "object": "text_completion", "created": created, "model": name, "choices": [],
                         "usage": sum_usage(last_meta, n)})

    streams = [ctx.client.stream("completions", **j) for j in jobs]
    return await start_stream(request, merge_streams(streams), render, finish)


def _chat_prompt(ctx: ServerContext, body: ChatCompletionRequest) -> list:
    """The token ids of the conversation, rendered by the model's own chat template."""
    tok = ctx.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions instead")
    messages = [m.template_dict() for m in body.messages]
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - a template error (e.g. role order) is the caller's
        raise APIError(400, f"the chat template rejected the messages: {exc}", "messages") from exc
    # the template writes any BOS itself
    return tok.encode(text, add_special_tokens=False)


@router.post("/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest = json_body(ChatCompletionRequest)) -> Any:
    ctx = ctx_of(request)
    ctx.check_model(body.model)
    schema = body.constraint_schema()
    if schema is not None:
        body = body.model_copy(update={"json_schema": schema})
    ids = _chat_prompt(ctx, body)
    want_logprobs = body.logprobs
    logprob_opts = {"return_logprob": want_logprobs, "top_logprobs_num": body.top_logprobs or 0}
    jobs = _expand(ctx, body, ids, body.requested_max_tokens(), logprob_opts)
    fmt = LogprobFormatter(ctx.tokenizer)
    rid, created, name = new_request_id("chatcmpl-"), int(time.time()), ctx.served_model_name

    def choice_logprobs(meta: dict, start: int) -> Optional[dict]:
        if not want_logprobs:
            return None
        entries, tops = output_logprobs(meta, start)
        return {"content": fmt.chat(entries, tops)}

    if not body.stream:
        results = await until_disconnected(request, gather_or_cancel([ctx.client.generate("chat", **j)
                                                                       for j in jobs]))
        choices = [{"index": k, "message": {"role": "assistant", "content": r["text"]},
                    "logprobs": choice_logprobs(r["meta_info"], 0), "finish_reason": finish_reason(r["meta_info"])}
                   for k, r in enumerate(results)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": name, "choices": choices,
                "usage": sum_usage([r["meta_info"] for r in results], len(jobs)), "system_fingerprint": None}

    deltas = [TextDelta() for _ in jobs]
    logprobs_sent = [0] * len(jobs)
    started = [False] * len(jobs)
    last_meta: list = [{} for _ in jobs]

    def chunk_event(k: int, delta: dict, logprobs: Optional[dict], reason: Optional[str]) -> str:
        return event({"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                      "choices": [{"index": k, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]})

    async def render(item: tuple) -> AsyncIterator[str]:
        k, chunk = item
        meta = chunk.get("meta_info", {})
        last_meta[k] = meta
        if not started[k]:
            started[k] = True
            yield chunk_event(k, {"role": "assistant", "content": ""}, None, None)
        text = deltas[k](chunk.get("text", ""))
        logprobs = choice_logprobs(meta, logprobs_sent[k])
        if logprobs is not None:
            logprobs_sent[k] = len(meta.get("output_token_logprobs") or [])
        reason = finish_reason(meta)
        if text or reason is not None or (logprobs and logprobs["content"]):
            yield chunk_event(k, {"content": text} if text else {}, logprobs, reason)

    async def finish() -> AsyncIterator[str]:
        if _include_usage(body):
            yield event({"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                         "choices": [], "usage": sum_usage(last_meta, len(jobs))})

    streams = [ctx.client.stream("chat", **j) for j in jobs]
    return await start_stream(request, merge_streams(streams), render, finish)
