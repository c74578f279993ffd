"""Collects requests made in the same event-loop iteration into one submission per kind.

When a fork starts its branches, each branch runs up to its first gen in the same loop
iteration; the batcher flushes after them (it schedules its flush with `call_soon`, behind the
branches' first steps), so their gens reach the engine as one list call and share the prefix.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Hashable


class SubmissionBatcher:
    """`add(key, item)` -> awaitable result; items with equal keys go out in one `submit` call.

    `submit(key, items)` returns one result per item, in order. If a call with several items
    fails, each item is retried alone so that one bad request fails only itself.
    """

    def __init__(self, submit: Callable[[Hashable, list], Awaitable[list]]) -> None:
        self._submit = submit
        self._pending: dict = {}  # loop -> {key: [(item, future)]}

    def add(self, key: Hashable, item: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = {}
            loop.call_soon(self._flush, loop)
        pending.setdefault(key, []).append((item, future))
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        for key, entries in self._pending.pop(loop, {}).items():
            live = [(item, f) for item, f in entries if not f.done()]
            if live:
                loop.create_task(self._run(key, live))

    async def _run(self, key: Hashable, entries: list) -> None:
        try:
            results = await self._submit(key, [item for item, _ in entries])
        except Exception as error:  # noqa: BLE001 - delivered to the waiting requests
            if len(entries) > 1:
                await asyncio.gather(*(self._run(key, [entry]) for entry in entries))
                return
            results, failure = None, error
        else:
            failure = None
        for i, (_, future) in enumerate(entries):
            if future.done():
                continue
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(results[i])
