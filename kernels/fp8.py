"""FP8 (e4m3) W8A8 with block scales, DeepSeek-V3 style: quantization and weight formats.

- Activations: per-token groups of `group_size` (1 x 128) features share one float32 scale,
  `scale = max|x_group| * fp32(1 / 448)`, `x_fp8 = x / scale` (saturated to +-448).
- Weights: 128 x 128 blocks share one float32 `scale_inv` (the checkpoint's `weight_scale_inv`),
  real weight = `w_fp8 * scale_inv`.
- GEMM: `fp8_block_gemm` (kernel, configs and tuning tables in `lmlang.kernels.fp8_gemm`,
  re-exported here).

Bitwise agreement of kernel and torch reference, on CPU and GPU, needs every rounding step to be
the same IEEE operation on both sides. Two were not: Triton's `/` on float32 lowers to the
approximate `div.full.f32` on NVIDIA GPUs (up to 2 ulp; hence `tl.div_rn` for `x / scale`), and
torch on CUDA computes `tensor / python_scalar` as `tensor * (1 / scalar)` but on CPU as a true
division (hence the scale is defined as a multiplication by `fp32(1 / 448)`, the same on every
device). Either moved some quotients across an e4m3 rounding boundary. The fp32 -> e4m3
conversion itself is round-to-nearest-even on the GPU, as in torch.

Interpreter notes (triton 3.9, `TRITON_INTERPRET=1`, what the CPU tests run): `tl.dot` on fp8
operands works (the interpreter widens them exactly). But the interpreter's fp32 -> fp8e4nv
conversion drops the carry when rounding overflows the mantissa (e.g. 125.0 becomes 64.0, not
128.0). The quantization kernel therefore takes `ROUND_IN_FP32`, set for CPU launches: it rounds
to the nearest e4m3 value in float32 first (round-half-even, as the GPU's conversion does), after
which the conversion is exact.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from lmlang.kernels.fp8_gemm import Fp8GemmConfig, fp8_block_gemm, ref_fp8_block_gemm  # noqa: F401 (re-exported)
from lmlang.kernels.launch import launch, pdl_launch_dependents, pdl_wait

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
_IN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _round_to_e4m3(x):
    """Rounds float32 x (|x| <= 448) to the nearest e4m3 value, half to even, staying in float32."""
    mag = tl.abs(x)
    exponent = tl.maximum((mag.to(tl.int32, bitcast=True) >> 23) - 127, -6)  # subnormals: 2^-6 scale
    # adding 2^(e + 20) leaves a float32 ulp of 2^(e - 3): e4m3's spacing for this binade
    magic = ((exponent + 147) << 23).to(tl.float32, bitcast=True)
    mag = (mag + magic) - magic
    return tl.where(x < 0, -mag, mag)


@triton.jit
def _quantize_groups(x, eps, ROUND_IN_FP32: tl.constexpr):
    """float32 groups [G, GROUP] -> (e4m3 values still in float32 [G, GROUP], scales [G])."""
    scale = tl.maximum(tl.max(tl.abs(x), axis=1), eps) * (1.0 / 448.0)  # one IEEE multiply everywhere
    q = tl.clamp(tl.div_rn(x, scale[:, None]), -448.0, 448.0)  # `/` would be div.full.f32 on the GPU
    if ROUND_IN_FP32:
        q = _round_to_e4m3(q)
    return q, scale


@triton.jit
def per_token_group_quant_fp8_kernel(
    x_ptr,  # [num_groups * GROUP] contiguous, group g = x[g * GROUP : (g + 1) * GROUP]
    q_ptr,  # [num_out_groups * GROUP] fp8 (groups past num_groups: padding rows, written as zeros)
    scale_ptr,  # float32; group g = (row, col) of the scale matrix: row * stride_scale_row + col * stride_scale_group
    num_groups,
    num_out_groups,
    groups_per_row,
    stride_scale_row,
    stride_scale_group,
    eps,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,  # groups per program
    ROUND_IN_FP32: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    offs_g = tl.program_id(0).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
    offs = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    pdl_wait(USE_PDL)  # x comes from the kernel before
    # padding groups read as zeros: their q is 0 and their scale eps / 448
    x = tl.load(x_ptr + offs, mask=offs_g[:, None] < num_groups, other=0.0).to(tl.float32)
    q, scale = _quantize_groups(x, eps, ROUND_IN_FP32)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=offs_g[:, None] < num_out_groups)
    scale_offs = (offs_g // groups_per_row) * stride_scale_row + (offs_g % groups_per_row) * stride_scale_group
    tl.store(scale_ptr + scale_offs, scale, mask=offs_g < num_out_groups)


def per_token_group_quant_fp8(
    x: torch.Tensor,
    group_size: int = 128,
    eps: float = 1e-10,
    *,
    column_major_scales: bool = False,
    pad_rows_to: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes x ([..., K], K % group_size == 0) per group of `group_size` features.

    Returns `(x_fp8 [..., K] float8_e4m3fn, scales [..., K / group_size] float32)`.

    For cuBLASLt's block-scaled GEMM (`lmlang.kernels.fp8_cublas`), x must be 2-D [M, K] and:
    `pad_rows_to=p` rounds the rows up to Mp = M rounded up to a multiple of p (the extra rows of
    x_fp8 are zeros, their scales eps / 448), and `column_major_scales=True` writes the scales
    as the transposed view of a contiguous [K / group_size, Mp] tensor (strides (1, Mp)), so no
    transpose copy is needed.
    """
    if x.dtype not in _IN_DTYPES:
        raise ValueError(f"per_token_group_quant_fp8: dtype {x.dtype} not supported; use one of {_IN_DTYPES}")
    if group_size & (group_size - 1) or x.shape[-1] % group_size:
        raise ValueError(
            f"per_token_group_quant_fp8: group_size {group_size} must be a power of two dividing K={x.shape[-1]}"
        )
    if not x.is_contiguous():
        raise ValueError("per_token_group_quant_fp8: x must be contiguous")
    if pad_rows_to < 1:
        raise ValueError(f"per_token_group_quant_fp8: pad_rows_to must be >= 1, got {pad_rows_to}")
    if (column_major_scales or pad_rows_to > 1) and x.dim() != 2:
        raise ValueError(
            f"per_token_group_quant_fp8: column_major_scales / pad_rows_to need a 2-D x, got shape {tuple(x.shape)}"
        )
    groups_per_row = x.shape[-1] // group_size
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    out_rows = -(-rows // pad_rows_to) * pad_rows_to
    q_shape = (out_rows, x.shape[-1]) if x.dim() == 2 else x.shape
    q = torch.empty(q_shape, dtype=FP8_DTYPE, device=x.device)
    if column_major_scales:
        scales = torch.empty(groups_per_row, out_rows, dtype=torch.float32, device=x.device).t()  # [Mp, K / g]
        stride_row, stride_group = 1, out_rows
    else:
        scales = torch.empty(*q_shape[:-1], groups_per_row, dtype=torch.float32, device=x.device)
        stride_row, stride_group = groups_per_row, 1
    num_out_groups = out_rows * groups_per_row
    if num_out_groups == 0:
        return q, scales
    block_g = 16
    launch(
        per_token_group_quant_fp8_kernel, (triton.cdiv(num_out_groups, block_g),), x, q, scales,
        rows * groups_per_row, num_out_groups, groups_per_row, stride_row, stride_group, eps,
        GROUP=group_size, BLOCK_G=block_g, ROUND_IN_FP32=x.device.type == "cpu", num_warps=4, pdl=True,
    )
    return q, scales


@triton.jit
def silu_and_mul_quant_fp8_kernel(
    x_ptr,  # [rows, 2 * d]: gate then up, rows `x_row_stride` apart
    q_ptr,  # [rows, d] fp8
    scale_ptr,  # [rows, d / GROUP] float32
    rows, d, x_row_stride, eps,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,  # groups per program, all of one row
    ROUND_IN_FP32: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    groups_per_row = d // GROUP
    offs_g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    cols = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]  # [BLOCK_G, GROUP]
    mask = offs_g[:, None] < groups_per_row
    pdl_wait(USE_PDL)  # x comes from the kernel before
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_row_stride + d + cols, mask=mask, other=0.0)
    # as silu_and_mul rounds: silu in float32, rounded to x's dtype, times up, rounded again
    act = (gate * tl.sigmoid(gate)).to(x_ptr.dtype.element_ty).to(tl.float32) * up.to(tl.float32)
    q, scale = _quantize_groups(act.to(x_ptr.dtype.element_ty).to(tl.float32), eps, ROUND_IN_FP32)
    tl.store(q_ptr + row * d + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row * groups_per_row + offs_g, scale, mask=offs_g < groups_per_row)


