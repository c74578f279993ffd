"""The lmlang runtime: engine core (scheduler, model runner, KV cache) and its front end.

`Engine` is imported lazily so that `import lmlang.runtime.protocol` never pulls torch in.
"""

from typing import Any

__all__ = ["Engine"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from lmlang.runtime.engine import Engine

        return Engine
    raise AttributeError(f"module 'lmlang.runtime' has no attribute {name!r}")
