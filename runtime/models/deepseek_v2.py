"""DeepSeek-V2 and DeepSeek-V3: multi-head latent attention and DeepSeekMoE.

A decoder layer is pre-norm like Llama's, with `MLAAttention` (`runtime/layers/mla.py`, latent KV
cache, absorbed decode) and a feed-forward that is dense for the first `first_k_dense_replace`
layers and a `MoEBlock` (routed experts plus `n_shared_experts` fused into one shared MLP) after.
The two versions differ only in routing and rope layout:
- V2: softmax scores; `topk_method` "greedy" or "group_limited_greedy" (the `topk_group` best of
  `n_group` groups, a group ranked by its best expert). Rope on interleaved pairs.
- V3: sigmoid scores with `e_score_correction_bias` for the choice, groups ranked by the sum of
  their two best biased scores (DeepSeek's "noaux_tc"). Rope interleaved unless
  `rope_interleave` is false.
Both: weights renormalised when `norm_topk_prob`, then times `routed_scaling_factor`
(transformers' V2 ignores `norm_topk_prob`; the released V2 models set it false, where all
agree). YaRN rope scaling, with DeepSeek's softmax temperature `mscale(factor, mscale_all_dim)^2`.
Router weights are float32 and router logits computed in float32 (as transformers does).
Like transformers, V3 routing ignores the config's `topk_method` / `scoring_func` (always
"noaux_tc" / sigmoid), and `moe_layer_freq` (1 in every release) is honoured.

The KV pool is the latent one (`MLAKVCacheSpec`), and the spec asks for the 'mla' attention
backend, which plans the context layout MLA layers read (static buffers under CUDA graphs).
Known cost: prefill with a cached prefix (chunked prefill, prefix-cache hits) re-expands the
whole prefix through kv_b_proj every chunk; a prefix-aware MLA extend kernel would avoid it.

Checkpoint weights of the NextN / MTP layers that DeepSeek ships after the last decoder layer
(`model.layers.{num_hidden_layers + k}.*`) are skipped here; they belong to a draft model.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch
from torch import nn

from lmlang.runtime.cache.mla_pool import MLAKVCacheSpec
from lmlang.runtime.layers.mla import MLAAttention, MLAShape, can_fuse_qkv_a, fused_qkv_a_params
from lmlang.runtime.layers.moe import MoEBlock, RoutingConfig, expert_params
from lmlang.runtime.layers.rotary import RotaryEmbedding, get_rope, rope_parameters, yarn_mscale
from lmlang.runtime.models.decoder import DecoderForCausalLM, DecoderModel, PreNormDecoderLayer
from lmlang.runtime.models.llama import STACKED_PARAMS, LlamaMLP
from lmlang.runtime.models.registry import register_model
from lmlang.runtime.models.weight_mapping import load_weights_by_table
from lmlang.runtime.quantization.config import checkpoint_block_rows

V2_TOPK_METHODS = ("greedy", "group_limited_greedy")
GATE_UP_PARAMS = tuple(row for row in STACKED_PARAMS if row.param_part == ".gate_up_proj.")  # MLA stacks its own
_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")


def mla_softmax_scale(config: Any) -> float:
    """1 / sqrt(qk_head_dim), times YaRN's mscale(factor, mscale_all_dim)^2 when rope is scaled."""
    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    _, scaling, _ = rope_parameters(config)
    if scaling and scaling.get("mscale_all_dim"):
        mscale = yarn_mscale(float(scaling["factor"]), float(scaling["mscale_all_dim"]))
        scale *= mscale * mscale
    return scale


def mla_rope(config: Any, interleaved: bool) -> RotaryEmbedding:
    base, scaling, _ = rope_parameters(config)
    dim = config.qk_rope_head_dim
    return get_rope(dim, dim, config.max_position_embeddings, base, scaling, is_neox_style=not interleaved)


def fuses_qkv_a(config: Any) -> bool:
    """Whether the MLA layers stack q_proj / q_a_proj with kv_a_proj_with_mqa (`can_fuse_qkv_a`)."""
    bias = bool(getattr(config, "attention_bias", False))
    return can_fuse_qkv_a(MLAShape.from_config(config), bias, checkpoint_block_rows(config))


def is_moe_layer(config: Any, layer_id: int) -> bool:
    freq = getattr(config, "moe_layer_freq", 1) or 1
    return bool(config.n_routed_experts) and layer_id >= config.first_k_dense_replace and layer_id % freq == 0


