"""The background event loop that runs program streams (one daemon thread per process).

Program code runs in the caller's thread and appends nodes; the streams that execute them are
asyncio tasks on this loop, so that one thread multiplexes every program of a `run_batch` and
the backends can batch what the streams submit together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine, Optional

_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The background loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="lmlang-streams", daemon=True).start()
            ready.wait()
            _loop = loop
        return _loop


def submit(coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
    """Runs `coro` on the background loop; the future completes with its result."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the calling thread is running `loop`."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
