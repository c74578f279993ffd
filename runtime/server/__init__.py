"""The HTTP front end (`lmlang serve`): native, OpenAI-compatible and metrics endpoints.

    create_app(engine, *, api_key=None, served_model_name=None, max_body_bytes=...)  # http.py
    serve(engine, *, host="127.0.0.1", port=30000, ...)       # launch.py: run until SIGTERM / Ctrl-C
    BackgroundServer(engine, port=0, ...)                      # launch.py: serve from a thread

Imported lazily, so `import lmlang.runtime.server` does not pull in FastAPI or uvicorn.
"""

import importlib
from typing import Any

_EXPORTS = {"create_app": ".http", "serve": ".launch", "BackgroundServer": ".launch"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmlang.runtime.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
