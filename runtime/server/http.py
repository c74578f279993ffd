"""The HTTP app of `lmlang serve`: `create_app(engine)` builds it around a running `Engine`.

Endpoints (all JSON unless noted):

| route | what |
|---|---|
| `POST /generate` | native, SGLang's request and response fields; `stream` gives SSE |
| `POST /v1/completions`, `POST /v1/chat/completions` | OpenAI-compatible (SSE when `stream`) |
| `GET /v1/models`, `GET /v1/models/{name}` | the served model |
| `GET /model_info` | model path, served name, context length, vocab size, chat template, bos/eos |
| `POST /abort_request` | aborts a request by id (`{"rid": ...}`) |
| `POST /tokenize`, `POST /detokenize` | the server's tokenizer |
| `POST /flush_cache` | empties the prefix cache |
| `GET /health` | 200, or 503 once the engine core died |
| `GET /stats` | the engine's counters (`Engine.stats()`) as JSON |
| `GET /metrics` | Prometheus text |

`POST /program` is not part of this app: the language package mounts it (`lmlang serve` does),
since the runtime never imports the language.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import Response

from lmlang.runtime.server.context import ServerContext, default_served_name, engine_model_path
from lmlang.runtime.server.errors import install_error_handlers
from lmlang.runtime.server.generation import ClientGone
from lmlang.runtime.server.middleware import GuardMiddleware
from lmlang.runtime.server.native_routes import router as native_router
from lmlang.runtime.server.openai_routes import router as openai_router

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def create_app(engine: Any, *, api_key: Optional[str] = None, served_model_name: Optional[str] = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """An ASGI app serving `engine` (an `lmlang.runtime.Engine`, used from the app's event loop).

    `api_key`: when set, every route but `/health` needs `Authorization: Bearer <api_key>` (else
    401). `served_model_name`: the name OpenAI requests use (default: the model path).
    `max_body_bytes`: larger request bodies get a 413. The app does not own the engine: whoever
    made the engine shuts it down (`lmlang.runtime.server.launch.serve` does so on exit).
    """
    if max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be > 0, got {max_body_bytes}")
    if api_key is not None and not api_key:
        raise ValueError("api_key must not be empty (pass None for no key)")
    name = served_model_name or default_served_name(engine_model_path(engine) or "model")
    ctx = ServerContext(engine=engine, served_model_name=name)
    app = FastAPI(title="lmlang", summary="lmlang runtime server", docs_url="/docs", redoc_url=None)
    app.state.ctx = ctx
    install_error_handlers(app)

    @app.exception_handler(ClientGone)
    async def _client_gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it: the client is gone

    app.include_router(native_router)
    app.include_router(openai_router)
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes,
                       on_request=ctx.metrics.count_http)
    return app
