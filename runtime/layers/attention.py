"""The attention layer: shapes q/k/v per head and hands them to the batch's backend."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lmlang.runtime.attention.compiled_op import attention_op
from lmlang.runtime.forward_batch import ForwardBatch


class Attention(nn.Module):
    """Multi-head / grouped-query attention over the KV cache of one layer.

    Holds no weights. `forward` takes q: [n, num_heads * head_dim], k: [n, num_kv_heads *
    head_dim], v: [n, num_kv_heads * v_head_dim] (or the same already split per head) and
    returns [n, num_heads * v_head_dim]. Storing k/v at `batch.out_cache_loc` and attending
    over each sequence's context is the backend's job (`AttentionBackend.forward`); under
    `torch.compile` the call goes through the opaque op `torch.ops.lmlang.attention`
    (`runtime/attention/compiled_op.py`), which the runner binds to the batch being run.
    """

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float, layer_id: int,
        v_head_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.v_head_dim = v_head_dim or head_dim
        self.scaling = scaling
        self.layer_id = layer_id

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch,
        rotary: Optional[nn.Module] = None, positions: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """With `rotary` (a `RotaryEmbedding`) and `positions` ([n]), q and k are rotated first,
        inside the backend's kernels where it can (`AttentionBackend.forward_rope`)."""
        q = q.reshape(-1, self.num_heads, self.head_dim)  # [n, num_heads, head_dim]
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)  # [n, num_kv_heads, head_dim]
        v = v.reshape(-1, self.num_kv_heads, self.v_head_dim)  # [n, num_kv_heads, v_head_dim]
        if torch.compiler.is_compiling():
            if rotary is not None:
                q, k = rotary(positions, q, k)  # the compiler fuses the torch rotary code
            out = attention_op(q, k, v, self.layer_id, self.scaling)
        elif rotary is not None:
            out = batch.attn_backend.forward_rope(q, k, v, self.layer_id, self.scaling, batch, rotary, positions)
        else:
            out = batch.attn_backend.forward(q, k, v, self.layer_id, self.scaling, batch)
        return out.reshape(-1, self.num_heads * self.v_head_dim)

    def extra_repr(self) -> str:
        return (
            f"layer_id={self.layer_id}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, v_head_dim={self.v_head_dim}"
        )