def deepseek_mlp(config: Any, layer_id: int, routing: RoutingConfig) -> nn.Module:
    """Layer `layer_id`'s feed-forward: a dense `LlamaMLP`, or a `MoEBlock` with the shared experts
    fused into one `LlamaMLP`."""
    if not is_moe_layer(config, layer_id):
        return LlamaMLP(config.hidden_size, config.intermediate_size, False, config.hidden_act)
    shared = None
    if getattr(config, "n_shared_experts", None):
        inter = config.moe_intermediate_size * config.n_shared_experts
        shared = LlamaMLP(config.hidden_size, inter, False, config.hidden_act)
    return MoEBlock(config.hidden_size, config.moe_intermediate_size, routing, shared)


class DeepseekV2DecoderLayer(PreNormDecoderLayer):
    """Pre-norm block of `MLAAttention` and a dense or MoE feed-forward (`deepseek_mlp`)."""

    def __init__(
        self, config: Any, layer_id: int, rotary_emb: RotaryEmbedding, scaling: float, routing: RoutingConfig
    ) -> None:
        bias = bool(getattr(config, "attention_bias", False))
        self_attn = MLAAttention(MLAShape.from_config(config), layer_id, rotary_emb, scaling, bias,
                                 fused_qkv_a=fuses_qkv_a(config))
        super().__init__(config, self_attn, deepseek_mlp(config, layer_id, routing))


class DeepseekV2Model(DecoderModel):
    def __init__(self, config: Any, routing: RoutingConfig, interleaved_rope: bool) -> None:
        rotary_emb = mla_rope(config, interleaved_rope)  # one cache, shared by layers
        scaling = mla_softmax_scale(config)
        super().__init__(config, (
            DeepseekV2DecoderLayer(config, i, rotary_emb, scaling, routing) for i in range(config.num_hidden_layers)
        ))


@register_model("DeepseekV2ForCausalLM")
class DeepseekV2ForCausalLM(DecoderForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config, DeepseekV2Model(config, self.routing_config(config), self.interleaved_rope(config)))
        num_experts = config.n_routed_experts or 0
        self.stacked_params = [*expert_params(num_experts), *GATE_UP_PARAMS,
                               *(fused_qkv_a_params() if fuses_qkv_a(config) else ())]

    @classmethod
    def routing_config(cls, config: Any) -> RoutingConfig:
        method = getattr(config, "topk_method", None) or "greedy"
        if method not in V2_TOPK_METHODS:
            raise ValueError(f"unsupported DeepSeek-V2 topk_method {method!r}; supported: {V2_TOPK_METHODS}")
        grouped = method == "group_limited_greedy"
        return RoutingConfig(
            config.n_routed_experts, config.num_experts_per_tok, "softmax",
            num_groups=config.n_group if grouped else None, topk_groups=config.topk_group if grouped else None,
            group_score="max", norm_topk_prob=bool(config.norm_topk_prob),
            routed_scaling_factor=float(config.routed_scaling_factor), logits_in_fp32=True,
        )

    @classmethod
    def interleaved_rope(cls, config: Any) -> bool:
        return True

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        num_layers = self.config.num_hidden_layers

        def main_layers(items: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in items:
                layer = _LAYER_INDEX.match(name)
                if layer is None or int(layer.group(1)) < num_layers:
                    yield name, tensor

        load_weights_by_table(self, main_layers(weights), self.stacked_params, self.ignored_weight_names())

    def kv_cache_spec(self) -> MLAKVCacheSpec:
        return MLAKVCacheSpec(self.config.num_hidden_layers, self.config.kv_lora_rank, self.config.qk_rope_head_dim)


@register_model("DeepseekV3ForCausalLM")
class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    @classmethod
    def routing_config(cls, config: Any) -> RoutingConfig:
        return RoutingConfig(
            config.n_routed_experts, config.num_experts_per_tok, "sigmoid",
            num_groups=config.n_group, topk_groups=config.topk_group, group_score="top2_sum",
            norm_topk_prob=bool(config.norm_topk_prob), routed_scaling_factor=float(config.routed_scaling_factor),
            correction_bias=True, logits_in_fp32=True,
        )

    @classmethod
    def interleaved_rope(cls, config: Any) -> bool:
        return bool(getattr(config, "rope_interleave", True))
