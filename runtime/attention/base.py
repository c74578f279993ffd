"""The attention backend interface.

A backend is created once per model runner. Per forward, `plan(batch)` runs once (index
arithmetic, kernel planning), then `forward(...)` runs per layer. Invariant: `forward` first
stores the new tokens' K/V at `batch.out_cache_loc`, then computes, for every new token, causal
attention over its sequence's context `batch.kv_indices[kv_indptr[i]:kv_indptr[i+1]]` (plus
`batch.custom_mask` where given). The output has the query's layout.

CUDA graphs (backends with `supports_cuda_graph`): `init_cuda_graph` allocates, once, the static
metadata buffers a captured decode forward reads; `plan_cuda_graph(batch)` plans a DECODE batch
whose size is a captured bucket into those buffers (before the capture, and again before every
replay), after which `forward` must read only static buffers and launch a grid that depends on
the batch size alone. A later `plan` returns the backend to eager mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch

from lmlang.runtime.forward_batch import ForwardBatch
from lmlang.runtime.layers.dispatch import use_kernels
from lmlang.runtime.registry import Registry


@dataclass(frozen=True)
class AttentionSpec:
    """The attention shape shared by every layer of a model: what a backend plans with."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    scaling: float


class AttentionBackend(ABC):
    supports_cuda_graph: bool = False
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

    def forward_rope(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, scaling: float,
        batch: ForwardBatch, rotary: torch.nn.Module, positions: torch.Tensor,
    ) -> torch.Tensor:  # [num_tokens, num_heads, v_head_dim]
        """`forward` with q and k first rotated by `rotary` (a `RotaryEmbedding`) at `positions`
        ([num_tokens]). Backends that can rotate inside their KV store or attention kernel (one
        launch fewer per layer) override this; the result is the same."""
        q, k = rotary(positions, q, k)
        return self.forward(q, k, v, layer_id, scaling, batch)

    def init_cuda_graph(self, max_batch_size: int, max_kv_indices: int) -> None:
        """Allocates the static buffers for decode graphs of up to `max_batch_size` sequences
        whose contexts hold up to `max_kv_indices` slots in all."""
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")

    def plan_cuda_graph(self, batch: ForwardBatch) -> None:
        """Plans a DECODE batch of a captured bucket size into the static buffers (see module doc)."""
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")


def rotate_and_store(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
    loc: torch.Tensor, rotary: torch.nn.Module, positions: torch.Tensor,
) -> Optional[torch.Tensor]:
    """Rotates q and k by `rotary` and stores the rotated k and v at `loc` in one kernel launch;
    returns the rotated q, or None (nothing done) where that kernel does not apply (CPU tensors,
    mixed dtypes, torch.compile tracing): then rotate and store separately."""
    if not (use_kernels(q) and q.dtype == k.dtype):
        return None
    from lmlang.kernels.rotary import rotary_and_store_kv

    q, _ = rotary_and_store_kv(q, k, v, positions, rotary.cos_sin_cache, k_buffer, v_buffer, loc,
                               is_neox=rotary.is_neox_style)
    return q


def rotate_and_store_mla(
    q_rope: torch.Tensor, k_rope: torch.Tensor, kv_latent: torch.Tensor, kv_buffer: torch.Tensor,
    loc: torch.Tensor, rotary: torch.nn.Module, positions: torch.Tensor, latent_norm: torch.nn.Module,
) -> Optional[torch.Tensor]:
    """`rotate_and_store` for an MLA latent pool: rotates q_rope ([n, H, P]) and k_rope ([n, 1, P])
    and stores `[latent_norm(kv_latent) | rotated k_rope]` at `loc` in one launch (`latent_norm`:
    the layer's `RMSNorm`); returns the rotated q_rope, or None where that kernel does not apply
    (then normalize, rotate and store separately)."""
    if not (use_kernels(q_rope) and q_rope.dtype == k_rope.dtype == kv_latent.dtype == latent_norm.weight.dtype):
        return None
    from lmlang.kernels.rotary import rotary_and_store_mla_kv

    q_rope, _ = rotary_and_store_mla_kv(q_rope, k_rope, kv_latent, positions, rotary.cos_sin_cache, kv_buffer, loc,
                                        is_neox=rotary.is_neox_style,
                                        latent_norm=(latent_norm.weight, latent_norm.eps))
    return q_rope


BACKENDS = Registry("attention backend", "lmlang.runtime.attention.{name}_backend")
register_backend = BACKENDS.register


def create_backend(name: str, **kwargs) -> AttentionBackend:
    return BACKENDS.create(name, **kwargs)
