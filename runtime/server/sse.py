"""Server-sent events: `data: <json>` lines, ending with `data: [DONE]`.

A stream's first chunk is awaited before the response starts (`start_stream`), so that errors
found when the request is submitted — a prompt over the context length, an invalid regex, a dead
engine — still get a proper 4xx / 503 status instead of a 200 with an error event. Errors after
that are sent as one `data: {"error": {...}}` event before `[DONE]`.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Optional

from starlette.requests import Request
from starlette.responses import StreamingResponse

from lmlang.runtime.server.errors import as_json, error_body, map_exception
from lmlang.runtime.server.generation import until_disconnected

DONE = "data: [DONE]\n\n"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(obj: Any) -> str:
    return f"data: {as_json(obj)}\n\n"


async def start_stream(request: Request, items: AsyncIterator[Any],
                       render: Callable[[Any], AsyncIterator[str]],
                       finish: Optional[Callable[[], AsyncIterator[str]]] = None) -> StreamingResponse:
    """An SSE response over `items`, each turned into events by `render`, then `finish`, then
    `[DONE]`. The first item is awaited here; a failure before it raises (-> an HTTP error)."""
    first = await until_disconnected(request, _anext(items))

    async def body() -> AsyncIterator[str]:
        try:
            if first is not _END:
                async for line in render(first):
                    yield line
                async for item in items:
                    async for line in render(item):
                        yield line
                if finish is not None:
                    async for line in finish():
                        yield line
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the status line is sent already: report in the stream
            err = map_exception(exc)
            yield event(error_body(err.status, err.message))
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        yield DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers=_HEADERS)


_END = object()


async def _anext(items: AsyncIterator[Any]) -> Any:
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return _END
