"""Quantization as transformations applied to a built model, never as copies of model code.

FP8 block-wise W8A8 (DeepSeek-V3 style): `Fp8Linear` replaces `Linear` / `StackedLinear`,
`Fp8FusedMoE` replaces `FusedMoE`. `resolve_quantization` decides from the checkpoint config and
the `quantization` argument whether to load an FP8 checkpoint or quantize online;
`before_loading` / `after_loading` apply that plan around weight loading (`model_loader.load_model`).
"""

from lmlang.runtime.quantization.config import QUANTIZATION_METHODS, Fp8Config, QuantizationPlan, resolve_quantization
from lmlang.runtime.quantization.fp8_linear import Fp8Linear
from lmlang.runtime.quantization.fp8_moe import Fp8FusedMoE
from lmlang.runtime.quantization.transform import after_loading, before_loading, prepare_fp8_checkpoint, quantize_fp8

__all__ = [
    "QUANTIZATION_METHODS",
    "Fp8Config",
    "QuantizationPlan",
    "resolve_quantization",
    "Fp8Linear",
    "Fp8FusedMoE",
    "before_loading",
    "after_loading",
    "prepare_fp8_checkpoint",
    "quantize_fp8",
]
