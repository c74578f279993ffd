"""Qwen3-MoE: Qwen3 attention (per-head q/k norms) with sparse MoE feed-forward layers.

A layer is sparse unless it is listed in `mlp_only_layers` or falls between `decoder_sparse_step`
strides; dense layers use `intermediate_size`, experts `moe_intermediate_size`. Routing: softmax
top-k, renormalised when `norm_topk_prob` (true in the released models); no shared experts.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from lmlang.runtime.layers.moe import MoEBlock, RoutingConfig, expert_params
from lmlang.runtime.models.llama import STACKED_PARAMS
from lmlang.runtime.models.qwen3 import Qwen3ForCausalLM
from lmlang.runtime.models.registry import register_model


def is_sparse_layer(config: Any, layer_id: int) -> bool:
    step = getattr(config, "decoder_sparse_step", 1) or 1
    return (
        layer_id not in (getattr(config, "mlp_only_layers", None) or ())
        and config.num_experts > 0
        and (layer_id + 1) % step == 0
    )


@register_model("Qwen3MoeForCausalLM")
class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.stacked_params = [*expert_params(config.num_experts), *STACKED_PARAMS]

    @classmethod
    def make_mlp(cls, config: Any, layer_id: int) -> Optional[nn.Module]:
        if not is_sparse_layer(config, layer_id):
            return None
        if config.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {config.hidden_act!r}; only 'silu' is implemented")
        routing = RoutingConfig(
            config.num_experts, config.num_experts_per_tok, norm_topk_prob=bool(config.norm_topk_prob)
        )
        return MoEBlock(config.hidden_size, config.moe_intermediate_size, routing)
