"""Prefill-style attention of ragged new tokens over paged KV, with an optional custom mask.

Used to verify a speculative draft tree in one target forward: the draft tokens of a request are
its new tokens, each may attend to the cached prefix and to its own ancestors in the tree, which
the caller states as `custom_mask[t, j]` (True = query token t may attend to context position j
of its sequence; the layout of `ForwardBatch.custom_mask`). Without a mask the attention is
causal: new token i of a sequence with `n` new tokens and context length `L` sees positions
0 .. L - n + i. The layout follows `ForwardBatch`: new tokens concatenated by `qo_indptr`; each
sequence's whole context (new tokens included, already stored) at the slots
`kv_indices[kv_indptr[b]:kv_indptr[b + 1]]`. Grouped-query attention: query head h reads KV
head h // (Hq / Hk). A query that may attend to nothing gets zeros.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import dot_needs_fp32, launch, next_power_of_2
from lmlang.kernels.paged_checks import check_gqa_buffers, check_one_device

_BLOCK_M = 16
_BLOCK_N = 32


@triton.jit
def tree_attention_kernel(
    q_ptr,  # [T, Hq, D]
    k_ptr,  # [slots, Hk, D]
    v_ptr,  # [slots, Hk, Dv]
    out_ptr,  # [T, Hq, Dv]
    mask_ptr,  # [T, max_context] bool (HAS_MASK)
    qo_indptr_ptr, kv_indptr_ptr, kv_indices_ptr,
    sm_scale,
    group_size,  # Hq / Hk
    stride_qt, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_ot, stride_oh, stride_mask,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, DOT_IN_FP32: tl.constexpr,  # see launch.dot_needs_fp32
):
    b = tl.program_id(0)
    pid_m = tl.program_id(1)
    h = tl.program_id(2)
    qo_start = tl.load(qo_indptr_ptr + b)
    qo_len = tl.load(qo_indptr_ptr + b + 1) - qo_start
    if pid_m * BLOCK_M >= qo_len:
        return
    kv_start = tl.load(kv_indptr_ptr + b)
    seq_len = tl.load(kv_indptr_ptr + b + 1) - kv_start
    prefix_len = seq_len - qo_len
    kv_head = h // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < qo_len
    tokens = (qo_start + offs_m).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + tokens[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & (offs_d[None, :] < D), other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    if HAS_MASK:
        end = seq_len
    else:  # causal: nothing past the block's last query position
        end = tl.minimum(seq_len, prefix_len + (pid_m + 1) * BLOCK_M)
    for n0 in range(0, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        slots = tl.load(kv_indices_ptr + kv_start + offs_n, mask=n_mask, other=0).to(tl.int64)
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :],
                    mask=n_mask[:, None] & (offs_d[None, :] < D), other=0.0)
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kv_head * stride_vh + offs_dv[None, :],
                    mask=n_mask[:, None] & (offs_dv[None, :] < DV), other=0.0)
        if DOT_IN_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if HAS_MASK:
            allowed = tl.load(mask_ptr + tokens[:, None] * stride_mask + offs_n[None, :],
                              mask=m_mask[:, None] & n_mask[None, :], other=0) != 0
        else:
            allowed = offs_n[None, :] <= prefix_len + offs_m[:, None]
        allowed = allowed & n_mask[None, :]
        score = tl.where(allowed, tl.dot(q, tl.trans(k)) * sm_scale, float("-inf"))  # [BLOCK_M, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(score, axis=1))
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)  # rows with nothing allowed yet
        p = tl.exp(score - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + tokens[:, None] * stride_ot + h * stride_oh + offs_dv[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & (offs_dv[None, :] < DV))


def _check(q, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices, custom_mask) -> None:
    check_gqa_buffers("tree_attention", q, k_buffer, v_buffer)
    if qo_indptr.dim() != 1 or kv_indptr.shape != qo_indptr.shape or kv_indices.dim() != 1:
        raise ValueError("tree_attention: qo_indptr and kv_indptr must both be [B + 1], kv_indices 1-D")
    if custom_mask is not None and (
        custom_mask.dim() != 2 or custom_mask.shape[0] != q.shape[0] or custom_mask.dtype != torch.bool
        or custom_mask.stride(1) != 1
    ):
        raise ValueError(f"tree_attention: custom_mask must be [T={q.shape[0]}, max_context] bool with contiguous rows")
    tensors = [q, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices]
    if custom_mask is not None:
        tensors.append(custom_mask)
    check_one_device("tree_attention", tensors)


def tree_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    custom_mask: Optional[torch.Tensor] = None,
    max_qo_len: Optional[int] = None,
) -> torch.Tensor:
    """Attention of the new tokens q ([T, Hq, D]) over their paged contexts; returns [T, Hq, Dv].

    k_buffer / v_buffer: [slots, Hk, D] / [slots, Hk, Dv]; qo_indptr, kv_indptr: [B + 1];
    kv_indices: context slots; custom_mask: [T, >= max context] bool or None (causal).
    `max_qo_len` (the most new tokens of any sequence) sizes the grid; pass it from host-side
    lengths to avoid a device sync, else it is read from qo_indptr.
    """
    _check(q, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices, custom_mask)
    t, hq, d = q.shape
    dv = v_buffer.shape[2]
    out = torch.empty(t, hq, dv, dtype=q.dtype, device=q.device)
    batch = qo_indptr.shape[0] - 1
    if max_qo_len is None:
        max_qo_len = int((qo_indptr[1:] - qo_indptr[:-1]).max()) if batch else 0
    if t == 0 or max_qo_len == 0:
        return out
    has_mask = custom_mask is not None
    launch(
        tree_attention_kernel, (batch, triton.cdiv(max_qo_len, _BLOCK_M), hq),
        q, k_buffer, v_buffer, out, custom_mask, qo_indptr, kv_indptr, kv_indices, sm_scale,
        hq // k_buffer.shape[1],
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        out.stride(0), out.stride(1), custom_mask.stride(0) if has_mask else 0,
        D=d, DV=dv, BLOCK_D=max(16, next_power_of_2(d)), BLOCK_DV=max(16, next_power_of_2(dv)),
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, HAS_MASK=has_mask, DOT_IN_FP32=dot_needs_fp32(q),
        num_warps=4, num_stages=2,
    )
    return out


def ref_tree_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    custom_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Torch reference for `tree_attention`, one sequence at a time in float32."""
    hq, group = q.shape[1], q.shape[1] // k_buffer.shape[1]
    out = torch.zeros(q.shape[0], hq, v_buffer.shape[2], dtype=torch.float32, device=q.device)
    qo, kv = qo_indptr.tolist(), kv_indptr.tolist()
    for b in range(len(qo) - 1):
        slots = kv_indices[kv[b] : kv[b + 1]].long()
        n_new, seq_len = qo[b + 1] - qo[b], kv[b + 1] - kv[b]
        k = k_buffer[slots].float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v_buffer[slots].float().repeat_interleave(group, dim=1)
        if custom_mask is not None:
            allowed = custom_mask[qo[b] : qo[b + 1], :seq_len]
        else:
            positions = torch.arange(seq_len, device=q.device)
            allowed = positions[None, :] <= (seq_len - n_new) + torch.arange(n_new, device=q.device)[:, None]
        score = torch.einsum("thd,lhd->htl", q[qo[b] : qo[b + 1]].float(), k) * sm_scale
        score = score.masked_fill(~allowed[None], float("-inf"))
        probs = torch.softmax(score, dim=-1).nan_to_num(0.0)  # a row with nothing allowed -> zeros
        out[qo[b] : qo[b + 1]] = torch.einsum("htl,lhd->thd", probs, v)
    return out.to(q.dtype)
