"""Qwen2: Llama with biases on q/k/v (none on o_proj). Sliding window is ignored (see llama.py)."""

from __future__ import annotations

from typing import Any

from lmlang.runtime.models.llama import LayerOptions, LlamaForCausalLM
from lmlang.runtime.models.registry import register_model


@register_model("Qwen2ForCausalLM")
class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def layer_options(cls, config: Any) -> LayerOptions:
        return LayerOptions(qkv_bias=True)
