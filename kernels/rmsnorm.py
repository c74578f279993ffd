"""RMSNorm and fused residual-add + RMSNorm.

`y = (x * rsqrt(mean(x^2) + eps)).to(x.dtype) * weight`, the statistic accumulated in float32;
the normalized value is rounded to the input dtype before the weight multiply, as Hugging Face's
Llama/Qwen/DeepSeek `RMSNorm` does, so bf16 outputs match the checkpoints' reference modules.
One program normalizes one row; the row (hidden size up to 16384) is one block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import launch, next_power_of_2, pdl_launch_dependents, pdl_wait

_MAX_HIDDEN = 16384
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def rmsnorm_kernel(
    x_ptr,  # [rows, D], rows stride_x apart
    residual_ptr,  # [rows, D], read only when HAS_RESIDUAL
    weight_ptr,  # [D]
    out_ptr,  # [rows, D]
    new_residual_ptr,  # [rows, D], written only when HAS_RESIDUAL
    D,
    stride_x,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0)  # a constant: read before the wait
    pdl_wait(USE_PDL)
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * D + offs, mask=mask, other=0.0)
        # the sum is rounded to the activation dtype, as `x + residual` in torch would be
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(new_residual_ptr + row * D + offs, x, mask=mask)
    xf = x.to(tl.float32)
    mean_sq = tl.sum(xf * xf, axis=0) / D
    normed = (xf * tl.math.rsqrt(mean_sq + eps)).to(x_ptr.dtype.element_ty)
    y = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * D + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dtype not in _DTYPES:
        raise ValueError(f"rmsnorm: x dtype {x.dtype} not supported; use one of {_DTYPES}")
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rmsnorm: weight shape {tuple(weight.shape)} does not match hidden size {x.shape[-1]}")
    if weight.dtype != x.dtype:
        raise ValueError(f"rmsnorm: weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if x.device != weight.device:
        raise ValueError(f"rmsnorm: x on {x.device}, weight on {weight.device}")
    if not (_rows_contiguous(x) and weight.is_contiguous()):
        raise ValueError("rmsnorm: x must be contiguous (or 2-D with contiguous rows) and weight contiguous")
    if x.shape[-1] > _MAX_HIDDEN:
        raise ValueError(f"rmsnorm: hidden size {x.shape[-1]} exceeds {_MAX_HIDDEN}")


def _rows_contiguous(x: torch.Tensor) -> bool:
    """Contiguous, or 2-D with contiguous rows (e.g. a column slice of a stacked projection's output)."""
    return x.is_contiguous() or (x.dim() == 2 and x.stride(1) == 1)


def _launch(x, residual, weight, out, new_residual, eps: float) -> None:
    d = x.shape[-1]
    rows = x.numel() // d if d else 0
    if rows == 0:
        return
    block = next_power_of_2(d)
    num_warps = min(max(block // 256, 1), 16)
    stride_x = x.stride(0) if x.dim() == 2 else d
    launch(
        rmsnorm_kernel, (rows,), x, residual, weight, out, new_residual, d, stride_x, eps,
        HAS_RESIDUAL=residual is not None, BLOCK_D=block, num_warps=num_warps, pdl=True,
    )


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of `x` ([..., D]; a 2-D x may have strided rows) with
    `weight` ([D]); a new contiguous tensor of x's shape and dtype."""
    _check(x, weight)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, None, weight, out, None, eps)
    return out


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`h = x + residual; return rmsnorm(h, weight, eps), h` in one pass over memory.

    `x`, `residual`: [..., D], same shape and dtype. Returns `(normed, new_residual)`, new tensors.
    """
    _check(x, weight)
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            f"fused_add_rmsnorm: residual {tuple(residual.shape)} {residual.dtype} {residual.device} "
            f"does not match x {tuple(x.shape)} {x.dtype} {x.device}"
        )
    if not (residual.is_contiguous() and x.is_contiguous()):
        raise ValueError("fused_add_rmsnorm: x and residual must be contiguous")
    out = torch.empty_like(x)
    new_residual = torch.empty_like(x)
    _launch(x, residual, weight, out, new_residual, eps)
    return out, new_residual


def ref_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Torch reference for `rmsnorm`."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (normed.float() * weight.float()).to(x.dtype)


def ref_fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference for `fused_add_rmsnorm`."""
    h = x + residual
    return ref_rmsnorm(h, weight, eps), h