def silu_and_mul_quant_fp8(
    x: torch.Tensor, group_size: int = 128, eps: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_token_group_quant_fp8(activation.silu_and_mul(x), group_size, eps)` in one launch.

    x: [rows, 2 * d] (rows may be strided, the last dim contiguous), d a multiple of group_size.
    Returns (q [rows, d] float8_e4m3fn, scales [rows, d / group_size] float32), bit for bit what
    the two kernels give (the activation is rounded to x's dtype before it is quantized).
    """
    if x.dtype not in _IN_DTYPES:
        raise ValueError(f"silu_and_mul_quant_fp8: dtype {x.dtype} not supported; use one of {_IN_DTYPES}")
    if x.dim() != 2 or x.shape[1] % (2 * group_size) or x.stride(1) != 1:
        raise ValueError(
            f"silu_and_mul_quant_fp8: x must be [rows, 2 * d] with d a multiple of {group_size} and contiguous "
            f"rows, got {tuple(x.shape)}"
        )
    if group_size & (group_size - 1):
        raise ValueError(f"silu_and_mul_quant_fp8: group_size {group_size} must be a power of two")
    rows, d = x.shape[0], x.shape[1] // 2
    q = torch.empty(rows, d, dtype=FP8_DTYPE, device=x.device)
    scales = torch.empty(rows, d // group_size, dtype=torch.float32, device=x.device)
    if rows == 0:
        return q, scales
    block_g = min(8, triton.next_power_of_2(d // group_size))
    launch(
        silu_and_mul_quant_fp8_kernel, (rows, triton.cdiv(d // group_size, block_g)), x, q, scales,
        rows, d, x.stride(0), eps, GROUP=group_size, BLOCK_G=block_g, ROUND_IN_FP32=x.device.type == "cpu",
        num_warps=4, pdl=True,
    )
    return q, scales


def ref_per_token_group_quant_fp8(
    x: torch.Tensor, group_size: int = 128, eps: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference for `per_token_group_quant_fp8`."""
    groups = x.float().unflatten(-1, (-1, group_size))  # [..., K / g, g]
    scales = groups.abs().amax(-1).clamp(min=eps) * (1.0 / FP8_MAX)  # as the kernel (see the module docstring)
    q = (groups / scales[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.flatten(-2), scales


def quant_weight_block_fp8(
    w: torch.Tensor, block: tuple[int, int] = (128, 128), eps: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantizes weights ([..., N, K]) the way FP8 checkpoints store them (torch; tests, dummy loads).

    Returns `(w_fp8 [..., N, K], scale_inv [..., ceil(N / bn), ceil(K / bk)] float32)` with
    `w ~= w_fp8 * scale_inv` blockwise.
    """
    bn, bk = block
    n, k = w.shape[-2:]
    nb, kb = triton.cdiv(n, bn), triton.cdiv(k, bk)
    padded = torch.nn.functional.pad(w.float(), (0, kb * bk - k, 0, nb * bn - n))
    blocks = padded.unflatten(-1, (kb, bk)).unflatten(-3, (nb, bn))  # [..., nb, bn, kb, bk]
    scale_inv = blocks.abs().amax(dim=(-3, -1)).clamp(min=eps) / FP8_MAX  # [..., nb, kb]
    q = (blocks / scale_inv[..., :, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    q = q.flatten(-2).flatten(-3, -2)[..., :n, :k].to(FP8_DTYPE)
    return q.contiguous(), scale_inv


def dequant_weight_block_fp8(
    w_fp8: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128)
) -> torch.Tensor:
    """`w_fp8 * scale_inv` expanded blockwise, float32 ([..., N, K])."""
    n, k = w_fp8.shape[-2:]
    scales = scale_inv.repeat_interleave(block[0], -2)[..., :n, :].repeat_interleave(block[1], -1)[..., :k]
    return w_fp8.float() * scales
