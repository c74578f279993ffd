"""`Engine`: the runtime's front end (tokenize, detokenize, track requests) over an engine core process.

The engine core (scheduler, model runner, KV cache) runs in a child process; the two talk over
ZMQ with msgpack. A receiver thread turns the core's token messages into per-request results,
so `generate` may be called from any thread and `async_generate` from any event loop (the HTTP
server shares this front end).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import dataclasses
import json
import subprocess
import sys
import queue
import tempfile
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Union

import zmq

from lmlang.runtime.config import EngineConfig
from lmlang.runtime.engine_core import pack, unpack
from lmlang.runtime.protocol import AbortReq, ControlOut, ControlReq, GenerateReq, SamplingParams, TokenOut
from lmlang.runtime.tokenizer import IncrementalDetokenizer, load_tokenizer

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600.0


class EngineDeadError(RuntimeError):
    """The engine core process is gone; no request can be served."""


class _Request:
    """Front-end state of one request: detokenizer, meta info, and where results go."""

    def __init__(self, rid: str, input_ids: list, params: SamplingParams, sink: Callable[[Optional[dict], bool], None],
                 stream: bool, tokenizer: Any) -> None:
        self.rid = rid
        self.input_ids = input_ids
        self.params = params
        self.sink = sink
        self.stream = stream
        self.detok = IncrementalDetokenizer(tokenizer, params.skip_special_tokens, params.stop_strings)
        self.meta: dict = {"id": rid, "prompt_tokens": len(input_ids), "completion_tokens": 0, "cached_tokens": 0}
        self.logprobs: dict = {}
        self.created = time.time()
        self.first_token_at: Optional[float] = None
        self.done = False

    def absorb(self, out: TokenOut) -> dict:
        if out.first_token_at is not None:
            self.first_token_at = out.first_token_at
        elif out.token_ids and self.first_token_at is None:
            self.first_token_at = time.time()
        self.detok.add(out.token_ids)
        self.meta.update(completion_tokens=out.completion_tokens, cached_tokens=out.cached_tokens,
                         prompt_tokens=out.prompt_tokens or self.meta["prompt_tokens"])
        for key in ("output_token_logprobs", "output_top_logprobs"):
            if getattr(out, key) is not None:
                self.logprobs.setdefault(key, []).extend(getattr(out, key))
        for key in ("input_token_logprobs", "input_top_logprobs"):
            if getattr(out, key) is not None:
                self.logprobs[key] = getattr(out, key)
        finished = out.finished
        if finished is not None:
            self.done = True
            self.meta["finish_reason"] = finished
            self.meta["e2e_latency"] = time.time() - self.created
            if self.first_token_at is not None:
                self.meta["first_token_latency"] = self.first_token_at - self.created
            text = self.detok.final_text(finished.get("matched"))
        else:
            self.meta["finish_reason"] = None
            text = self.detok.visible_text()
        meta = dict(self.meta)
        for key, values in self.logprobs.items():
            if key.endswith("token_logprobs"):  # (logprob, token_id) pairs, as SGLang returns them
                values = [tuple(x) if isinstance(x, list) else x for x in values]
            meta[key] = values
        return {"text": text, "output_ids": list(self.detok.ids), "meta_info": meta}


class Engine:
    """The lmlang runtime in-process: load a checkpoint, then generate.

    Args follow SGLang's engine arguments (see `EngineConfig`): `device` ("cpu" | "cuda"),
    `dtype` ("auto" | "float32" | "bfloat16" | "float16"), `prefix_cache` ("radix" | "block" |
    "none"), `page_size`, `chunked_prefill_size`, `max_total_tokens` (KV slots),
    `max_running_requests`, `schedule_policy` ("fcfs" | "lpm" | "dfs-weight"), `load_format`
    ("auto" | "dummy"), `seed`. Use as a context manager or call `shutdown()`.
    """

    def __init__(self, model_path: str, **engine_args: Any) -> None:
        self.config = EngineConfig(model_path=str(model_path), **engine_args)
        self.tokenizer = load_tokenizer(self.config.tokenizer)
        self._reqs: dict = {}
        self._controls: dict = {}
        self._cids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._dead: Optional[str] = None
        self._closed = False
        self._ipc_dir = tempfile.mkdtemp(prefix="lmlang-")
        in_addr = f"ipc://{self._ipc_dir}/in"
        out_addr = f"ipc://{self._ipc_dir}/out"
        self._ctx = zmq.Context()
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.bind(in_addr)
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(out_addr)
        # A fresh interpreter, not multiprocessing: the user's __main__ is never re-imported.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lmlang.runtime.engine_core",
             json.dumps(dataclasses.asdict(self.config)), in_addr, out_addr],
        )
        self.model_path = self.config.model_path
        self.info = self._wait_ready()
        self.context_length: int = self.info["context_length"]
        self.vocab_size: int = self.info["vocab_size"]
        self._receiver = threading.Thread(target=self._receive_loop, name="lmlang-receiver", daemon=True)
        self._receiver.start()

    # ---- lifecycle -----------------------------------------------------------------------

    def _wait_ready(self) -> dict:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while time.time() < deadline:
            if self._pull.poll(200):
                for msg in unpack(self._pull.recv()):
                    if isinstance(msg, ControlOut) and msg.cid == 0:
                        if msg.error:
                            self._teardown()
                            raise RuntimeError(f"engine core failed to start:\n{msg.error}")
                        return msg.result
            if not self._proc.poll() is None:
                self._teardown()
                raise RuntimeError(f"engine core exited during start-up (exit code {self._proc.returncode})")
        self._teardown()
        raise RuntimeError("engine core did not start in time")

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stops the engine core; pending requests end with an abort."""
        if self._closed:
            return
        self._closed = True
        if self._proc.poll() is None:
            try:
                self._send([ControlReq(cid=next(self._cids), op="shutdown")])
            except zmq.ZMQError:
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._fail_all("engine was shut down")
        self._teardown()

    def _teardown(self) -> None:
        self._closed = True
        if getattr(self, "_receiver", None) is not None and self._receiver.is_alive():
            self._receiver.join(timeout=2)
        self._push.close(linger=0)
        self._pull.close(linger=0)
        self._ctx.term()

    @property
    def core_pid(self) -> int:
        """Process id of the engine core."""
        return self._proc.pid

    def is_alive(self) -> bool:
        return self._dead is None and not self._closed and self._proc.poll() is None

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass

    # ---- messaging -----------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._closed:
            raise EngineDeadError("engine is shut down")
        if self._dead is not None:
            raise EngineDeadError(f"engine core is not running: {self._dead}")

    def _send(self, messages: list) -> None:
        with self._send_lock:
            self._push.send(pack(messages))

    def _receive_loop(self) -> None:
        try:
            self._receive()
        except Exception as e:  # never leave callers waiting on a dead receiver
            logger.exception("engine receiver failed")
            self._dead = f"engine front end receiver failed: {type(e).__name__}: {e}"
            self._fail_all(self._dead)

    def _receive(self) -> None:
        while not self._closed:
            try:
                ready = self._pull.poll(100)
            except zmq.ZMQError:
                return
            if not ready:
                if not self._proc.poll() is None and self._dead is None and not self._closed:
                    self._dead = f"engine core process exited (exit code {self._proc.returncode})"
                    self._fail_all(self._dead)
                continue
            try:
                messages = unpack(self._pull.recv())
            except zmq.ZMQError:
                return
            for msg in messages:
                self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, TokenOut):
            req = self._reqs.get(msg.rid)
            if req is None:
                return
            result = req.absorb(msg)
            if req.done:
                self._reqs.pop(msg.rid, None)
            if req.stream or req.done:
                req.sink(result, req.done)
        elif isinstance(msg, ControlOut):
            if msg.cid == -1:
                self._dead = "engine core crashed:\n" + (msg.error or "")
                self._fail_all(self._dead)
                return
            fut = self._controls.pop(msg.cid, None)
            if fut is not None and not fut.done():
                if msg.error:
                    fut.set_exception(RuntimeError(msg.error))
                else:
                    fut.set_result(msg.result)

    def _fail_all(self, why: str) -> None:
        for rid, req in list(self._reqs.items()):
            self._reqs.pop(rid, None)
            req.sink({"error": why}, True)
        for cid, fut in list(self._controls.items()):
            self._controls.pop(cid, None)
            if not fut.done():
                fut.set_exception(EngineDeadError(why))

    def _control_future(self, op: str, args: dict) -> concurrent.futures.Future:
        self._check_alive()
        cid = next(self._cids)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._controls[cid] = fut
        self._send([ControlReq(cid=cid, op=op, args=args)])
        return fut

    def control(self, op: str, timeout: Optional[float] = 600.0, **args: Any) -> Any:
        """Runs a control operation in the engine core (stats, reset_stats, flush_cache, pin, unpin)."""
        return self._control_future(op, args).result(timeout)

    async def async_control(self, op: str, **args: Any) -> Any:
        """`control` for asyncio."""
        return await asyncio.wrap_future(self._control_future(op, args))

    # ---- request preparation -------------------------------------------------------------

    def _prepare(self, prompt: Any, sampling_params: Any, input_ids: Any, return_logprob: Any,
                 logprob_start_len: Any, top_logprobs_num: Any, priority: Any, stream: bool,
                 rid: Any) -> tuple:
        """Validates and tokenizes; returns (batched?, [GenerateReq], [SamplingParams])."""
        if (prompt is None) == (input_ids is None):
            raise ValueError("give exactly one of prompt or input_ids")
        if prompt is not None:
            batched = isinstance(prompt, (list, tuple))
            prompts = list(prompt) if batched else [prompt]
            for p in prompts:
                if not isinstance(p, str):
                    raise ValueError(f"prompt must be a str or a list of str, got {type(p).__name__}")
            ids_list = [self.tokenizer.encode(p) if p else [] for p in prompts]
        else:
            batched = bool(input_ids) and isinstance(input_ids[0], (list, tuple))
            ids_list = [list(x) for x in input_ids] if batched else [list(input_ids)]
            for ids in ids_list:
                if not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in ids):
                    raise ValueError(f"input_ids must be ints in [0, {self.vocab_size})")
        n_prompts = len(ids_list)

        def per_prompt(value: Any, name: str) -> list:
            if isinstance(value, (list, tuple)):
                if len(value) != n_prompts:
                    raise ValueError(f"{name} has {len(value)} entries for {n_prompts} prompts")
                return list(value)
            return [value] * n_prompts

        params_list = [SamplingParams.from_dict(p) for p in per_prompt(sampling_params, "sampling_params")]
        lp_list = per_prompt(return_logprob, "return_logprob")
        start_list = per_prompt(logprob_start_len, "logprob_start_len")
        topk_list = per_prompt(top_logprobs_num, "top_logprobs_num")
        prio_list = per_prompt(priority, "priority")
        rid_list = per_prompt(rid, "rid") if rid is not None else [None] * n_prompts
        for ids in ids_list:
            if not ids:
                raise ValueError("prompt is empty")
            if len(ids) >= self.context_length:
                raise ValueError(f"prompt has {len(ids)} tokens; the context length is {self.context_length}")
        for k, v in (("top_logprobs_num", topk_list), ("logprob_start_len", start_list), ("priority", prio_list)):
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise ValueError(f"{k} must be an int")
        if stream and (batched or any(p.n > 1 for p in params_list)):
            raise ValueError("stream=True takes a single prompt with n=1")
        group = uuid.uuid4().hex
        msgs, params_out = [], []
        for i, (ids, params) in enumerate(zip(ids_list, params_list)):
            for j in range(params.n):
                p = params if params.n == 1 else params.replace(n=1, seed=None if params.seed is None else params.seed + j)
                base = rid_list[i] or uuid.uuid4().hex
                msgs.append(GenerateReq(
                    rid=base if params.n == 1 else f"{base}-{j}", input_ids=ids, sampling_params=p.to_dict(),
                    return_logprob=bool(lp_list[i]), logprob_start_len=start_list[i],
                    top_logprobs_num=topk_list[i], priority=prio_list[i], stream=stream, group=group,
                ))
                params_out.append(p)
        return batched or len(msgs) > 1, msgs, params_out

    def _submit(self, msgs: list, params: list, sinks: list) -> None:
        self._check_alive()
        rids = [m.rid for m in msgs]
        duplicates = sorted({r for r in rids if r in self._reqs or rids.count(r) > 1})
        if duplicates:
            raise ValueError(f"rid already in use: {', '.join(duplicates)}")
        for m, p, sink in zip(msgs, params, sinks):
            self._reqs[m.rid] = _Request(m.rid, m.input_ids, p, sink, m.stream, self.tokenizer)
        self._send(msgs)

    # ---- public API ----------------------------------------------------------------------

    def generate(self, prompt: Union[str, list, None] = None, sampling_params: Union[dict, list, None] = None, *,
                 input_ids: Optional[list] = None, return_logprob: Union[bool, list] = False,
                 logprob_start_len: Union[int, list] = -1, top_logprobs_num: Union[int, list] = 0,
                 priority: Union[int, list] = 0, stream: bool = False, rid: Union[str, list, None] = None) -> Any:
        """Generates completions; blocks until done.

        Returns a dict `{"text", "output_ids", "meta_info"}` for one prompt, a list of them for
        a list of prompts (n > 1 gives n results per prompt, in order), or with `stream=True`
        an iterator of chunks of the same shape whose "text" is the cumulative text.
        Raises `ValueError` naming the field for bad input; the engine keeps serving.
        """
        batched, msgs, params = self._prepare(prompt, sampling_params, input_ids, return_logprob,
                                              logprob_start_len, top_logprobs_num, priority, stream, rid)
        if stream:
            q: queue.Queue = queue.Queue()
            self._submit(msgs, params, [lambda r, done: q.put((r, done))])
            return self._iter_stream(q, msgs[0].rid)
        futures = [concurrent.futures.Future() for _ in msgs]
        sinks = [self._future_sink(f) for f in futures]
        self._submit(msgs, params, sinks)
        results = [_raise_on_error(f.result()) for f in futures]
        return results if batched else results[0]

    @staticmethod
    def _future_sink(fut: concurrent.futures.Future) -> Callable:
        def sink(result: dict, done: bool) -> None:
            if done and not fut.done():
                fut.set_result(result)

        return sink

    def _iter_stream(self, q: queue.Queue, rid: str) -> Iterator[dict]:
        try:
            while True:
                result, done = q.get()
                yield _raise_on_error(result)
                if done:
                    return
        finally:
            if rid in self._reqs:
                self.abort(rid)

    async def async_generate(self, prompt: Union[str, list, None] = None,
                             sampling_params: Union[dict, list, None] = None, *, input_ids: Optional[list] = None,
                             return_logprob: Union[bool, list] = False, logprob_start_len: Union[int, list] = -1,
                             top_logprobs_num: Union[int, list] = 0, priority: Union[int, list] = 0,
                             stream: bool = False, rid: Union[str, list, None] = None) -> Any:
        """`generate` for asyncio: awaitable; with `stream=True` returns an async iterator of chunks."""
        batched, msgs, params = self._prepare(prompt, sampling_params, input_ids, return_logprob,
                                              logprob_start_len, top_logprobs_num, priority, stream, rid)
        loop = asyncio.get_running_loop()
        if stream:
            aq: asyncio.Queue = asyncio.Queue()
            self._submit(msgs, params, [lambda r, done: loop.call_soon_threadsafe(aq.put_nowait, (r, done))])
            return self._aiter_stream(aq, msgs[0].rid)
        futures = [loop.create_future() for _ in msgs]

        def sink_for(f: asyncio.Future) -> Callable:
            def sink(result: dict, done: bool) -> None:
                if done:
                    loop.call_soon_threadsafe(lambda: f.done() or f.set_result(result))

            return sink

        self._submit(msgs, params, [sink_for(f) for f in futures])
        try:
            results = [_raise_on_error(r) for r in await asyncio.gather(*futures)]
        except asyncio.CancelledError:
            for m in msgs:
                if m.rid in self._reqs:
                    self.abort(m.rid)
            raise
        return results if batched else results[0]

    async def _aiter_stream(self, aq: asyncio.Queue, rid: str) -> AsyncIterator[dict]:
        try:
            while True:
                result, done = await aq.get()
                yield _raise_on_error(result)
                if done:
                    return
        finally:
            if rid in self._reqs:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Ends a waiting or running request: finish_reason "abort", its KV freed."""
        if self.is_alive():
            self._send([AbortReq(rid=request_id)])

    def flush_cache(self) -> bool:
        """Drops the prefix cache; False (and nothing done) while requests are in flight."""
        return bool(self.control("flush_cache"))

    def stats(self) -> dict:
        """Counters and KV usage from the engine core (see `Scheduler.stats`)."""
        return self.control("stats")

    def pin(self, prompt: Optional[str] = None, *, input_ids: Optional[list] = None) -> int:
        """Prefills a prefix and holds it in the prefix cache until `unpin(handle)`."""
        if input_ids is None:
            if not prompt:
                raise ValueError("pin needs a non-empty prompt or input_ids")
            input_ids = self.tokenizer.encode(prompt)
        self.generate(input_ids=input_ids, sampling_params={"max_new_tokens": 0})
        return int(self.control("pin", input_ids=list(input_ids))["handle"])

    def unpin(self, handle: int) -> bool:
        """Releases a prefix held by `pin`; False if the handle is unknown."""
        return bool(self.control("unpin", handle=handle))

    async def async_pin(self, prompt: Optional[str] = None, *, input_ids: Optional[list] = None) -> int:
        """`pin` for asyncio."""
        if input_ids is None:
            if not prompt:
                raise ValueError("pin needs a non-empty prompt or input_ids")
            input_ids = self.tokenizer.encode(prompt)
        await self.async_generate(input_ids=input_ids, sampling_params={"max_new_tokens": 0})
        return int((await self.async_control("pin", input_ids=list(input_ids)))["handle"])

    async def async_unpin(self, handle: int) -> bool:
        """`unpin` for asyncio."""
        return bool(await self.async_control("unpin", handle=handle))

    async def async_stats(self) -> dict:
        """`stats` for asyncio."""
        return await self.async_control("stats")

    def reset_stats(self) -> None:
        """Zeroes the counters of `stats()` (KV figures are live values and stay)."""
        self.control("reset_stats")

    def model_info(self) -> dict:
        return dict(self.info)


def _raise_on_error(result: dict) -> dict:
    if "error" in result:
        raise EngineDeadError(result["error"])
    reason = result["meta_info"].get("finish_reason") or {}
    if reason.get("invalid_request"):
        raise ValueError(reason.get("message", "invalid request"))
    return result

