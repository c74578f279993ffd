"""Backends a program runs against, and the process-wide default.

`Engine` (in-process runtime), `RuntimeEndpoint` (an lmlang server) and `OpenAI` (any
OpenAI-compatible API) are imported lazily so that `import lmlang` stays free of their
dependencies.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Optional

_EXPORTS = {
    "Backend": ".base",
    "Engine": ".engine",
    "RuntimeEndpoint": ".runtime_endpoint",
    "OpenAI": ".openai_backend",
}
_default: Optional[Any] = None
_default_lock = threading.Lock()


def set_default_backend(backend: Any) -> None:
    """Makes `backend` the one `run` uses when given none (None clears it)."""
    from lmlang.backends.base import Backend

    if backend is not None and not isinstance(backend, Backend):
        raise TypeError(f"set_default_backend needs an lmlang backend (ll.Engine, ll.RuntimeEndpoint, ll.OpenAI), got {type(backend).__name__}")
    global _default
    with _default_lock:
        _default = backend


def get_default_backend() -> Optional[Any]:
    return _default


def resolve_backend(backend: Any = None) -> Any:
    """`backend`, else the default set by `set_default_backend`, else the embedded default model
    (DESIGN §7: a tiny built-in engine, made on first use, which says once what it is)."""
    from lmlang.backends.base import Backend

    chosen = backend if backend is not None else _default
    if chosen is None:
        from lmlang.default_backend import get_embedded_default_engine

        chosen = get_embedded_default_engine()
    if not isinstance(chosen, Backend):
        raise TypeError(f"backend must be an lmlang backend (ll.Engine, ll.RuntimeEndpoint, ll.OpenAI), got {type(chosen).__name__}")
    return chosen


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmlang.backends' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
