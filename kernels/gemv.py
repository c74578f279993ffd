"""Skinny matrix products for decode: `y = x @ w.T (+ bias)` with few rows in x (M <= 8).

At decode batch sizes a linear layer is a stream over its weight: 2 bytes per weight element
against 2 * M FLOPs, so the only thing that matters is reading `w` ([N, K], K contiguous) at the
memory's full rate. Each program owns a strip of BLOCK_N weight rows and walks its share of K in
BLOCK_K steps with 16-byte loads (K contiguous, row stride a multiple of 8 elements); with
`split_k > 1` the K range is cut into that many slices, each program writes a float32 partial,
and a second kernel (`gemv_reduce_kernel`) sums the slices in a fixed order (no atomics: the
result does not depend on scheduling, and the grid depends on the shape only, so launches can be
captured in CUDA graphs).

Two ways to multiply, picked by `GemvConfig.use_dot`:
- FMA (`use_dot=False`): one program per (row block, x row); it accumulates `w * x` in a
  [BLOCK_N, BLOCK_K] float32 tile and reduces it once at the end. For M > 1 the programs of one
  weight strip are adjacent in launch order, so they share the strip through L2 (HBM reads it
  about once); meant for M = 1 or 2.
- Tensor cores (`use_dot=True`): x is padded to 16 rows and the strip is multiplied as
  `w_tile [BLOCK_N, BLOCK_K] @ x_tile.T [BLOCK_K, 16]`; one program covers all M rows, and
  triton pipelines the weight loads `num_stages` deep.

The step before a projection can run inside it (`gemv_input`): a gated input (`gated=True`,
`silu(gate) * up` for the down projection) or a residual-add + RMSNorm of x (`norm=NormInput`),
computed per BLOCK_K chunk, so that step needs no launch of its own.

Launch latency is hidden with programmatic dependent launch (`launch.pdl_enabled`): every
program reads its first weight tile, then waits for the previous kernel (`pdl_wait`), then
reads x; the next kernel may launch as soon as every program has started.

Which config (or cuBLAS) is fastest per (N, K, M) is measured by `benchmarks/gemv_bench.py` and
stored as a table (`gemv_config`); `runtime/layers/linear.py` consults it.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from lmlang.kernels.gemv_input import (
    NormInput,
    check_gated_input,
    check_norm_input,
    input_chunk,
    load_k,
    row_rstd,
)
from lmlang.kernels.launch import dot_needs_fp32, launch, next_power_of_2, pdl_launch_dependents, pdl_wait

MAX_M = 8  # the largest row count this kernel serves
DOT_ROWS = 16  # tensor-core tiles are at least 16 wide: x is padded to this many rows
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
CONFIG_ENV = "LMLANG_GEMV_CONFIG"  # path of a tuned table that overrides the shipped one
_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters of `gemv_kernel`; `split_k` slices of K, each a multiple of BLOCK_K."""

    block_n: int
    block_k: int
    split_k: int = 1
    use_dot: bool = False
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self) -> None:
        for name in ("block_n", "block_k", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"GemvConfig.{name} must be a power of two, got {value}")
        if self.split_k < 1 or self.num_stages < 1:
            raise ValueError(f"GemvConfig: split_k and num_stages must be >= 1, got {self.split_k}, {self.num_stages}")
        if self.use_dot and (self.block_n < 16 or self.block_k < 16):
            raise ValueError(f"GemvConfig: tensor-core tiles need block_n and block_k >= 16, got {self}")

    def to_json(self) -> dict:
        return asdict(self)


