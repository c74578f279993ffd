"""Named implementations of one interface, registered by a class decorator.

An implementation lives in a module named after it (`module_pattern.format(name=...)`), which
is imported on first use, so optional dependencies (flashinfer, ...) load only when chosen.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
    def __init__(self, what: str, module_pattern: str) -> None:
        self.what = what  # e.g. "attention backend", for error messages
        self.module_pattern = module_pattern
        self._classes: dict = {}

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            self._classes[name] = cls
            return cls

        return deco

    def get(self, name: str) -> type:
        """The class registered as `name`; `ValueError` naming the known ones otherwise."""
        if name not in self._classes:
            try:
                importlib.import_module(self.module_pattern.format(name=name.replace("-", "_")))
            except ModuleNotFoundError as e:
                if name.replace("-", "_") not in str(e):  # the module exists but lacks a dependency
                    raise ValueError(f"{self.what} {name!r} is not available: {e}") from e
            except ImportError as e:
                raise ValueError(f"{self.what} {name!r} is not available: {e}") from e
        if name not in self._classes:
            raise ValueError(f"unknown {self.what} {name!r}; known: {sorted(self._classes)}")
        return self._classes[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)
