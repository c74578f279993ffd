"""Qwen3: Llama with per-head RMSNorm on q and k (before rope) and `head_dim` from the config
(often not hidden_size / num_heads); biases follow `attention_bias` (off in released models)."""

from __future__ import annotations

from typing import Any

from lmlang.runtime.models.llama import LayerOptions, LlamaForCausalLM
from lmlang.runtime.models.registry import register_model


@register_model("Qwen3ForCausalLM")
class Qwen3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def layer_options(cls, config: Any) -> LayerOptions:
        bias = bool(getattr(config, "attention_bias", False))
        return LayerOptions(qkv_bias=bias, o_bias=bias, qk_norm=True)