# M, N and K are not specialized (one compile serves every shape); the row strides, the split
# length and the up-half offset are, so that triton sees 16-byte aligned rows and slice starts.
@triton.jit(do_not_specialize=["M", "N", "K"])
def gemv_kernel(
    x_ptr,  # [M, K] (gated: [M, 2K], gate | up), rows stride_xm apart, K contiguous
    w_ptr,  # [N, K], rows stride_wn apart, K contiguous
    bias_ptr,  # [N] (read only when HAS_BIAS)
    out_ptr,  # [M, N]; with WRITE_PARTIALS float32 partials [split_k, M, N]
    res_ptr,  # [M, K] residual, rows stride_rm apart (read only when HAS_RESIDUAL)
    norm_w_ptr,  # [K] norm weight (read only when NORM)
    res_out_ptr,  # [M, K] x + residual, rows stride_rom apart (written only when HAS_RESIDUAL)
    eps, M, N, K, k_per_split, up_offset,
    stride_xm, stride_wn, stride_om, stride_os, stride_rm, stride_rom,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WRITE_PARTIALS: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_ROWS: tl.constexpr, DOT_FP32: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    GATED: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    EVEN_STAT: tl.constexpr, BLOCK_STAT: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    block, row, offs_n, n_mask, w_rows, offs_k, k_lo, k_hi, k_mask = weight_strip(
        pid, split, w_ptr, M, N, K, k_per_split, stride_wn, BLOCK_N, BLOCK_K, USE_DOT)
    # the first weight tile is read before the wait: weights are constants, and with PDL this
    # stream starts while the previous kernel finishes
    w = load_k(w_rows + (k_lo + offs_k)[None, :], k_mask[None, :], EVEN_K)  # [BLOCK_N, BLOCK_K]
    pdl_wait(USE_PDL)
    writer = (block == 0) & (split == 0)  # the program that writes residual_out for its rows
    if USE_DOT:
        offs_m = tl.arange(0, DOT_ROWS)
        rows = tl.minimum(offs_m, M - 1)[None, :]  # [1, DOT_ROWS]
        x_rows = x_ptr + rows * stride_xm
        r_rows = res_ptr + rows * stride_rm
        rstd = tl.zeros([1, DOT_ROWS], dtype=tl.float32)
        if NORM:
            for r in range(M):  # columns of rows >= M are not stored
                row_stat = row_rstd(x_ptr + r * stride_xm, res_ptr + r * stride_rm, res_out_ptr + r * stride_rom,
                                    K, eps, writer, HAS_RESIDUAL, EVEN_STAT, BLOCK_STAT)
                rstd = tl.where(offs_m[None, :] == r, row_stat, rstd)
        xt = input_chunk(x_rows, r_rows, norm_w_ptr, k_lo, offs_k[:, None], k_mask[:, None], up_offset, rstd,
                         EVEN_K, GATED, NORM, HAS_RESIDUAL)  # [BLOCK_K, DOT_ROWS]
        acc = _dot(w, xt, DOT_FP32)
        for k in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
            k_mask = (k + offs_k) < k_hi
            w = load_k(w_rows + (k + offs_k)[None, :], k_mask[None, :], EVEN_K)
            xt = input_chunk(x_rows, r_rows, norm_w_ptr, k, offs_k[:, None], k_mask[:, None], up_offset, rstd,
                             EVEN_K, GATED, NORM, HAS_RESIDUAL)
            acc += _dot(w, xt, DOT_FP32)
        # acc[j, i] is y[row i, column offs_n[j]]
        _store(out_ptr + split * stride_os, bias_ptr, acc, offs_m[None, :], offs_n[:, None],
               (offs_m[None, :] < M) & n_mask[:, None], stride_om, WRITE_PARTIALS, HAS_BIAS)
    else:
        x_row = x_ptr + row * stride_xm
        r_row = res_ptr + row * stride_rm
        rstd = 1.0
        if NORM:
            rstd = row_rstd(x_row, r_row, res_out_ptr + row * stride_rom, K, eps, writer,
                            HAS_RESIDUAL, EVEN_STAT, BLOCK_STAT)
        x = input_chunk(x_row, r_row, norm_w_ptr, k_lo, offs_k, k_mask, up_offset, rstd,
                        EVEN_K, GATED, NORM, HAS_RESIDUAL)  # [BLOCK_K]
        acc = w.to(tl.float32) * x.to(tl.float32)[None, :]  # [BLOCK_N, BLOCK_K]
        for k in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
            k_mask = (k + offs_k) < k_hi
            w = load_k(w_rows + (k + offs_k)[None, :], k_mask[None, :], EVEN_K)
            x = input_chunk(x_row, r_row, norm_w_ptr, k, offs_k, k_mask, up_offset, rstd,
                            EVEN_K, GATED, NORM, HAS_RESIDUAL)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        y = tl.sum(acc, axis=1)  # [BLOCK_N]
        _store(out_ptr + split * stride_os, bias_ptr, y, row, offs_n, n_mask, stride_om, WRITE_PARTIALS, HAS_BIAS)


@triton.jit
def weight_strip(pid, split, w_ptr, M, N, K, k_per_split, stride_wn,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr):
    """The program's share of a skinny product: its strip of BLOCK_N weight rows and, along K, its
    split [k_lo, k_hi) (pid: the row block [x M rows without tensor cores]). Returns (block, row,
    offs_n, n_mask, w_rows, offs_k, k_lo, k_hi, k_mask of the first step); `row` is the program's
    x row (FMA) or 0 (tensor cores: one program covers every row)."""
    if USE_DOT:
        block = pid
        row = 0
    else:
        block = pid // M  # the programs of one weight strip are adjacent: they share it in L2
        row = pid % M
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    # clamped, not masked: the loads stay unmasked and 16 bytes wide; extra rows are not stored
    w_rows = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
    offs_k = tl.arange(0, BLOCK_K)
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    k_mask = (k_lo + offs_k) < k_hi
    return block, row, offs_n, n_mask, w_rows, offs_k, k_lo, k_hi, k_mask


@triton.jit
def _dot(w, xt, DOT_FP32: tl.constexpr):
    """w [BLOCK_N, BLOCK_K] @ xt [BLOCK_K, DOT_ROWS] in float32 (see `dot_needs_fp32`)."""
    if DOT_FP32:
        w = w.to(tl.float32)
        xt = xt.to(tl.float32)
    return tl.dot(w, xt)


@triton.jit
def _store(out_ptr, bias_ptr, y, rows, cols, mask, stride_om, WRITE_PARTIALS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Writes y (float32) at out[rows, cols]: a split's partials, or the final values (plus bias)."""
    out = out_ptr + rows * stride_om + cols
    if WRITE_PARTIALS:
        tl.store(out, y, mask=mask)
    else:
        if HAS_BIAS:
            y += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["N", "MN", "split_k"])
def gemv_reduce_kernel(
    part_ptr,  # [split_k, M * N] float32
    bias_ptr,  # [N]
    out_ptr,  # [M, N] contiguous
    N, MN, split_k,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    pdl_wait(USE_PDL)
    y = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(split_k):  # fixed order: the sum is deterministic
        y += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gated: bool,
           norm: Optional[NormInput]) -> None:
    if gated:
        if norm is not None:
            raise ValueError("gemv: an input is either gated or normalized, not both")
        check_gated_input(x, weight)
    elif x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"gemv: x must be [M, K] and weight [N, K], got {tuple(x.shape)} and {tuple(weight.shape)}")
    if not 1 <= x.shape[0] <= MAX_M:
        raise ValueError(f"gemv: serves 1..{MAX_M} rows of x, got {x.shape[0]}")
    if x.dtype not in _DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"gemv: x and weight must share one dtype of {_DTYPES}, got {x.dtype} and {weight.dtype}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("gemv: x and weight must be contiguous along K")
    if weight.stride(0) % 8:
        raise ValueError(f"gemv: weight rows must be 16-byte aligned (row stride {weight.stride(0)} elements)")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype or not bias.is_contiguous()):
        raise ValueError(f"gemv: bias must be a contiguous [{weight.shape[0]}] {x.dtype} tensor")
    devices = {x.device, weight.device} | ({bias.device} if bias is not None else set())
    if len(devices) != 1:
        raise ValueError(f"gemv: x, weight and bias must be on one device, got {devices}")
    if norm is not None:
        check_norm_input(norm, x)


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    config: GemvConfig,
    *,
    gated: bool = False,
    norm: Optional[NormInput] = None,
) -> torch.Tensor:
    """`input(x) @ weight.T + bias` for weight [N, K] (bf16 or fp16) and 1 <= M <= 8 rows -> [M, N].

    input(x) is x ([M, K]) itself; with `gated=True` x is [M, 2K] (gate | up) and the input is
    `silu(gate) * up`; with `norm` it is `rmsnorm(x + norm.residual) * norm.norm_weight`, and
    `norm.residual_out` receives `x + residual` (see `gemv_input`). K is cut into
    `config.split_k` slices of whole BLOCK_K steps (fewer when K is short); the output dtype is
    x's. Launches depend on the shapes and the config only (graph-capturable); with programmatic
    dependent launch (`launch.pdl_enabled`) the first weight tile is read before waiting for the
    previous kernel.
    """
    _check(x, weight, bias, gated, norm)
    m = x.shape[0]
    n, k = weight.shape
    steps = triton.cdiv(k, config.block_k)
    split_k = min(config.split_k, steps)
    k_per_split = triton.cdiv(steps, split_k) * config.block_k
    split_k = triton.cdiv(k, k_per_split)  # no empty slices
    even_k = k % k_per_split == 0
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    target = out if split_k == 1 else torch.empty(split_k, m, n, dtype=torch.float32, device=x.device)
    blocks = triton.cdiv(n, config.block_n)
    grid = (blocks if config.use_dot else blocks * m, split_k)
    bias_arg = bias if bias is not None else weight  # never read without HAS_BIAS
    residual = norm.residual if norm is not None else None
    # the statistic pass reads 16 elements per thread and tensor per step
    block_stat = min(next_power_of_2(k), 512 * config.num_warps) if norm is not None else 1
    res_arg = residual if residual is not None else x  # read / written only with HAS_RESIDUAL
    res_out_arg = norm.residual_out if residual is not None else x
    launch(
        gemv_kernel, grid, x, weight, bias_arg, target,
        res_arg, norm.norm_weight if norm is not None else weight, res_out_arg,
        norm.eps if norm is not None else 0.0, m, n, k, k_per_split, k if gated else 0,
        x.stride(0), weight.stride(0), n, m * n, res_arg.stride(0), res_out_arg.stride(0),
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, WRITE_PARTIALS=split_k > 1,
        USE_DOT=config.use_dot, DOT_ROWS=DOT_ROWS, DOT_FP32=dot_needs_fp32(x),
        HAS_BIAS=bias is not None, EVEN_K=even_k,
        GATED=gated, NORM=norm is not None, HAS_RESIDUAL=residual is not None,
        EVEN_STAT=k % block_stat == 0, BLOCK_STAT=block_stat,
        num_warps=config.num_warps, num_stages=config.num_stages, pdl=True,
    )
    if split_k > 1:
        block = 1024
        launch(gemv_reduce_kernel, (triton.cdiv(m * n, block),), target, bias_arg, out, n, m * n, split_k,
               HAS_BIAS=bias is not None, BLOCK=block, num_warps=4, pdl=True)
    return out


