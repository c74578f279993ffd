"""Block-wise FP8 W8A8 routed experts, the replacement the FP8 transformation puts in for `FusedMoE`.

Same stacking as `FusedMoE` (`w13_weight` [E, 2I, H] gate then up rows, `w2_weight` [E, H, I]),
stored as float8_e4m3fn with float32 block scales `w13_weight_scale_inv` [E, ceil(2I / bn), ceil(H / bk)]
and `w2_weight_scale_inv` [E, ceil(H / bn), ceil(I / bk)], which is how DeepSeek's checkpoints
store each expert's `weight_scale_inv`. On CUDA, when H and I are whole k blocks, the experts run
as `fused_experts(..., use_fp8=True)` (activations quantized per 1 x bk group before each grouped
GEMM); otherwise `ref_fp8_experts`, the same arithmetic in torch (it syncs with the host, so a
CUDA graph cannot capture it; the released MoE models all have whole-block widths).
"""

from __future__ import annotations

from typing import Hashable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlang.kernels.fp8 import FP8_DTYPE, dequant_weight_block_fp8, quant_weight_block_fp8
from lmlang.runtime.layers.moe import FusedMoE, copy_into, expert_shard_ids, expert_slice
from lmlang.runtime.quantization.fp8_linear import cdiv, fake_quant_activation, new_fp8_parameter, new_scale_parameter


class Fp8FusedMoE(nn.Module):
    """FP8 routed experts with the `FusedMoE` interface (see the module docstring)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, block: tuple[int, int]) -> None:
        super().__init__()
        bn, bk = block
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.block = (bn, bk)
        e, h, i = num_experts, hidden_size, intermediate_size
        self.w13_weight = new_fp8_parameter((e, 2 * i, h), self.weight_loader)
        self.w2_weight = new_fp8_parameter((e, h, i), self.weight_loader)
        self.w13_weight_scale_inv = new_scale_parameter((e, cdiv(2 * i, bn), cdiv(h, bk)), self.weight_loader)
        self.w2_weight_scale_inv = new_scale_parameter((e, cdiv(h, bn), cdiv(i, bk)), self.weight_loader)
        for name, param in self.named_parameters():
            param.shard_ids = expert_shard_ids(num_experts, w13=name.startswith("w13"))

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Hashable = None) -> None:
        if param is self.w13_weight or param is self.w2_weight:
            if loaded.dtype != FP8_DTYPE:
                raise ValueError(f"fp8 checkpoint: expected {FP8_DTYPE} expert weights, got {loaded.dtype}")
            rows_w1 = self.intermediate_size
        else:
            if self.intermediate_size % self.block[0]:
                raise ValueError(
                    f"fp8 checkpoint: expert intermediate size {self.intermediate_size} is not a multiple of the "
                    f"{self.block[0]}-row weight block, so the gate and up block scales cannot be stacked"
                )
            rows_w1 = self.intermediate_size // self.block[0]
        copy_into(expert_slice(param, shard_id, rows_w1), loaded, shard_id)

    @classmethod
    def like(cls, moe: FusedMoE, block: tuple[int, int]) -> "Fp8FusedMoE":
        return cls(moe.num_experts, moe.hidden_size, moe.intermediate_size, block)

    @classmethod
    @torch.no_grad()
    def quantize(cls, moe: FusedMoE, block: tuple[int, int]) -> "Fp8FusedMoE":
        """`moe`'s loaded experts, block-quantized expert by expert (online quantization)."""
        with torch.device(moe.w13_weight.device):
            layer = cls.like(moe, block)
        for e in range(moe.num_experts):
            for src, dst, scale in (
                (moe.w13_weight, layer.w13_weight, layer.w13_weight_scale_inv),
                (moe.w2_weight, layer.w2_weight, layer.w2_weight_scale_inv),
            ):
                q, scale_inv = quant_weight_block_fp8(src[e], block)
                dst[e].copy_(q)
                scale[e].copy_(scale_inv)
        return layer

    def forward(
        self, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        bk = self.block[1]
        if hidden.is_cuda and self.hidden_size % bk == 0 and self.intermediate_size % bk == 0:
            from lmlang.kernels.fused_moe import fused_experts

            return fused_experts(
                hidden.contiguous(), self.w13_weight, self.w2_weight, topk_weights, topk_ids, use_fp8=True,
                w13_scale=self.w13_weight_scale_inv, w2_scale=self.w2_weight_scale_inv, block_shape=self.block,
                residual=residual,
            )
        out = ref_fp8_experts(
            hidden, self.w13_weight, self.w13_weight_scale_inv, self.w2_weight, self.w2_weight_scale_inv,
            topk_weights, topk_ids, self.block,
        )
        return out + residual if residual is not None else out

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}, "
            f"block={list(self.block)}"
        )


def ref_fp8_experts(
    hidden: torch.Tensor,  # [n, H]
    w13: torch.Tensor,  # [E, 2I, H] fp8
    w13_scale_inv: torch.Tensor,
    w2: torch.Tensor,  # [E, H, I] fp8
    w2_scale_inv: torch.Tensor,
    topk_weights: torch.Tensor,  # [n, k]
    topk_ids: torch.Tensor,  # [n, k]
    block: tuple[int, int],
) -> torch.Tensor:  # [n, H]
    """W8A8 experts in torch: each GEMM input rounded through per-group FP8, weights dequantized."""
    group = block[1]
    out = torch.zeros_like(hidden)
    x = _pad_to(hidden, group)
    for expert in torch.unique(topk_ids).tolist():
        tokens, slots = (topk_ids == expert).nonzero(as_tuple=True)
        w_gate_up = _pad_to(dequant_weight_block_fp8(w13[expert], w13_scale_inv[expert], block), group).to(hidden.dtype)
        w_down = _pad_to(dequant_weight_block_fp8(w2[expert], w2_scale_inv[expert], block), group).to(hidden.dtype)
        gate, up = F.linear(fake_quant_activation(x[tokens], group), w_gate_up).chunk(2, dim=-1)
        act = _pad_to(F.silu(gate) * up, group)
        y = F.linear(fake_quant_activation(act, group), w_down) * topk_weights[tokens, slots, None]
        out.index_add_(0, tokens, y.to(out.dtype))
    return out


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads the last dim to a multiple of `multiple` (whole activation groups)."""
    extra = -x.shape[-1] % multiple
    return F.pad(x, (0, extra)) if extra else x
