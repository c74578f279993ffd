"""Multi-head latent attention (DeepSeek-V2/V3): projections, rope, latent cache, two attention forms.

Data path for n new tokens (H heads, nope dim D, rope dim P, value dim V, latent rank R):
  q         = q_proj(x)  or  q_b_proj(rms(q_a_proj(x)))           # [n, H, D + P]
  c, kr     = kv_a_proj_with_mqa(x) split [R, P]; c = rms(c)       # [n, R], [n, P]
  q_rope, kr = rope(positions, q_rope, kr)                         # rope on the P features only
  pool[out_cache_loc] = [c | kr]                                   # the whole per-token cache
  attention: expanded (prefill) or absorbed (decode), see `runtime/attention/mla.py`
  (on CUDA, rms(c), the rope and the pool write are one launch: `rotate_and_store_mla`)
  out       = o_proj(attn)                                         # [n, hidden]

The absorbed form needs W_UK and W_UV per head as dense matrices (`w_kc`, `w_vc`), derived from
`kv_b_proj` once the weights are final (`process_weights_after_loading`, called by the model
loader after loading and after any quantization transformation; a quantized `kv_b_proj` is
dequantized for this, as its `dequantized_weight()` gives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from lmlang.runtime.attention.base import rotate_and_store_mla
from lmlang.runtime.attention.mla import mla_absorbed, mla_expanded
from lmlang.runtime.forward_batch import ForwardBatch
from lmlang.runtime.layers.linear import Linear, StackedLinear
from lmlang.runtime.layers.norm import RMSNorm
from lmlang.runtime.layers.rotary import RotaryEmbedding
from lmlang.runtime.models.weight_mapping import StackedParam

LORA_NORM_EPS = 1e-6  # q_a_layernorm / kv_a_layernorm use the default eps, not config.rms_norm_eps


@dataclass(frozen=True)
class MLAShape:
    hidden_size: int
    num_heads: int
    q_lora_rank: Optional[int]  # None: one q_proj, no low-rank query
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def q_in_width(self) -> int:
        """Output width of the first query projection: q_a_proj's rank, or q_proj's heads x dims."""
        return self.q_lora_rank if self.q_lora_rank is not None else self.num_heads * self.qk_head_dim

    @property
    def kv_a_width(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    @classmethod
    def from_config(cls, config: Any) -> "MLAShape":
        return cls(
            config.hidden_size, config.num_attention_heads, getattr(config, "q_lora_rank", None),
            config.kv_lora_rank, config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim,
        )


def fused_qkv_a_params() -> list[StackedParam]:
    """Checkpoint rows of `MLAAttention(fused_qkv_a=True)`: q_proj / q_a_proj and
    kv_a_proj_with_mqa into the shards of `fused_qkv_a_proj_with_mqa`."""
    target = ".self_attn.fused_qkv_a_proj_with_mqa."
    return [
        StackedParam(".self_attn.q_proj.", target, "q"),
        StackedParam(".self_attn.q_a_proj.", target, "q_a"),
        StackedParam(".self_attn.kv_a_proj_with_mqa.", target, "kv_a"),
    ]


FUSED_QKV_A_ALIGN = 128  # rows of DeepSeek's FP8 weight blocks (and of online quantization's)


def can_fuse_qkv_a(shape: MLAShape, bias: bool, fp8_block_rows: Optional[int]) -> bool:
    """Whether `MLAAttention(fused_qkv_a=True)` holds this layer. q_proj has no bias, so with
    `attention_bias` only the q_a_proj layout stacks. The kv_a shard must start on a weight-block
    row, so that block scales stack (an FP8 checkpoint's `fp8_block_rows`, None when it is not
    block-quantized) and online quantization puts no block across the two projections: true of
    the released models (q_a 1536 rows, V2-Lite's q 3072), not of every tiny test config."""
    if bias and shape.q_lora_rank is None:
        return False
    return all(shape.q_in_width % rows == 0 for rows in (FUSED_QKV_A_ALIGN, fp8_block_rows or 1))


def dense_weight(linear: nn.Module) -> torch.Tensor:
    """A linear layer's weight [out, in] in high precision, whether or not it was quantized."""
    dequantize = getattr(linear, "dequantized_weight", None)
    return dequantize() if dequantize is not None else linear.weight


class MLAAttention(nn.Module):
    """One MLA layer (see the module docstring). `forward` picks the absorbed form for decode
    batches and the expanded form otherwise, unless `absorbed` says which."""

    def __init__(
        self, shape: MLAShape, layer_id: int, rotary_emb: RotaryEmbedding, scaling: float, bias: bool = False,
        fused_qkv_a: bool = False,
    ) -> None:
        """`fused_qkv_a`: q_proj (or q_a_proj) and kv_a_proj_with_mqa, which read the same hidden
        states, run as one stacked projection `fused_qkv_a_proj_with_mqa` (shards "q" or "q_a",
        then "kv_a"; see `fused_qkv_a_params` for the checkpoint names)."""
        super().__init__()
        self.shape = shape
        self.layer_id = layer_id
        self.rotary_emb = rotary_emb
        self.scaling = scaling
        self.fused_qkv_a = fused_qkv_a
        h = shape.num_heads
        q_bias = bias and shape.q_lora_rank is not None  # q_proj has no bias in any DeepSeek config
        if fused_qkv_a:
            if bias and not q_bias:
                raise ValueError("fused_qkv_a needs q_proj and kv_a_proj_with_mqa to agree on a bias")
            q_shard = "q" if shape.q_lora_rank is None else "q_a"
            self.fused_qkv_a_proj_with_mqa = StackedLinear(
                shape.hidden_size, {q_shard: shape.q_in_width, "kv_a": shape.kv_a_width}, bias)
        elif shape.q_lora_rank is None:
            self.q_proj = Linear(shape.hidden_size, shape.q_in_width)
        else:
            self.q_a_proj = Linear(shape.hidden_size, shape.q_lora_rank, bias)
        if shape.q_lora_rank is not None:
            self.q_a_layernorm = RMSNorm(shape.q_lora_rank, LORA_NORM_EPS)
            self.q_b_proj = Linear(shape.q_lora_rank, h * shape.qk_head_dim)
        if not fused_qkv_a:
            self.kv_a_proj_with_mqa = Linear(shape.hidden_size, shape.kv_a_width, bias)
        self.kv_a_layernorm = RMSNorm(shape.kv_lora_rank, LORA_NORM_EPS)
        self.kv_b_proj = Linear(shape.kv_lora_rank, h * (shape.qk_nope_head_dim + shape.v_head_dim))
        self.o_proj = Linear(h * shape.v_head_dim, shape.hidden_size, bias)
        # derived from kv_b_proj after loading; not checkpoint parameters
        self.register_buffer("w_kc", torch.empty(h, shape.qk_nope_head_dim, shape.kv_lora_rank), persistent=False)
        self.register_buffer("w_vc", torch.empty(h, shape.kv_lora_rank, shape.v_head_dim), persistent=False)

    @torch.no_grad()
    def process_weights_after_loading(self) -> None:
        """Splits kv_b_proj ([H * (D + V), R]) into W_UK as `w_kc` [H, D, R] and W_UV^T as `w_vc` [H, R, V]."""
        s = self.shape
        w = dense_weight(self.kv_b_proj).view(s.num_heads, s.qk_nope_head_dim + s.v_head_dim, s.kv_lora_rank)
        w_uk, w_uv = w.split([s.qk_nope_head_dim, s.v_head_dim], dim=1)
        dtype = self.kv_a_layernorm.weight.dtype  # the model's dtype (norms are never quantized)
        self.w_kc = w_uk.to(dtype).contiguous()
        self.w_vc = w_uv.transpose(1, 2).to(dtype).contiguous()

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch, absorbed: Optional[bool] = None
    ) -> torch.Tensor:  # [n, hidden_size]
        s = self.shape
        if self.fused_qkv_a:
            q, kv_a = self.fused_qkv_a_proj_with_mqa(hidden).split([s.q_in_width, s.kv_a_width], dim=-1)
        else:
            q = self.q_proj(hidden) if s.q_lora_rank is None else self.q_a_proj(hidden)
            kv_a = self.kv_a_proj_with_mqa(hidden)  # [n, R + P]
        if s.q_lora_rank is not None:
            q = self.q_b_proj(self.q_a_layernorm(q))
        q = q.view(-1, s.num_heads, s.qk_head_dim)  # [n, H, D + P]
        q_nope, q_rope = q.split([s.qk_nope_head_dim, s.qk_rope_head_dim], dim=-1)
        latent, k_rope = kv_a.split([s.kv_lora_rank, s.qk_rope_head_dim], dim=-1)
        kv_buffer = batch.kv_pool.kv_buffer[self.layer_id]
        k_rope = k_rope.unsqueeze(1)  # [n, 1, P]
        # the normalized latent only goes to the cache (both forms read it from there)
        rotated_q_rope = rotate_and_store_mla(q_rope, k_rope, latent, kv_buffer, batch.out_cache_loc, self.rotary_emb,
                                              positions, self.kv_a_layernorm)
        if rotated_q_rope is not None:
            q_rope = rotated_q_rope  # [n, H, P]
        else:
            q_rope, k_rope = self.rotary_emb(positions, q_rope, k_rope)  # [n, H, P], [n, 1, P]
            batch.kv_pool.store(self.layer_id, batch.out_cache_loc, self.kv_a_layernorm(latent), k_rope)  # [n, R]
        if absorbed is None:
            absorbed = batch.mode.is_decode
        if absorbed:
            q_latent = torch.bmm(q_nope.transpose(0, 1), self.w_kc).transpose(0, 1)  # [n, H, R]
            out_latent = mla_absorbed(q_latent, q_rope.contiguous(), kv_buffer, self.scaling, batch)  # [n, H, R]
            out = torch.bmm(out_latent.transpose(0, 1), self.w_vc).transpose(0, 1)  # [n, H, V]
        else:
            out = mla_expanded(q_nope, q_rope, kv_buffer, self.kv_b_proj, s.v_head_dim, self.scaling, batch)
        return self.o_proj(out.reshape(-1, s.num_heads * s.v_head_dim))

    def extra_repr(self) -> str:
        s = self.shape
        return (
            f"layer_id={self.layer_id}, heads={s.num_heads}, q_lora_rank={s.q_lora_rank}, kv_lora_rank={s.kv_lora_rank}, "
            f"qk_nope={s.qk_nope_head_dim}, qk_rope={s.qk_rope_head_dim}, v={s.v_head_dim}"
        )
