"""Llama 2/3 and Mistral, and the decoder building blocks Qwen2/Qwen3 reuse.

A family that differs from Llama only in biases or per-head q/k norms subclasses
`LlamaForCausalLM` and overrides `layer_options`; one whose feed-forward differs (MoE) also
overrides `make_mlp`. Not implemented: Mistral's / Qwen2's
sliding-window attention (`sliding_window` is ignored, so contexts longer than the window
attend to everything — exact for prompts within the window), and activations other than SiLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from lmlang.runtime.forward_batch import ForwardBatch
from lmlang.runtime.layers.activation import SiluAndMul
from lmlang.runtime.layers.attention import Attention
from lmlang.runtime.layers.linear import Linear, StackedLinear
from lmlang.runtime.layers.norm import RMSNorm
from lmlang.runtime.layers.rotary import RotaryEmbedding, get_rope, rope_parameters
from lmlang.runtime.models.base import KVCacheSpec
from lmlang.runtime.models.decoder import DecoderForCausalLM, DecoderModel, PreNormDecoderLayer
from lmlang.runtime.models.registry import register_model
from lmlang.runtime.models.weight_mapping import StackedParam, load_weights_by_table


@dataclass(frozen=True)
class LayerOptions:
    """How a Llama-like family's decoder layer differs from plain Llama."""

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before rope (Qwen3)


@dataclass(frozen=True)
class AttentionShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> "AttentionShape":
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return cls(num_heads, getattr(config, "num_key_value_heads", None) or num_heads, head_dim)


STACKED_PARAMS = (
    StackedParam(".q_proj.", ".qkv_proj.", "q"),
    StackedParam(".k_proj.", ".qkv_proj.", "k"),
    StackedParam(".v_proj.", ".qkv_proj.", "v"),
    StackedParam(".gate_proj.", ".gate_up_proj.", 0),
    StackedParam(".up_proj.", ".gate_up_proj.", 1),
)


def make_rope(config: Any, head_dim: int) -> RotaryEmbedding:
    base, scaling, partial_rotary_factor = rope_parameters(config)
    return get_rope(head_dim, int(head_dim * partial_rotary_factor), config.max_position_embeddings, base, scaling)


class LlamaAttention(nn.Module):
    def __init__(self, config: Any, layer_id: int, options: LayerOptions, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        shape = AttentionShape.from_config(config)
        self.shape = shape
        q_size, kv_size = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        self.qkv_proj = StackedLinear(config.hidden_size, {"q": q_size, "k": kv_size, "v": kv_size}, options.qkv_bias)
        self.o_proj = Linear(q_size, config.hidden_size, options.o_bias)
        if options.qk_norm:
            self.q_norm = RMSNorm(shape.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(shape.head_dim, config.rms_norm_eps)
        self.qk_norm = options.qk_norm
        self.rotary_emb = rotary_emb
        self.attn = Attention(shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.head_dim**-0.5, layer_id)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.split_sizes, dim=-1)
        q = q.reshape(-1, self.shape.num_heads, self.shape.head_dim)  # [n, num_heads, head_dim]
        k = k.reshape(-1, self.shape.num_kv_heads, self.shape.head_dim)  # [n, num_kv_heads, head_dim]
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.o_proj(self.attn(q, k, v, batch, self.rotary_emb, positions))  # [n, hidden]


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, hidden_act: str) -> None:
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {hidden_act!r}; only 'silu' is implemented")
        self.gate_up_proj = StackedLinear(hidden_size, {0: intermediate_size, 1: intermediate_size}, bias)
        self.act_fn = SiluAndMul()
        self.down_proj = Linear(intermediate_size, hidden_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, hidden]
        # (gating inside the down projection's GEMV was measured slower at batch 1: 37.1 vs 30.7 us)
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(PreNormDecoderLayer):
    """Pre-norm block of `LlamaAttention` and a feed-forward (`LlamaMLP` unless `mlp` is given)."""

    def __init__(
        self, config: Any, layer_id: int, options: LayerOptions, rotary_emb: RotaryEmbedding,
        mlp: Optional[nn.Module] = None,
    ) -> None:
        self_attn = LlamaAttention(config, layer_id, options, rotary_emb)
        if mlp is None:
            mlp = LlamaMLP(config.hidden_size, config.intermediate_size, options.mlp_bias, config.hidden_act)
        # a family's `make_mlp` may supply another feed-forward (MoE)
        super().__init__(config, self_attn, mlp)


class LlamaModel(DecoderModel):
    def __init__(
        self, config: Any, options: LayerOptions, make_mlp: Optional[Callable[[int], Optional[nn.Module]]] = None
    ) -> None:
        rotary_emb = make_rope(config, AttentionShape.from_config(config).head_dim)  # one cache, shared by layers
        super().__init__(config, (
            LlamaDecoderLayer(config, i, options, rotary_emb, make_mlp(i) if make_mlp else None)
            for i in range(config.num_hidden_layers)
        ))


@register_model("LlamaForCausalLM", "MistralForCausalLM")
class LlamaForCausalLM(DecoderForCausalLM):
    stacked_params = STACKED_PARAMS

    def __init__(self, config: Any) -> None:
        super().__init__(config, LlamaModel(config, self.layer_options(config), lambda i: self.make_mlp(config, i)))

    @classmethod
    def layer_options(cls, config: Any) -> LayerOptions:
        bias = bool(getattr(config, "attention_bias", False))
        return LayerOptions(qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(config, "mlp_bias", False)))

    @classmethod
    def make_mlp(cls, config: Any, layer_id: int) -> Optional[nn.Module]:
        """The feed-forward block of layer `layer_id`; None: the dense `LlamaMLP`. MoE families override."""
        return None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_weights_by_table(self, weights, self.stacked_params, self.ignored_weight_names())

    def kv_cache_spec(self) -> KVCacheSpec:
        shape = AttentionShape.from_config(self.config)
        return KVCacheSpec(self.config.num_hidden_layers, shape.num_kv_heads, shape.head_dim, shape.head_dim)
