"""Mixtral: Mistral attention with a sparse MoE feed-forward (softmax top-k, renormalised).

Checkpoints name the block `block_sparse_moe` with experts `w1` (gate), `w3` (up), `w2` (down);
they load into the shared `MoEBlock` at `mlp`. Sliding-window attention is ignored (see llama.py).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from lmlang.runtime.layers.moe import MoEBlock, RoutingConfig, expert_params
from lmlang.runtime.models.llama import STACKED_PARAMS, LlamaForCausalLM
from lmlang.runtime.models.registry import register_model
from lmlang.runtime.models.weight_mapping import StackedParam


@register_model("MixtralForCausalLM")
class MixtralForCausalLM(LlamaForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.stacked_params = [
            *expert_params(config.num_local_experts, ".block_sparse_moe.experts.", ".mlp.experts.", ("w1", "w3", "w2")),
            StackedParam(".block_sparse_moe.gate.", ".mlp.gate.", None),
            *STACKED_PARAMS,
        ]

    @classmethod
    def make_mlp(cls, config: Any, layer_id: int) -> Optional[nn.Module]:
        if config.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {config.hidden_act!r}; only 'silu' is implemented")
        routing = RoutingConfig(config.num_local_experts, config.num_experts_per_tok, norm_topk_prob=True)
        return MoEBlock(config.hidden_size, config.intermediate_size, routing)