def ref_gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Torch reference for `gemv`: float32 products, rounded to x's dtype."""
    y = x.float() @ weight.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---- tuned tables ------------------------------------------------------------------------------


def config_file(device_name: str, table: str = "gemv") -> pathlib.Path:
    """The shipped table `table` (`gemv`, `gemv_fp8`) for `device_name` (as torch names the device)."""
    return CONFIG_DIR / f"{table}_{device_name.replace(' ', '_').replace('/', '_')}.json"


def parse_table(raw: dict, section: str = "shapes") -> dict[tuple[int, int, str], dict[int, Optional[GemvConfig]]]:
    """Table JSON -> {(N, K, dtype): {M: config, or None where cuBLAS is faster}}.

    JSON layout: `{"device": ..., "shapes": {"N=6144,K=4096,dtype=bf16": {"1": {config} | null, ...}},
    "ours": {...}}`. `section="ours"` reads the optional `ours` map: the fastest GEMV config per
    shape and M even where cuBLAS is faster (what a fused input, which cuBLAS cannot take, runs).
    """
    table = {}
    for key, per_m in raw.get(section, {}).items():
        fields = dict(part.split("=") for part in key.split(","))
        entry = {int(m): (GemvConfig(**cfg) if cfg else None) for m, cfg in per_m.items()}
        table[(int(fields["N"]), int(fields["K"]), fields["dtype"])] = entry
    return table


