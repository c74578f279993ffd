"""MLA decode attention over a latent KV cache (DeepSeek-V2/V3 with weight absorption).

With W_UK absorbed into the query, every head attends over the same cached latent rows
`[c_kv (kv_lora_rank) | k_pe (rope_dim)]`:
    score[h, j] = (q_nope_absorbed[h] . c_kv[j] + q_pe[h] . k_pe[j]) * sm_scale
    out[h]      = sum_j softmax(score[h])[j] * c_kv[j]                     # [kv_lora_rank]
(the caller applies W_UV to `out`). Since all heads share one KV row, a program takes a block of
`block_h` heads, so each latent tile is loaded once per head block, not once per head.

Split-K ("flash decoding"): stage 1 splits each request's context into `num_kv_splits` ranges
and writes per-split partial outputs and log-sum-exps; stage 2 (`split_k.merge_splits`, one
program per (request, head, 64 latent features)) merges them. Context slots come as CSR: request
b's slots are `kv_indices[kv_indptr[b]:kv_indptr[b + 1]]`. Both launches use programmatic
dependent launch: stage 1 reads its context range (indptr, host-written) before waiting for the
kernel that produced q and stored the new token's latent row; stage 2 launches while stage 1 runs.

Cost model: per context token a head block reads R + P cache values and does 2 (R + P) + 2 R
FLOP per head. With few heads (DeepSeek-V2-Lite: 16) that is ~30 FLOP per byte and the kernel is
bandwidth-bound: it needs many programs in flight, so at small batch the context is split into
more ranges (`default_num_splits`, which depends on the batch and head count only, never on
context lengths, so a launch stays CUDA-graph safe). At batch 1 that is `MAX_SPLITS` ranges, one
128-row tile per program at ctx 4k: the kernel is latency-bound there (a layer's whole 4k-token
cache is 4.7 MB, about a microsecond of bandwidth), and one wave of single-tile programs plus a
wide merge is the shortest chain of dependent loads. With 128 heads (V3) it is ~240 FLOP per
byte, i.e. bound by the tensor cores. The grid's fastest axis is the head block, so the programs
that read one (request, split) tile run side by side and share it through L2.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import dot_needs_fp32, launch, next_power_of_2, pdl_launch_dependents, pdl_wait
from lmlang.kernels.paged_checks import check_one_device
from lmlang.kernels.split_k import merge_splits, online_softmax_step, split_partials, split_range, store_split_partial

MAX_SPLITS = 32  # batch 1-4, ctx 4k, 16 heads, 16x128 tiles on the H200: 32 splits beat 16 and 64
PROGRAMS_PER_SM = 2  # stage-1 programs wanted per multiprocessor when splitting contexts


@dataclass(frozen=True)
class MLADecodeConfig:
    """Stage-1 tiling: `block_h` heads x `block_n` context rows per step (tl.dot needs >= 16 each)."""

    block_h: int = 16
    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_h", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"MLADecodeConfig.{name} must be a power of two >= 16, got {value}")


def default_config(num_heads: int) -> MLADecodeConfig:
    """The tiling for `num_heads` heads: few heads (bandwidth-bound) take longer context tiles,
    so each program keeps more bytes in flight."""
    if num_heads <= 16:  # 16x128 w8: the fastest tiling at batch 1-4 and 32-128 on the H200
        return MLADecodeConfig(block_h=16, block_n=128, num_warps=8, num_stages=2)
    return MLADecodeConfig(block_h=32, block_n=32, num_warps=4, num_stages=2)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter runs programs one by one: split only when asked
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_num_splits(batch: int, num_heads: int, config: MLADecodeConfig, device: torch.device) -> int:
    """Context splits per request: enough stage-1 programs to fill the device
    (`PROGRAMS_PER_SM` per multiprocessor), at most `MAX_SPLITS`. Depends on the batch and head
    count only (CUDA-graph safe)."""
    programs = max(1, batch * triton.cdiv(num_heads, config.block_h))
    wanted = PROGRAMS_PER_SM * _multiprocessors(device)
    return max(1, min(MAX_SPLITS, triton.cdiv(wanted, programs)))


@triton.jit
def mla_decode_kernel(
    q_nope_ptr,  # [B, H, R]
    q_pe_ptr,  # [B, H, P]
    kv_ptr,  # [slots, 1, R + P]
    kv_indptr_ptr,  # [B + 1]
    kv_indices_ptr,  # [total]
    mid_out_ptr,  # [B, H, NUM_SPLITS, R] float32
    mid_lse_ptr,  # [B, H, NUM_SPLITS] float32
    sm_scale,
    num_heads,
    stride_qb, stride_qh, stride_pb, stride_ph, stride_kv,
    R: tl.constexpr, P: tl.constexpr, NUM_SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,  # see launch.dot_needs_fp32
    USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    # head block fastest: the programs sharing one (request, split) tile are adjacent (L2 reuse)
    offs_h = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    split = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    start, lo, hi = split_range(kv_indptr_ptr, b, split, NUM_SPLITS, BLOCK_N)  # host-written: before the wait
    pdl_wait(USE_PDL)  # q and the new token's latent row come from the kernels before
    h_mask = offs_h < num_heads
    offs_r = tl.arange(0, BLOCK_R)
    offs_p = tl.arange(0, BLOCK_P)
    r_mask = offs_r < R
    p_mask = offs_p < P
    q = tl.load(q_nope_ptr + b * stride_qb + offs_h[:, None] * stride_qh + offs_r[None, :],
                mask=h_mask[:, None] & r_mask[None, :], other=0.0)
    q_pe = tl.load(q_pe_ptr + b * stride_pb + offs_h[:, None] * stride_ph + offs_p[None, :],
                   mask=h_mask[:, None] & p_mask[None, :], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
        q_pe = q_pe.to(tl.float32)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        slots = tl.load(kv_indices_ptr + start + offs_n, mask=n_mask, other=0).to(tl.int64)
        c_kv = tl.load(kv_ptr + slots[:, None] * stride_kv + offs_r[None, :],
                       mask=n_mask[:, None] & r_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_R]
        k_pe = tl.load(kv_ptr + slots[:, None] * stride_kv + R + offs_p[None, :],
                       mask=n_mask[:, None] & p_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
        if DOT_IN_FP32:
            c_kv = c_kv.to(tl.float32)
            k_pe = k_pe.to(tl.float32)
        score = tl.dot(q, tl.trans(c_kv)) + tl.dot(q_pe, tl.trans(k_pe))  # [BLOCK_H, BLOCK_N]
        m_i, l_i, acc = online_softmax_step(score, n_mask, c_kv, sm_scale, m_i, l_i, acc)

    store_split_partial(mid_out_ptr, mid_lse_ptr, acc, m_i, l_i, b, offs_h, h_mask, split, num_heads, offs_r,
                        R, NUM_SPLITS)


def _check(q_nope, q_pe, kv_cache, kv_indptr, kv_indices) -> None:
    if q_nope.dim() != 3 or q_pe.dim() != 3 or q_nope.shape[:2] != q_pe.shape[:2]:
        raise ValueError(f"mla_decode: q_nope {tuple(q_nope.shape)} and q_pe {tuple(q_pe.shape)} must be [B, H, *]")
    if kv_cache.dim() != 3 or kv_cache.shape[1] != 1 or kv_cache.shape[2] != q_nope.shape[2] + q_pe.shape[2]:
        raise ValueError(
            f"mla_decode: kv_cache {tuple(kv_cache.shape)} must be [slots, 1, {q_nope.shape[2]} + {q_pe.shape[2]}]"
        )
    if q_nope.stride(2) != 1 or q_pe.stride(2) != 1 or not kv_cache.is_contiguous():
        raise ValueError("mla_decode: the feature dims of q_nope / q_pe and the whole kv_cache must be contiguous")
    if q_nope.dtype != kv_cache.dtype or q_pe.dtype != kv_cache.dtype:
        raise ValueError(f"mla_decode: q dtypes {q_nope.dtype}/{q_pe.dtype} differ from the cache's {kv_cache.dtype}")
    if kv_indptr.shape != (q_nope.shape[0] + 1,) or kv_indices.dim() != 1:
        raise ValueError(f"mla_decode: kv_indptr must be [B + 1] = [{q_nope.shape[0] + 1}] and kv_indices 1-D")
    check_one_device("mla_decode", (q_nope, q_pe, kv_cache, kv_indptr, kv_indices))


def mla_decode(
    q_nope_absorbed: torch.Tensor,
    q_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    num_kv_splits: Optional[int] = None,
    config: Optional[MLADecodeConfig] = None,
) -> torch.Tensor:
    """Decode attention of B one-token queries over their latent contexts.

    q_nope_absorbed: [B, H, R]; q_pe: [B, H, P] (rotated); kv_cache: [slots, 1, R + P];
    kv_indptr: [B + 1] int32/int64; kv_indices: [kv_indptr[-1]] (or more) int32/int64 slots.
    Returns [B, H, R] in the query dtype; a request with an empty context gets zeros.
    `num_kv_splits` / `config` default to `default_num_splits` / `default_config`.
    """
    _check(q_nope_absorbed, q_pe, kv_cache, kv_indptr, kv_indices)
    b, h, r = q_nope_absorbed.shape
    p = q_pe.shape[2]
    out = torch.empty(b, h, r, dtype=q_nope_absorbed.dtype, device=q_nope_absorbed.device)
    if b == 0 or h == 0:
        return out
    config = config or default_config(h)
    if num_kv_splits is None:
        num_kv_splits = default_num_splits(b, h, config, out.device)
    if num_kv_splits < 1:
        raise ValueError(f"mla_decode: num_kv_splits must be >= 1, got {num_kv_splits}")
    mid_out, mid_lse = split_partials(b, h, num_kv_splits, r, out.device)
    launch(
        mla_decode_kernel, (triton.cdiv(h, config.block_h), num_kv_splits, b),
        q_nope_absorbed, q_pe, kv_cache, kv_indptr, kv_indices, mid_out, mid_lse, sm_scale, h,
        q_nope_absorbed.stride(0), q_nope_absorbed.stride(1), q_pe.stride(0), q_pe.stride(1), kv_cache.stride(0),
        R=r, P=p, NUM_SPLITS=num_kv_splits, BLOCK_H=config.block_h, BLOCK_N=config.block_n,
        BLOCK_R=next_power_of_2(r), BLOCK_P=max(16, next_power_of_2(p)),
        DOT_IN_FP32=dot_needs_fp32(kv_cache), num_warps=config.num_warps, num_stages=config.num_stages, pdl=True,
    )
    merge_splits(mid_out, mid_lse, out, pdl=True)
    return out


def ref_mla_decode(
    q_nope_absorbed: torch.Tensor,
    q_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
) -> torch.Tensor:
    """Torch reference for `mla_decode`, one request at a time in float32."""
    r = q_nope_absorbed.shape[2]
    out = torch.zeros(q_nope_absorbed.shape, dtype=torch.float32, device=q_nope_absorbed.device)
    bounds = kv_indptr.tolist()
    for b in range(q_nope_absorbed.shape[0]):
        rows = kv_cache[kv_indices[bounds[b] : bounds[b + 1]].long(), 0].float()  # [n, R + P]
        if rows.shape[0] == 0:
            continue
        c_kv, k_pe = rows[:, :r], rows[:, r:]
        score = (q_nope_absorbed[b].float() @ c_kv.t() + q_pe[b].float() @ k_pe.t()) * sm_scale  # [H, n]
        out[b] = torch.softmax(score, dim=-1) @ c_kv
    return out.to(q_nope_absorbed.dtype)
