"""Decode attention for grouped-query (and plain multi-head) attention over a paged KV pool.

Each sequence has one new query token; its context (the new token included, already stored) is at
the slots `kv_indices[kv_indptr[b]:kv_indptr[b + 1]]` of per-layer K / V buffers
`[slots, Hk, D]` / `[slots, Hk, Dv]`. Query head h reads KV head h // (Hq / Hk).

Split-K ("flash decoding"): stage 1 gives each (sequence, KV head, split) one program, which
walks its `1 / num_kv_splits` share of the context once for all the query heads of that KV head
(so K and V rows are read once per group, not once per query head) and writes a partial output
and log-sum-exp; stage 2 merges the splits. The grid depends only on the batch size and
`num_kv_splits`, never on context lengths, so a launch can be captured in a CUDA graph and
replayed with other lengths.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import dot_needs_fp32, launch, next_power_of_2
from lmlang.kernels.paged_checks import check_gqa_buffers, check_one_device
from lmlang.kernels.split_k import merge_splits, online_softmax_step, split_partials, split_range, store_split_partial

_BLOCK_N = 64
DEFAULT_KV_SPLITS = 16


@triton.jit
def decode_attention_kernel(
    q_ptr,  # [B, Hq, D]
    k_ptr,  # [slots, Hk, D]
    v_ptr,  # [slots, Hk, Dv]
    kv_indptr_ptr,  # [B + 1]
    kv_indices_ptr,  # [total]
    mid_out_ptr,  # [B, Hq, NUM_SPLITS, Dv] float32
    mid_lse_ptr,  # [B, Hq, NUM_SPLITS] float32
    sm_scale,
    num_q_heads,
    group_size,  # Hq / Hk
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,  # see launch.dot_needs_fp32
):
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    start, lo, hi = split_range(kv_indptr_ptr, b, split, NUM_SPLITS)

    offs_g = tl.arange(0, BLOCK_G)
    g_mask = offs_g < group_size
    heads = kv_head * group_size + offs_g  # [BLOCK_G] query heads of this KV head
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    dv_mask = offs_dv < DV
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        slots = tl.load(kv_indices_ptr + start + offs_n, mask=n_mask, other=0).to(tl.int64)
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kv_head * stride_vh + offs_dv[None, :],
                    mask=n_mask[:, None] & dv_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_DV]
        if DOT_IN_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        score = tl.dot(q, tl.trans(k))  # [BLOCK_G, BLOCK_N]
        m_i, l_i, acc = online_softmax_step(score, n_mask, v, sm_scale, m_i, l_i, acc)

    store_split_partial(mid_out_ptr, mid_lse_ptr, acc, m_i, l_i, b, heads, g_mask, split, num_q_heads, offs_dv,
                        DV, NUM_SPLITS)


def _check(q, k_buffer, v_buffer, kv_indptr, kv_indices) -> None:
    check_gqa_buffers("decode_attention", q, k_buffer, v_buffer)
    if kv_indptr.shape != (q.shape[0] + 1,) or kv_indices.dim() != 1:
        raise ValueError(f"decode_attention: kv_indptr must be [B + 1] = [{q.shape[0] + 1}] and kv_indices 1-D")
    check_one_device("decode_attention", (q, k_buffer, v_buffer, kv_indptr, kv_indices))


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    num_kv_splits: int = DEFAULT_KV_SPLITS,
) -> torch.Tensor:
    """Attention of B one-token queries q ([B, Hq, D]) over their paged contexts; returns [B, Hq, Dv].

    k_buffer / v_buffer: [slots, Hk, D] / [slots, Hk, Dv]; kv_indptr: [B + 1] int32/int64;
    kv_indices: [kv_indptr[-1]] slots. A sequence with an empty context gets zeros.
    """
    _check(q, k_buffer, v_buffer, kv_indptr, kv_indices)
    if num_kv_splits < 1:
        raise ValueError(f"decode_attention: num_kv_splits must be >= 1, got {num_kv_splits}")
    b, hq, d = q.shape
    hk, dv = k_buffer.shape[1], v_buffer.shape[2]
    out = torch.empty(b, hq, dv, dtype=q.dtype, device=q.device)
    if b == 0:
        return out
    group = hq // hk
    mid_out, mid_lse = split_partials(b, hq, num_kv_splits, dv, q.device)
    launch(
        decode_attention_kernel, (b, hk, num_kv_splits),
        q, k_buffer, v_buffer, kv_indptr, kv_indices, mid_out, mid_lse, sm_scale, hq, group,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        D=d, DV=dv, BLOCK_D=max(16, next_power_of_2(d)), BLOCK_DV=max(16, next_power_of_2(dv)),
        BLOCK_G=max(16, next_power_of_2(group)), BLOCK_N=_BLOCK_N, NUM_SPLITS=num_kv_splits,
        DOT_IN_FP32=dot_needs_fp32(q), num_warps=4, num_stages=2,
    )
    merge_splits(mid_out, mid_lse, out)
    return out


def ref_decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
) -> torch.Tensor:
    """Torch reference for `decode_attention`, one sequence at a time in float32."""
    group = q.shape[1] // k_buffer.shape[1]
    out = torch.zeros(q.shape[0], q.shape[1], v_buffer.shape[2], dtype=torch.float32, device=q.device)
    bounds = kv_indptr.tolist()
    for b in range(q.shape[0]):
        slots = kv_indices[bounds[b] : bounds[b + 1]].long()
        if slots.numel() == 0:
            continue
        k = k_buffer[slots].float().repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v_buffer[slots].float().repeat_interleave(group, dim=1)  # [n, Hq, Dv]
        score = torch.einsum("hd,nhd->hn", q[b].float(), k) * sm_scale
        out[b] = torch.einsum("hn,nhd->hd", torch.softmax(score, dim=-1), v)
    return out.to(q.dtype)
