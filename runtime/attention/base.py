"""The attention backend interface.

A backend is created once per model runner. Per forward, `plan(batch)` runs once (index
arithmetic, kernel planning), then `forward(...)` runs per layer. Invariant: `forward` first
stores the new tokens' K/V at `batch.out_cache_loc`, then computes, for every new token, causal
attention over its sequence's context `batch.kv_indices[kv_indptr[i]:kv_indptr[i+1]]` (plus
`batch.custom_mask` where given). The output has the query's layout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lmlang.runtime.forward_batch import ForwardBatch


class AttentionBackend(ABC):
    @abstractmethod
    def plan(self, batch: ForwardBatch) -> None:
        """Prepares per-forward metadata; called once before the layers run."""

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, v_head_dim]
        layer_id: int,
        scaling: float,
        batch: ForwardBatch,
    ) -> torch.Tensor:  # [num_tokens, num_heads, v_head_dim]
        """Stores k/v in the pool, then attends."""


_BACKENDS: dict = {}


def register_backend(name: str):
    def deco(cls):
        _BACKENDS[name] = cls
        return cls

    return deco


def create_backend(name: str, **kwargs) -> AttentionBackend:
    if name not in _BACKENDS:
        # importing the module registers it
        import importlib

        try:
            importlib.import_module(f"lmlang.runtime.attention.{name}_backend")
        except ImportError as e:
            raise ValueError(f"attention backend {name!r} is not available: {e}") from e
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {sorted(_BACKENDS)}")
    return _BACKENDS[name](**kwargs)
