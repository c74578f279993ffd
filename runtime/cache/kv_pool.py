"""Device memory for the KV cache: one buffer per layer, indexed by slot.

Slot 0 is the dummy slot: padded rows (CUDA-graph padding, masked-out tokens) write there and
nothing ever reads it. The allocator hands out slots 1..num_slots.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class KVPool(ABC):
    """Per-layer KV storage. Invariant: buffers have `num_slots + 1` rows (row 0 = dummy)."""

    num_slots: int

    @abstractmethod
    def store(self, layer_id: int, loc: torch.Tensor, *kv: torch.Tensor) -> None:
        """Writes the new tokens' cache entries at slots `loc` ([num_tokens] int64)."""

    @abstractmethod
    def bytes_per_slot(self) -> int:
        """Bytes of KV one token takes over all layers."""


class MHAKVPool(KVPool):
    """K and V per layer: `[num_slots + 1, num_kv_heads, head_dim]` each."""

    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        v_head_dim: int | None = None,
    ) -> None:
        self.num_slots = num_slots
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.v_head_dim = v_head_dim or head_dim
        self.dtype = dtype
        self.k_buffer = [
            torch.zeros(num_slots + 1, num_kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)
        ]
        self.v_buffer = [
            torch.zeros(num_slots + 1, num_kv_heads, self.v_head_dim, dtype=dtype, device=device)
            for _ in range(num_layers)
        ]

    def store(self, layer_id: int, loc: torch.Tensor, *kv: torch.Tensor) -> None:
        k, v = kv  # [num_tokens, num_kv_heads, head_dim]
        self.k_buffer[layer_id][loc] = k.to(self.dtype)
        self.v_buffer[layer_id][loc] = v.to(self.dtype)

    def bytes_per_slot(self) -> int:
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return self.num_layers * self.num_kv_heads * (self.head_dim + self.v_head_dim) * elem
