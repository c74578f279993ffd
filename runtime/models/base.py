"""What every model family implements, and the KV-cache shape it asks of the runtime.

Invariants of a `CausalLM`:
- `__init__(config)` only allocates: parameters are uninitialised until `load_weights` (or the
  loader's dummy fill) runs; construction follows the ambient default device and dtype.
- `forward(batch)` reads `batch.input_ids` and `batch.positions` ([num_tokens], ragged over
  the batch's sequences) and returns the final-norm hidden state of every new token,
  [num_tokens, hidden_size]. Attention goes through `batch.attn_backend`, which the caller
  has `plan`ned for this batch; K/V of the new tokens are written at `batch.out_cache_loc`.
- `compute_logits(hidden)` maps [n, hidden_size] to float32 [n, vocab_size]; the runner
  calls it only on the rows it samples from.
- `load_weights(weights)` accepts Hugging Face checkpoint names; every parameter must be
  covered, and an unknown name is an error (see `weight_mapping.load_weights_by_table`).
- `kv_cache_spec()` tells the runtime how to size the KV pool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from lmlang.runtime.forward_batch import ForwardBatch


@dataclass(frozen=True)
class KVCacheSpec:
    """Per-token KV cache layout: `num_layers` x (K: [num_kv_heads, head_dim], V: [num_kv_heads, v_head_dim])."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int


class CausalLM(nn.Module, ABC):
    """A decoder-only language model served by the runtime (see the module docstring)."""

    @abstractmethod
    def forward(self, batch: ForwardBatch) -> torch.Tensor:  # [num_tokens, hidden_size]
        ...

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, vocab_size] float32
        ...

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    @abstractmethod
    def kv_cache_spec(self) -> KVCacheSpec: ...