def table_key(n: int, k: int, dtype: torch.dtype) -> str:
    """The JSON key of a weight shape: `N={n},K={k},dtype={bf16|fp16}`."""
    return f"N={n},K={k},dtype={_dtype_name(dtype)}"


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


@functools.lru_cache(maxsize=None)
def _load(path: str, section: str) -> dict:
    p = pathlib.Path(path)
    return parse_table(json.loads(p.read_text()), section) if p.exists() else {}


def lookup_config(m: int, n: int, k: int, dtype: torch.dtype, device_name: str, *, table: str = "gemv",
                  env: str = CONFIG_ENV, section: str = "shapes") -> Optional[GemvConfig]:
    """The entry for weight (n, k), x dtype and m rows in a tuned table (uncached; see `gemv_config`):
    the file `$env` names, else the shipped `configs/<table>_<device>.json`; None for an m outside
    1..MAX_M, an untuned shape, or an m above the shape's largest tuned row count."""
    if not 1 <= m <= MAX_M:
        return None
    entries = _load(os.environ.get(env) or str(config_file(device_name, table)), section)
    per_m = entries.get((n, k, _dtype_name(dtype)))
    if not per_m:
        return None
    fits = [tuned for tuned in per_m if tuned >= m]
    return per_m[min(fits)] if fits else None


@functools.lru_cache(maxsize=4096)
def gemv_config(m: int, n: int, k: int, dtype: torch.dtype, device_name: str) -> Optional[GemvConfig]:
    """The tuned config for an [m, k] x [n, k]^T product on `device_name`, or None for cuBLAS.

    (n, k) is the weight's shape: a gated or normalized input uses its weight's entry unchanged.
    Reads `$LMLANG_GEMV_CONFIG` when set, else the shipped `configs/gemv_<device>.json`. An
    untuned (N, K) or an m above the table's largest tuned row count gives None; otherwise the
    entry of the smallest tuned row count >= m. Cached: the answer for a shape never changes
    within a process, so a CUDA graph captures the same choice it was warmed up with.
    """
    return lookup_config(m, n, k, dtype, device_name)


@functools.lru_cache(maxsize=4096)
def fused_gemv_config(m: int, n: int, k: int, dtype: torch.dtype, device_name: str) -> Optional[GemvConfig]:
    """The fastest GEMV config for weight (n, k) at m rows even where cuBLAS beats it on a plain
    input: the one to run with a gated or normalized input. The table's `ours` entry, else
    `gemv_config`'s; None where neither has one (then run the unfused kernels)."""
    return lookup_config(m, n, k, dtype, device_name, section="ours") or gemv_config(m, n, k, dtype, device_name)
