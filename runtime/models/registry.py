"""Hugging Face architecture name (`config.architectures[0]`) -> model class.

Family modules register themselves with `@register_model("LlamaForCausalLM", ...)`;
`get_model_class` imports every module of this package once, so a new family file is picked
up without editing a list here.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Optional, Sequence

MODEL_REGISTRY: dict[str, type] = {}
_imported = False


def register_model(*architectures: str) -> Callable[[type], type]:
    """Class decorator registering a model class under one or more architecture names."""

    def deco(cls: type) -> type:
        for arch in architectures:
            if arch in MODEL_REGISTRY and MODEL_REGISTRY[arch] is not cls:
                raise ValueError(f"architecture {arch!r} is already registered to {MODEL_REGISTRY[arch].__name__}")
            MODEL_REGISTRY[arch] = cls
        return cls

    return deco


def _import_families() -> None:
    global _imported
    if _imported:
        return
    import lmlang.runtime.models as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _imported = True


def supported_architectures() -> list[str]:
    _import_families()
    return sorted(MODEL_REGISTRY)


def get_model_class(architectures: Optional[Sequence[str]]) -> type:
    """The class for a config's `architectures` list (its first entry decides)."""
    _import_families()
    if not architectures:
        raise ValueError("the model config names no architecture (config.architectures is empty)")
    arch = architectures[0]
    if arch not in MODEL_REGISTRY:
        raise ValueError(f"unsupported model architecture {arch!r}; supported: {', '.join(sorted(MODEL_REGISTRY))}")
    return MODEL_REGISTRY[arch]
