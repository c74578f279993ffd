"""Native endpoints: `/generate` (SGLang's shape), `/tokenize`, `/detokenize`, `/model_info`
(also `/get_model_info`), `/abort_request`, `/health`, `/flush_cache`, `/stats`, `/metrics`."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lmlang.runtime.protocol import SamplingParams
from lmlang.runtime.server.body import json_body
from lmlang.runtime.server.context import ServerContext, ctx_of
from lmlang.runtime.server.errors import APIError, error_response
from lmlang.runtime.server.generation import gather_or_cancel, merge_streams, prompt_over_context, until_disconnected
from lmlang.runtime.server.native_protocol import AbortRequest, DetokenizeRequest, GenerateRequest, TokenizeRequest
from lmlang.runtime.server.sse import event, start_stream

router = APIRouter()

_LOGPROB_KEYS = ("input_token_logprobs", "output_token_logprobs")
_TOP_LOGPROB_KEYS = ("input_top_logprobs", "output_top_logprobs")


def _jobs(ctx: ServerContext, req: GenerateRequest) -> list:
    """One engine request per prompt and per sample (`sampling_params.n`), validated."""
    prompts = req.prompts()
    count = len(prompts)
    if isinstance(req.rid, list) and len(req.rid) != count:
        raise APIError(400, f"rid is a list of {len(req.rid)} but there are {count} prompt(s)", "rid")
    jobs = []
    for i, prompt in enumerate(prompts):
        raw = dict(req.per_prompt("sampling_params", i, count) or {})
        params = SamplingParams.from_dict(raw)
        if isinstance(prompt, list):
            message = prompt_over_context(len(prompt), None, ctx.context_length)
            if message:
                raise APIError(400, message, "input_ids")
        for j in range(params.n):
            sampling = dict(raw, n=1)
            if params.n > 1 and params.seed is not None:
                sampling["seed"] = params.seed + j  # distinct samples, still reproducible
            job: dict = {
                "sampling_params": sampling,
                "return_logprob": req.per_prompt("return_logprob", i, count),
                "logprob_start_len": req.per_prompt("logprob_start_len", i, count),
                "top_logprobs_num": req.per_prompt("top_logprobs_num", i, count),
                "priority": req.priority,
            }
            job["input_ids" if isinstance(prompt, list) else "prompt"] = prompt
            rid = req.rid[i] if isinstance(req.rid, list) else req.rid
            if rid is not None:
                job["rid"] = rid if params.n == 1 and count == 1 else f"{rid}-{i}-{j}"
            jobs.append(job)
    return jobs


def _with_logprob_text(ctx: ServerContext, result: dict, want_text: bool) -> dict:
    """SGLang's logprob entries: `(logprob, token_id, text or None)`."""
    meta = result.get("meta_info", {})
    tok = ctx.tokenizer

    def entry(e: Any) -> list:
        logprob, token_id = e[0], e[1]
        return [logprob, token_id, tok.decode([token_id]) if want_text else None]

    for key in _LOGPROB_KEYS:
        if meta.get(key) is not None:
            meta[key] = [entry(e) for e in meta[key]]
    for key in _TOP_LOGPROB_KEYS:
        if meta.get(key) is not None:
            meta[key] = [None if row is None else [entry(e) for e in row] for row in meta[key]]
    return result


@router.post("/generate")
async def generate(request: Request, req: GenerateRequest = json_body(GenerateRequest)) -> Any:
    ctx = ctx_of(request)
    jobs = _jobs(ctx, req)
    batch = req.is_batch or len(jobs) > 1
    if req.stream:
        streams = [ctx.client.stream("generate", **job) for job in jobs]

        async def render(item: tuple) -> AsyncIterator[str]:
            index, chunk = item
            chunk = _with_logprob_text(ctx, chunk, req.return_text_in_logprobs)
            if batch:
                chunk["index"] = index
            yield event(chunk)

        return await start_stream(request, merge_streams(streams), render)
    results = await until_disconnected(request, gather_or_cancel([ctx.client.generate("generate", **j) for j in jobs]))
    results = [_with_logprob_text(ctx, r, req.return_text_in_logprobs) for r in results]
    return results if batch else results[0]


@router.post("/tokenize")
async def tokenize(request: Request, req: TokenizeRequest = json_body(TokenizeRequest)) -> dict:
    tok = ctx_of(request).tokenizer
    texts = req.text if isinstance(req.text, list) else [req.text]
    ids = [tok.encode(t, add_special_tokens=req.add_special_tokens) for t in texts]
    return {"input_ids": ids if isinstance(req.text, list) else ids[0]}


@router.post("/detokenize")
async def detokenize(request: Request, req: DetokenizeRequest = json_body(DetokenizeRequest)) -> dict:
    tok = ctx_of(request).tokenizer
    batch = len(req.input_ids) > 0 and isinstance(req.input_ids[0], list)
    rows = req.input_ids if batch else [req.input_ids]
    texts = [tok.decode(r, skip_special_tokens=req.skip_special_tokens) for r in rows]
    return {"text": texts if batch else texts[0]}


@router.get("/model_info")
@router.get("/get_model_info")  # SGLang's name for it
async def model_info(request: Request) -> dict:
    return ctx_of(request).model_info()


@router.post("/abort_request")
async def abort_request(request: Request, req: AbortRequest = json_body(AbortRequest)) -> dict:
    """Aborts the request with id `rid` (as given in `/generate`'s `rid`, or its `meta_info.id`)."""
    ctx = ctx_of(request)
    ctx.client.check_alive()
    ctx.engine.abort(req.rid)
    return {"rid": req.rid}


@router.get("/health")
async def health(request: Request) -> Response:
    if not ctx_of(request).engine.is_alive():
        return error_response(503, "the engine core process is not running; restart the server")
    return JSONResponse({"status": "ok"})


@router.post("/flush_cache")
async def flush_cache(request: Request) -> dict:
    ctx = ctx_of(request)
    ctx.client.check_alive()
    result = await _call(ctx.engine.flush_cache)
    return {"flushed": result is not False}


@router.get("/stats")
async def stats(request: Request) -> dict:
    ctx = ctx_of(request)
    ctx.client.check_alive()
    return await _call(ctx.engine.stats)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ctx = ctx_of(request)
    alive = ctx.engine.is_alive()
    engine_stats = None
    if alive:
        try:
            engine_stats = await _call(ctx.engine.stats)
        except Exception:  # noqa: BLE001 - metrics stay available when the engine is going down
            engine_stats = None
    return Response(ctx.metrics.render(engine_stats, alive), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _call(fn: Any) -> Any:
    """Calls an engine control method, awaiting it if it is a coroutine; a blocking one runs in a
    worker thread so the event loop keeps serving."""
    if inspect.iscoroutinefunction(fn):
        return await fn()
    return await asyncio.to_thread(fn)
