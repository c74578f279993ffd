"""FP8 (e4m3) W8A8 with block scales, DeepSeek-V3 style.

- Activations: per-token groups of `group_size` (1 x 128) features share one float32 scale,
  `scale = max|x_group| / 448`, `x_fp8 = x / scale` (saturated to +-448).
- Weights: 128 x 128 blocks share one float32 `scale_inv` (the checkpoint's `weight_scale_inv`),
  real weight = `w_fp8 * scale_inv`.
- GEMM: `out[m, n] = sum_kb (a_fp8[m, kb] . w_fp8[n, kb]) * a_scale[m, kb] * w_scale_inv[n // 128, kb]`
  with one 128-wide k block per iteration, fp8 `tl.dot` into a float32 accumulator.

Interpreter notes (triton 3.9, `TRITON_INTERPRET=1`, what the CPU tests run): `tl.dot` on fp8
operands works (the interpreter widens them exactly), so the GEMM needs no special path. But the
interpreter's fp32 -> fp8e4nv conversion drops the carry when rounding overflows the mantissa
(e.g. 125.0 becomes 64.0, not 128.0). The quantization kernel therefore takes `ROUND_IN_FP32`,
set for CPU launches: it rounds to the nearest e4m3 value in float32 first (round-half-even, as
the GPU's conversion does), after which the conversion is exact.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import launch, next_power_of_2
from lmlang.kernels.tiling import grouped_tile

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
_IN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
def per_token_group_quant_fp8_kernel(
    x_ptr,  # [num_groups * GROUP] contiguous, group g = x[g * GROUP : (g + 1) * GROUP]
    q_ptr,  # [num_groups * GROUP] fp8
    scale_ptr,  # [num_groups] float32
    num_groups,
    eps,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,  # groups per program
    ROUND_IN_FP32: tl.constexpr,
):
    offs_g = tl.program_id(0).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
    offs = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    mask = offs_g[:, None] < num_groups
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=1), eps) / 448.0
    q = tl.clamp(x / scale[:, None], -448.0, 448.0)
    if ROUND_IN_FP32:
        q = _round_to_e4m3(q)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + offs_g, scale, mask=offs_g < num_groups)


def per_token_group_quant_fp8(
    x: torch.Tensor, group_size: int = 128, eps: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes x ([..., K], K % group_size == 0) per group of `group_size` features.

    Returns `(x_fp8 [..., K] float8_e4m3fn, scales [..., K / group_size] float32)`.
    """
    if x.dtype not in _IN_DTYPES:
        raise ValueError(f"per_token_group_quant_fp8: dtype {x.dtype} not supported; use one of {_IN_DTYPES}")
    if group_size & (group_size - 1) or x.shape[-1] % group_size:
        raise ValueError(
            f"per_token_group_quant_fp8: group_size {group_size} must be a power of two dividing K={x.shape[-1]}"
        )
    if not x.is_contiguous():
        raise ValueError("per_token_group_quant_fp8: x must be contiguous")
    q = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    scales = torch.empty(*x.shape[:-1], x.shape[-1] // group_size, dtype=torch.float32, device=x.device)
    num_groups = scales.numel()
    if num_groups == 0:
        return q, scales
    block_g = 16
    launch(
        per_token_group_quant_fp8_kernel, (triton.cdiv(num_groups, block_g),), x, q, scales, num_groups, eps,
        GROUP=group_size, BLOCK_G=block_g, ROUND_IN_FP32=x.device.type == "cpu", num_warps=4,
    )
    return q, scales


def ref_per_token_group_quant_fp8(
    x: torch.Tensor, group_size: int = 128, eps: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference for `per_token_group_quant_fp8`."""
    groups = x.float().unflatten(-1, (-1, group_size))  # [..., K / g, g]
    scales = groups.abs().amax(-1).clamp(min=eps) / FP8_MAX
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


@triton.jit
def fp8_block_gemm_kernel(
    a_ptr,  # [M, K] fp8
    w_ptr,  # [N, K] fp8
    out_ptr,  # [M, N]
    a_scale_ptr,  # [M, K / BLOCK_K] float32
    w_scale_ptr,  # [ceil(N / SCALE_BLOCK_N), K / BLOCK_K] float32
    M, N, K,
    stride_am, stride_wn, stride_om, stride_asm, stride_wsn,
    SCALE_BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid, num_m, num_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_m % M  # wrapped: loads stay in bounds, the store is masked
    cols = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + cols[None, :].to(tl.int64) * stride_wn + offs_k[:, None]  # [BLOCK_K, BLOCK_N] of w^T
    a_scale_ptrs = a_scale_ptr + rows.to(tl.int64) * stride_asm
    w_scale_ptrs = w_scale_ptr + (cols // SCALE_BLOCK_N) * stride_wsn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, K // BLOCK_K):
        a = tl.load(a_ptrs)
        w = tl.load(w_ptrs)
        a_s = tl.load(a_scale_ptrs + kb)
        w_s = tl.load(w_scale_ptrs + kb)
        acc += tl.dot(a, w) * a_s[:, None] * w_s[None, :]
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _gemm_config(m: int) -> dict:
    if m <= 16:
        return dict(BLOCK_M=16, BLOCK_N=64, GROUP_M=1, num_warps=4, num_stages=4)
    if m <= 64:
        return dict(BLOCK_M=32, BLOCK_N=128, GROUP_M=4, num_warps=4, num_stages=4)
    return dict(BLOCK_M=64, BLOCK_N=128, GROUP_M=8, num_warps=4, num_stages=3)


def fp8_block_gemm(
    a_fp8: torch.Tensor,
    a_scales: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    block: tuple[int, int] = (128, 128),
) -> torch.Tensor:
    """W8A8 block-scaled GEMM: `a @ w^T` with a ([M, K] fp8, scales [M, K / bk]) and
    w ([N, K] fp8, scale_inv [ceil(N / bn), K / bk]); returns [M, N] in `out_dtype`.

    Any M; K must be a multiple of the k block (128 for DeepSeek); N may be ragged.
    """
    bn, bk = block
    if a_fp8.dtype != FP8_DTYPE or w_fp8.dtype != FP8_DTYPE:
        raise ValueError(f"fp8_block_gemm: operands must be {FP8_DTYPE}, got {a_fp8.dtype} and {w_fp8.dtype}")
    if a_fp8.dim() != 2 or w_fp8.dim() != 2 or a_fp8.shape[1] != w_fp8.shape[1]:
        raise ValueError(f"fp8_block_gemm: shapes a {tuple(a_fp8.shape)} and w {tuple(w_fp8.shape)} do not chain")
    m, k = a_fp8.shape
    n = w_fp8.shape[0]
    if k % bk or bk & (bk - 1) or bk < 16:
        raise ValueError(f"fp8_block_gemm: K={k} must be a multiple of the k block {bk} (a power of two >= 16)")
    if tuple(a_scales.shape) != (m, k // bk) or a_scales.dtype != torch.float32:
        raise ValueError(
            f"fp8_block_gemm: a_scales must be [{m}, {k // bk}] float32, got {tuple(a_scales.shape)} {a_scales.dtype}"
        )
    if tuple(w_scale_inv.shape) != (triton.cdiv(n, bn), k // bk) or w_scale_inv.dtype != torch.float32:
        raise ValueError(
            f"fp8_block_gemm: w_scale_inv must be [{triton.cdiv(n, bn)}, {k // bk}] float32, "
            f"got {tuple(w_scale_inv.shape)}"
        )
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"fp8_block_gemm: out_dtype {out_dtype} not supported; use one of {_OUT_DTYPES}")
    if not all(t.is_contiguous() for t in (a_fp8, a_scales, w_fp8, w_scale_inv)):
        raise ValueError("fp8_block_gemm: all operands must be contiguous")
    if len({t.device for t in (a_fp8, a_scales, w_fp8, w_scale_inv)}) != 1:
        raise ValueError("fp8_block_gemm: all operands must be on one device")
    out = torch.empty(m, n, dtype=out_dtype, device=a_fp8.device)
    if m == 0 or n == 0:
        return out
    cfg = _gemm_config(m)
    cfg["BLOCK_N"] = min(cfg["BLOCK_N"], max(16, next_power_of_2(n)))
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    launch(
        fp8_block_gemm_kernel, grid, a_fp8, w_fp8, out, a_scales, w_scale_inv, m, n, k,
        a_fp8.stride(0), w_fp8.stride(0), out.stride(0), a_scales.stride(0), w_scale_inv.stride(0),
        SCALE_BLOCK_N=bn, BLOCK_K=bk, **cfg,
    )
    return out


def ref_fp8_block_gemm(
    a_fp8: torch.Tensor,
    a_scales: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    block: tuple[int, int] = (128, 128),
) -> torch.Tensor:
    """Torch reference for `fp8_block_gemm`: dequantize both operands, matmul in float32."""
    a = a_fp8.float() * a_scales.repeat_interleave(block[1], dim=-1)
    w = dequant_weight_block_fp8(w_fp8, w_scale_inv, block)
    return (a @ w.t()).to(out_dtype)
