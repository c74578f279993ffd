"""Runs the HTTP app with uvicorn until SIGINT / SIGTERM, then shuts the engine down.

On SIGTERM (or the first Ctrl-C) the server stops accepting connections, lets in-flight
requests (streams included) finish, shuts the engine down and returns normally, so the process
exits 0. A second Ctrl-C forces the exit.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator, Optional

import uvicorn
from fastapi import FastAPI

from lmlang.runtime.server.http import DEFAULT_MAX_BODY_BYTES, create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a handled SIGTERM / SIGINT is not re-raised on exit
    (uvicorn re-raises it, which would make the process die of the signal instead of exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(engine: Any, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: Optional[str] = None,
          served_model_name: Optional[str] = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          log_level: str = "info", configure_app: Optional[Callable[[FastAPI], None]] = None) -> None:
    """Serves `engine` over HTTP until told to stop; always shuts the engine down on return.

    `configure_app(app)` runs before serving (the CLI mounts `/program` with it).
    """
    app = create_app(engine, api_key=api_key, served_model_name=served_model_name, max_body_bytes=max_body_bytes)
    if configure_app is not None:
        configure_app(app)
    name = app.state.ctx.served_model_name

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        url = f"http://{_url_host(host)}:{port}"
        print(f"lmlang: serving {name!r} at {url}  (OpenAI base_url: {url}/v1; stop with Ctrl-C)",
              file=sys.stderr, flush=True)
        yield

    app.router.lifespan_context = lifespan
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None,
                            access_log=log_level == "debug")
    try:
        _GracefulServer(config).run()
    finally:
        engine.shutdown()


class BackgroundServer:
    """The app served from a daemon thread of this process (tests, notebooks, benchmarks).

    `port=0` picks a free port; `url` is known once `start()` returns. The engine is not shut
    down by `stop()`: it belongs to the caller. Use as a context manager.
    """

    def __init__(self, engine: Any, *, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning",
                 configure_app: Optional[Callable[[FastAPI], None]] = None, **app_args: Any) -> None:
        self.app = create_app(engine, **app_args)
        if configure_app is not None:
            configure_app(self.app)
        self.host = host
        config = uvicorn.Config(self.app, host=host, port=port, log_level=log_level, lifespan="off",
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="lmlang-http", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
