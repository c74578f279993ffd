"""The FP8 transformation: swaps a model's `Linear` and `FusedMoE` modules for FP8 ones.

It walks the module tree, so it applies to any model built from `runtime/layers` without a
line of model code knowing about it. Not touched: embeddings, the LM head, norms and MoE routers
(they are not `Linear` modules; DeepSeek's FP8 checkpoints keep them in bf16 as well), and modules
named in `Fp8Config.ignored_modules`.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from lmlang.runtime.layers.linear import Linear
from lmlang.runtime.layers.moe import FusedMoE
from lmlang.runtime.quantization.config import Fp8Config, QuantizationPlan
from lmlang.runtime.quantization.fp8_linear import Fp8Linear
from lmlang.runtime.quantization.fp8_moe import Fp8FusedMoE


def _swap(model: nn.Module, cfg: Fp8Config, linear: Callable, moe: Callable) -> int:
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (Linear, FusedMoE)) and not cfg.is_ignored(name)
    ]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        make = linear if isinstance(module, Linear) else moe
        setattr(parent, attr, make(module, cfg.weight_block_size))
    return len(targets)


def prepare_fp8_checkpoint(model: nn.Module, cfg: Fp8Config) -> int:
    """Replaces every eligible module with an empty FP8 one that an FP8 checkpoint loads into.

    Call inside the device / default-dtype context the model was built in. Returns the count.
    """
    return _swap(model, cfg, Fp8Linear.like, Fp8FusedMoE.like)


def quantize_fp8(model: nn.Module, cfg: Fp8Config) -> int:
    """Quantizes every eligible module of a loaded model in place (online FP8). Returns the count."""
    return _swap(model, cfg, Fp8Linear.quantize, Fp8FusedMoE.quantize)


def before_loading(model: nn.Module, plan: QuantizationPlan | None) -> None:
    if plan is not None and plan.from_checkpoint:
        prepare_fp8_checkpoint(model, plan.config)


def after_loading(model: nn.Module, plan: QuantizationPlan | None) -> None:
    if plan is not None and not plan.from_checkpoint:
        quantize_fp8(model, plan.config)
