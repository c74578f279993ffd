"""The latent KV pool of multi-head latent attention (MLA, DeepSeek-V2/V3).

MLA caches, per token and layer, one row shared by all heads: the normalised compressed KV
(`kv_lora_rank` features) followed by the rotated rope key (`qk_rope_head_dim` features). Keys
and values of every head are derived from it (expanded form) or never materialised (absorbed
form), so the pool is `kv_lora_rank + qk_rope_head_dim` wide instead of
`num_heads * (qk_head_dim + v_head_dim)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlang.runtime.cache.kv_pool import KVPool


@dataclass(frozen=True)
class MLAKVCacheSpec:
    """Per-token latent cache layout: `num_layers` x [1, kv_lora_rank + qk_rope_head_dim].

    The runner calls `make_pool` instead of building an MHA pool. `num_kv_heads`, `head_dim`
    and `v_head_dim` describe the same row in MHA terms (one shared "head" whose key is the
    whole row and whose value is its latent part) for code that only sizes memory.
    `attention_backend` names the backend such models want ('mla': plans the layout MLA layers
    read, CUDA-graph safe).
    """

    num_layers: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    attention_backend = "mla"

    @property
    def num_kv_heads(self) -> int:
        return 1

    @property
    def head_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def v_head_dim(self) -> int:
        return self.kv_lora_rank

    def make_pool(self, num_slots: int, dtype: torch.dtype, device: torch.device | str) -> "MLAKVPool":
        return MLAKVPool(num_slots, self.num_layers, self.kv_lora_rank, self.qk_rope_head_dim, dtype, device)


class MLAKVPool(KVPool):
    """One buffer per layer, `[num_slots + 1, 1, kv_lora_rank + qk_rope_head_dim]` (row 0 = dummy)."""

    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.num_slots = num_slots
        self.num_layers = num_layers
        self.kv_lora_rank = kv_lora_rank
        self.qk_rope_head_dim = qk_rope_head_dim
        self.dtype = dtype
        width = kv_lora_rank + qk_rope_head_dim
        self.kv_buffer = [
            torch.zeros(num_slots + 1, 1, width, dtype=dtype, device=device) for _ in range(num_layers)
        ]

    def store(self, layer_id: int, loc: torch.Tensor, *kv: torch.Tensor) -> None:
        """`kv` = (kv_latent [T, kv_lora_rank], k_rope [T, qk_rope_head_dim] or [T, 1, rope]),
        written side by side into slots `loc`."""
        kv_latent, k_rope = kv
        buffer = self.kv_buffer[layer_id]
        if buffer.is_cuda:
            from lmlang.kernels.kv_store import store_mla_kv

            store_mla_kv(buffer, loc, kv_latent, k_rope)
            return
        n = loc.shape[0]
        buffer[loc, 0, : self.kv_lora_rank] = kv_latent.reshape(n, -1).to(self.dtype)
        buffer[loc, 0, self.kv_lora_rank :] = k_rope.reshape(n, -1).to(self.dtype)

    def bytes_per_slot(self) -> int:
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * elem
