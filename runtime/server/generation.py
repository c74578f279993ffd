"""How routes run generations on the shared engine: request ids, metrics, aborts, merging.

Every engine request a route makes goes through `EngineClient`, which gives it an id, times it
into the metrics, and aborts it in the engine when the caller goes away (a cancelled task: the
client disconnected, or a sibling request failed) so that its KV slots are freed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from typing import Any, AsyncIterator, Awaitable, Optional, Sequence

from starlette.requests import Request

from lmlang.runtime.server.errors import APIError, is_engine_dead
from lmlang.runtime.server.metrics import RequestTrace, ServerMetrics


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


def new_request_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex


class EngineClient:
    """The server's handle on the engine: `generate` for one answer, `stream` for chunks."""

    def __init__(self, engine: Any, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics

    def check_alive(self) -> None:
        if not self.engine.is_alive():
            raise APIError(503, "the engine core process is not running; restart the server")

    async def generate(self, endpoint: str, **request: Any) -> dict:
        """One finished result (the engine's dict); aborts the request if cancelled."""
        self.check_alive()
        rid = request.setdefault("rid", new_request_id())
        trace = RequestTrace(self.metrics, endpoint)
        try:
            result = await self.engine.async_generate(**request, stream=False)
        except asyncio.CancelledError:
            self._abort(rid)
            trace.finish(None, "abort")
            raise
        except Exception as exc:
            trace.finish(None, "error")
            if is_engine_dead(exc):
                raise _dead(exc) from exc
            raise
        trace.finish(result.get("meta_info"))
        return result

    async def stream(self, endpoint: str, **request: Any) -> AsyncIterator[dict]:
        """Chunks with cumulative `text`; the request is aborted if iteration stops early."""
        self.check_alive()
        rid = request.setdefault("rid", new_request_id())
        trace = RequestTrace(self.metrics, endpoint)
        try:
            chunks = self.engine.async_generate(**request, stream=True)
            if inspect.isawaitable(chunks):
                chunks = await chunks
        except Exception as exc:
            trace.finish(None, "error")
            if is_engine_dead(exc):
                raise _dead(exc) from exc
            raise
        finished = False
        try:
            async for chunk in chunks:
                meta = chunk.get("meta_info", {})
                trace.on_tokens(int(meta.get("completion_tokens", 0)))
                if meta.get("finish_reason") is not None:
                    finished = True
                    trace.finish(meta)
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            trace.finish(None, "abort")
            raise
        except Exception as exc:
            trace.finish(None, "error")
            if is_engine_dead(exc):
                raise _dead(exc) from exc
            raise
        finally:
            if not finished:
                self._abort(rid)
                trace.finish(None, "abort")
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def _abort(self, rid: str) -> None:
        with contextlib.suppress(Exception):  # a dead engine has nothing left to free
            self.engine.abort(rid)


def _dead(exc: Exception) -> APIError:
    """A dead engine is answered with a 503 (and no traceback in the log)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return APIError(503, f"the engine core process is not running ({first_line}); restart the server")


async def merge_streams(streams: Sequence[AsyncIterator[dict]]) -> AsyncIterator[tuple]:
    """`(index, chunk)` from several streams as chunks arrive; on exit, the unfinished ones
    are cancelled (which aborts their engine requests). An error in one stream is raised."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: AsyncIterator[dict]) -> None:
        try:
            async for chunk in stream:
                await queue.put((i, chunk, None))
            await queue.put((i, end, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, which raises it
            await queue.put((i, end, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, chunk, exc = await queue.get()
            if exc is not None:
                raise exc
            if chunk is end:
                remaining -= 1
                continue
            yield i, chunk
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def gather_or_cancel(coros: Sequence[Awaitable]) -> list:
    """Like `asyncio.gather`, but the first failure (or a cancellation) cancels the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_disconnected(request: Request, work: Awaitable) -> Any:
    """Runs `work` unless the client disconnects first; then cancels it and raises `ClientGone`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def prompt_over_context(prompt_len: int, max_new_tokens: Optional[int], context_length: int) -> Optional[str]:
    """The 400 message when a prompt (plus the tokens asked for) does not fit, else None."""
    if prompt_len >= context_length:
        return (f"the prompt is {prompt_len} tokens, but the model's context length is {context_length} "
                f"(the prompt must be shorter than that)")
    if max_new_tokens is not None and prompt_len + max_new_tokens > context_length:
        return (f"the prompt ({prompt_len} tokens) plus max_tokens ({max_new_tokens}) exceeds the model's "
                f"context length of {context_length} tokens; lower max_tokens or shorten the prompt")
    return None
