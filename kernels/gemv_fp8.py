"""Skinny W8A16 products for decode: `y = x @ (w_fp8 * scale)^T (+ bias)` with M <= 8 rows of x.

The weight is stored as DeepSeek-V3 FP8 checkpoints store it (see `lmlang.kernels.fp8`):
float8_e4m3fn [N, K] with one float32 `scale_inv` per bn x bk block ([ceil(N / bn), K / bk]).
At decode batch sizes the product is a stream over the weight, and one byte per element is half
of what the bf16 GEMV (`lmlang.kernels.gemv`) reads. Unlike the W8A8 path (activation
quantization kernel + block-scaled GEMM) x is used as it is, in one launch: no activation
rounding, so the result is closer to the dequantized weight's product than W8A8's.

The kernel is `gemv`'s layout (see that module for the strip / split-K / PDL scheme): each
program owns a strip of BLOCK_N weight rows that lies inside one scale row block
(`bn % BLOCK_N == 0`), so the strip's scales are one row of `scale_inv`. Where the block scale
enters, per path (`GemvConfig.use_dot`):
- FMA: the fp8 tile is widened to float32 and multiplied by x scaled by the scale of each
  element's k block (`x[k] * scale[k // bk]`, float32) -- the same product as scaling the
  weights, at one multiply per x element instead of one per weight element; any BLOCK_K.
- Tensor cores: the fp8 tile is widened to x's dtype (exact: every e4m3 value is a bf16 and an
  fp16 value) and multiplied with x in float32 accumulation; each K step lies inside one k block
  (`bk % BLOCK_K == 0`), so the step's partial is scaled by one scalar before it is added.
Split-K partials are summed by `gemv`'s reduce kernel. With programmatic dependent launch the
first weight tile and its scales are read before waiting for the previous kernel; x after.

Which config is fastest per (N, K, M), and whether it beats the W8A8 path at all, is measured
by `benchmarks/gemv_bench.py --fp8` and stored as a table (`gemv_fp8_config`, same layout as
gemv's); `runtime/quantization/fp8_linear.py` consults it.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from lmlang.kernels.fp8 import FP8_DTYPE, dequant_weight_block_fp8
from lmlang.kernels.gemv import (
    DOT_ROWS,
    MAX_M,
    GemvConfig,
    _dot,
    _store,
    gemv_reduce_kernel,
    lookup_config,
    weight_strip,
)
from lmlang.kernels.gemv_input import load_k
from lmlang.kernels.launch import dot_needs_fp32, launch, pdl_launch_dependents, pdl_wait

CONFIG_ENV = "LMLANG_GEMV_FP8_CONFIG"  # path of a tuned table that overrides the shipped one
TABLE = "gemv_fp8"  # shipped tables: configs/gemv_fp8_<device>.json
_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit(do_not_specialize=["M", "N", "K"])
def gemv_fp8_kernel(
    x_ptr,  # [M, K] bf16 / fp16, rows stride_xm apart, K contiguous
    w_ptr,  # [N, K] float8_e4m3fn, rows stride_wn apart, K contiguous
    s_ptr,  # [ceil(N / SCALE_N), K / SCALE_K] float32 block scales, rows stride_sn apart
    bias_ptr,  # [N] (read only when HAS_BIAS)
    out_ptr,  # [M, N]; with WRITE_PARTIALS float32 partials [split_k, M, N]
    M, N, K, k_per_split,
    stride_xm, stride_wn, stride_sn, stride_om, stride_os,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_N: tl.constexpr, SCALE_K: tl.constexpr,
    WRITE_PARTIALS: tl.constexpr, USE_DOT: tl.constexpr, DOT_ROWS: tl.constexpr, DOT_FP32: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    block, row, offs_n, n_mask, w_rows, offs_k, k_lo, k_hi, k_mask = weight_strip(
        pid, split, w_ptr, M, N, K, k_per_split, stride_wn, BLOCK_N, BLOCK_K, USE_DOT)
    s_row = s_ptr + (block * BLOCK_N // SCALE_N) * stride_sn  # the strip's one row of scales
    # the first weight tile and its scales are read before the wait: constants, not outputs of
    # the previous kernel
    w = load_k(w_rows + (k_lo + offs_k)[None, :], k_mask[None, :], EVEN_K)  # [BLOCK_N, BLOCK_K]
    if USE_DOT:
        s = tl.load(s_row + k_lo // SCALE_K)  # the step lies inside one k block
    else:
        s = load_k(s_row + (k_lo + offs_k) // SCALE_K, k_mask, EVEN_K)  # [BLOCK_K]
    pdl_wait(USE_PDL)
    if USE_DOT:
        offs_m = tl.arange(0, DOT_ROWS)
        x_rows = x_ptr + tl.minimum(offs_m, M - 1)[None, :] * stride_xm  # [1, DOT_ROWS]
        xt = load_k(x_rows + (k_lo + offs_k)[:, None], k_mask[:, None], EVEN_K)  # [BLOCK_K, DOT_ROWS]
        acc = _dot(w.to(x_ptr.dtype.element_ty), xt, DOT_FP32) * s  # [BLOCK_N, DOT_ROWS]
        for k in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
            k_mask = (k + offs_k) < k_hi
            w = load_k(w_rows + (k + offs_k)[None, :], k_mask[None, :], EVEN_K)
            s = tl.load(s_row + k // SCALE_K)
            xt = load_k(x_rows + (k + offs_k)[:, None], k_mask[:, None], EVEN_K)
            acc += _dot(w.to(x_ptr.dtype.element_ty), xt, DOT_FP32) * s
        # acc[j, i] is y[row i, column offs_n[j]]
        _store(out_ptr + split * stride_os, bias_ptr, acc, offs_m[None, :], offs_n[:, None],
               (offs_m[None, :] < M) & n_mask[:, None], stride_om, WRITE_PARTIALS, HAS_BIAS)
    else:
        x_row = x_ptr + row * stride_xm
        x = load_k(x_row + k_lo + offs_k, k_mask, EVEN_K).to(tl.float32) * s  # [BLOCK_K]
        acc = w.to(tl.float32) * x[None, :]  # [BLOCK_N, BLOCK_K]
        for k in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
            k_mask = (k + offs_k) < k_hi
            w = load_k(w_rows + (k + offs_k)[None, :], k_mask[None, :], EVEN_K)
            s = load_k(s_row + (k + offs_k) // SCALE_K, k_mask, EVEN_K)
            x = load_k(x_row + k + offs_k, k_mask, EVEN_K).to(tl.float32) * s
            acc += w.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)  # [BLOCK_N]
        _store(out_ptr + split * stride_os, bias_ptr, y, row, offs_n, n_mask, stride_om, WRITE_PARTIALS, HAS_BIAS)


def config_fits_block(config: GemvConfig, block: tuple[int, int]) -> bool:
    """Whether `gemv_fp8` can run `config` on weights scaled per `block` = (bn, bk): a strip of
    BLOCK_N rows inside one row block (bn % BLOCK_N == 0), and on tensor cores K steps inside one
    k block (bk % BLOCK_K == 0)."""
    bn, bk = block
    return bn % config.block_n == 0 and (not config.use_dot or bk % config.block_k == 0)


def _check(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
           bias: Optional[torch.Tensor], config: GemvConfig) -> None:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"gemv_fp8: x must be [M, K] and weight [N, K], got {tuple(x.shape)} and {tuple(weight.shape)}")
    if not 1 <= x.shape[0] <= MAX_M:
        raise ValueError(f"gemv_fp8: serves 1..{MAX_M} rows of x, got {x.shape[0]}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"gemv_fp8: x must be one of {_DTYPES}, got {x.dtype}")
    if weight.dtype != FP8_DTYPE:
        raise ValueError(f"gemv_fp8: weight must be {FP8_DTYPE}, got {weight.dtype}")
    if len(block) != 2 or min(block) < 1:
        raise ValueError(f"gemv_fp8: block must be two positive sizes (bn, bk), got {block}")
    n, k = weight.shape
    bn, bk = block
    if k % bk:
        raise ValueError(f"gemv_fp8: K={k} must be a multiple of the scale block's bk={bk}")
    scales = (triton.cdiv(n, bn), k // bk)
    if scale_inv.dtype != torch.float32 or tuple(scale_inv.shape) != scales or scale_inv.stride(1) != 1:
        raise ValueError(f"gemv_fp8: scale_inv must be a float32 {list(scales)} tensor, contiguous along K, "
                         f"got {scale_inv.dtype} {list(scale_inv.shape)}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("gemv_fp8: x and weight must be contiguous along K")
    if weight.stride(0) % 16:
        raise ValueError(f"gemv_fp8: weight rows must be 16-byte aligned (row stride {weight.stride(0)} elements)")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype or not bias.is_contiguous()):
        raise ValueError(f"gemv_fp8: bias must be a contiguous [{n}] {x.dtype} tensor")
    if not config_fits_block(config, block):
        raise ValueError(f"gemv_fp8: {config} does not fit the scale block {list(block)} "
                         "(needs bn % block_n == 0, and bk % block_k == 0 with use_dot)")
    devices = {x.device, weight.device, scale_inv.device} | ({bias.device} if bias is not None else set())
    if len(devices) != 1:
        raise ValueError(f"gemv_fp8: x, weight, scale_inv and bias must be on one device, got {devices}")


def gemv_fp8(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    bias: Optional[torch.Tensor],
    config: GemvConfig,
) -> torch.Tensor:
    """`x @ (weight * scale_inv)^T + bias` -> [M, N] in x's dtype, for 1 <= M <= 8 rows of x.

    x: [M, K] bf16 / fp16 (K contiguous); weight: [N, K] float8_e4m3fn (K contiguous, a multiple
    of bk); scale_inv: [ceil(N / bn), K / bk] float32 for `block` = (bn, bk); bias: [N] in x's
    dtype or None. The config must fit the block (`config_fits_block`). Products and sums in
    float32, rounded once. K is cut into `config.split_k` slices of whole BLOCK_K steps (fewer
    when K is short). Launches depend on the shapes and the config only (graph-capturable).
    """
    _check(x, weight, scale_inv, block, bias, config)
    m = x.shape[0]
    n, k = weight.shape
    steps = triton.cdiv(k, config.block_k)
    split_k = min(config.split_k, steps)
    k_per_split = triton.cdiv(steps, split_k) * config.block_k
    split_k = triton.cdiv(k, k_per_split)  # no empty slices
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    target = out if split_k == 1 else torch.empty(split_k, m, n, dtype=torch.float32, device=x.device)
    blocks = triton.cdiv(n, config.block_n)
    grid = (blocks if config.use_dot else blocks * m, split_k)
    bias_arg = bias if bias is not None else scale_inv  # never read without HAS_BIAS
    launch(
        gemv_fp8_kernel, grid, x, weight, scale_inv, bias_arg, target,
        m, n, k, k_per_split, x.stride(0), weight.stride(0), scale_inv.stride(0), n, m * n,
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, SCALE_N=block[0], SCALE_K=block[1],
        WRITE_PARTIALS=split_k > 1, USE_DOT=config.use_dot, DOT_ROWS=DOT_ROWS, DOT_FP32=dot_needs_fp32(x),
        HAS_BIAS=bias is not None, EVEN_K=k % k_per_split == 0,
        num_warps=config.num_warps, num_stages=config.num_stages, pdl=True,
    )
    if split_k > 1:
        reduce_block = 1024
        launch(gemv_reduce_kernel, (triton.cdiv(m * n, reduce_block),), target, bias_arg, out, n, m * n, split_k,
               HAS_BIAS=bias is not None, BLOCK=reduce_block, num_warps=4, pdl=True)
    return out


def ref_gemv_fp8(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                 bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Torch reference for `gemv_fp8`: the dequantized weight times x in float32, rounded to x's dtype."""
    y = x.float() @ dequant_weight_block_fp8(weight, scale_inv, block).T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@functools.lru_cache(maxsize=4096)
def gemv_fp8_config(m: int, n: int, k: int, dtype: torch.dtype, device_name: str) -> Optional[GemvConfig]:
    """The tuned `gemv_fp8` config for m rows of x (dtype `dtype`) times an [n, k] FP8 weight on
    `device_name`, or None where the W8A8 path is faster or the shape is untuned.

    Reads `$LMLANG_GEMV_FP8_CONFIG` when set, else the shipped `configs/gemv_fp8_<device>.json`
    (gemv's table layout, `lmlang.kernels.gemv.parse_table`; tuned with 128 x 128 scale blocks).
    An m above the table's largest tuned row count gives None; otherwise the entry of the
    smallest tuned row count >= m. Cached: the answer never changes within a process, so a CUDA
    graph captures the same choice it was warmed up with.
    """
    return lookup_config(m, n, k, dtype, device_name, table=TABLE, env=CONFIG_ENV)
