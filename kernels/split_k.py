"""Split-K ("flash decoding") pieces shared by the decode attention kernels.

A decode kernel's stage 1 gives each (request, head block, split) one program that walks its
`1 / NUM_SPLITS` share of the request's context with an online softmax and writes a partial
output and log-sum-exp per query head (`split_range`, `online_softmax_step`,
`store_split_partial`); stage 2 (`merge_splits`) weights the partials by their log-sum-exps into
the final output. The grid depends only on the batch size and the split count, never on context
lengths, so a launch can be captured in a CUDA graph and replayed with other lengths. A kernel that
merges inside its own launch (the last program of a group to finish) calls `merge_split_rows`.

Partials live in float32 buffers `mid_out` `[B, H, NUM_SPLITS, DV]` and `mid_lse`
`[B, H, NUM_SPLITS]`; an empty split has log-sum-exp -inf, writes no output and contributes
nothing (its output row is never read). Kernels that
call the `@triton.jit` helpers must import them by name (`launch` interprets the JIT functions it
finds in the kernel's module on CPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import launch, next_power_of_2, pdl_launch_dependents, pdl_wait

MERGE_BLOCK_DV = 64  # output features per merge program
MERGE_CHUNK = 16  # splits summed per step of a merge (bounds its registers)


@triton.jit
def split_range(kv_indptr_ptr, b, split, NUM_SPLITS: tl.constexpr, MIN_LEN: tl.constexpr = 1):
    """(start, lo, hi): request b's context starts at kv_indices[start]; this split walks [lo, hi).
    Splits are at least MIN_LEN rows long, so a short context fills the first few splits and
    leaves the rest empty (nothing to read, nothing to merge) instead of spreading a few rows
    over every split."""
    start = tl.load(kv_indptr_ptr + b)
    seq_len = tl.load(kv_indptr_ptr + b + 1) - start
    split_len = tl.maximum(tl.cdiv(seq_len, NUM_SPLITS), MIN_LEN)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, seq_len)
    return start, lo, hi


@triton.jit
def online_softmax_step(score, n_mask, v, sm_scale, m_i, l_i, acc):
    """Folds one block of raw scores [ROWS, BLOCK_N] and values [BLOCK_N, DV] into (m_i, l_i, acc)."""
    score = tl.where(n_mask[None, :], score * sm_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(score, axis=1))
    p = tl.exp(score - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return m_new, l_i, acc


@triton.jit
def store_split_partial(
    mid_out_ptr, mid_lse_ptr, acc, m_i, l_i, b, heads, head_mask, split, num_heads, offs_dv,
    DV: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    """Writes the log-sum-exp of `heads` for this split and, where the split saw any row, the
    normalized partial output (an empty split's output is never read: see `merge_split_rows`)."""
    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    mid = (b * num_heads + heads) * NUM_SPLITS + split  # row of (b, h, split)
    tl.store(mid_out_ptr + mid[:, None] * DV + offs_dv[None, :], out,
             mask=(head_mask & nonempty)[:, None] & (offs_dv[None, :] < DV))
    tl.store(mid_lse_ptr + mid, lse, mask=head_mask)


@triton.jit
def merge_split_rows(
    mid_out_ptr, mid_lse_ptr, rows, row_mask, offs_dv,
    DV: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK: tl.constexpr,
):
    """The merged outputs [R, BLOCK_DV] (float32) of partial rows `rows` ([R], b * H + h), summed in
    split order in chunks of CHUNK splits (bounded registers). Reads through L2 (`.cg`): partials
    written by other programs of the same launch must not come from a stale L1 line."""
    offs_s = tl.arange(0, BLOCK_S)
    lse = tl.load(mid_lse_ptr + rows[:, None] * NUM_SPLITS + offs_s[None, :],
                  mask=row_mask[:, None] & (offs_s[None, :] < NUM_SPLITS), other=float("-inf"),
                  cache_modifier=".cg")  # [R, BLOCK_S]
    m = tl.max(lse, axis=1)
    m = tl.where(m > float("-inf"), m, 0.0)  # all splits empty: keep exp's argument finite
    total = tl.sum(tl.where(lse > float("-inf"), tl.exp(lse - m[:, None]), 0.0), axis=1)
    acc = tl.zeros([rows.shape[0], offs_dv.shape[0]], tl.float32)
    offs_c = tl.arange(0, CHUNK)
    for c0 in tl.static_range(0, NUM_SPLITS, CHUNK):
        s = c0 + offs_c
        mask = row_mask[:, None] & (s[None, :] < NUM_SPLITS)  # [R, CHUNK]
        mid = rows[:, None] * NUM_SPLITS + s[None, :]
        lse_c = tl.load(mid_lse_ptr + mid, mask=mask, other=float("-inf"), cache_modifier=".cg")
        filled = lse_c > float("-inf")  # empty splits wrote no output: not read
        w = tl.where(filled, tl.exp(lse_c - m[:, None]), 0.0)
        parts = tl.load(mid_out_ptr + mid[:, :, None] * DV + offs_dv[None, None, :],
                        mask=(mask & filled)[:, :, None] & (offs_dv[None, None, :] < DV), other=0.0,
                        cache_modifier=".cg")  # [R, CHUNK, BLOCK_DV]
        acc += tl.sum(parts * w[:, :, None], axis=1)
    return acc / tl.where(total > 0, total, 1.0)[:, None]


@triton.jit
def split_k_merge_kernel(
    mid_out_ptr,  # [B * H, NUM_SPLITS, DV] float32
    mid_lse_ptr,  # [B * H, NUM_SPLITS] float32
    out_ptr,  # [B, H, DV]
    num_heads,
    stride_ob, stride_oh,
    DV: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
    CHUNK: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    # one program per (b * H + h, BLOCK_DV features): a wide latent (MLA's 512) merged over many
    # splits is spread over many programs instead of one program holding splits x DV partials
    pdl_launch_dependents(USE_PDL)
    rows = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)  # [1]
    offs_dv = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    pdl_wait(USE_PDL)
    out = merge_split_rows(mid_out_ptr, mid_lse_ptr, rows, rows >= 0, offs_dv, DV, NUM_SPLITS, BLOCK_S, CHUNK)
    b = rows // num_heads
    h = rows % num_heads
    tl.store(out_ptr + (b * stride_ob + h * stride_oh)[:, None] + offs_dv[None, :], out.to(out_ptr.dtype.element_ty),
             mask=offs_dv[None, :] < DV)


def split_partials(b: int, h: int, num_splits: int, dv: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty float32 (mid_out [b, h, num_splits, dv], mid_lse [b, h, num_splits]) for stage 1."""
    mid_out = torch.empty(b, h, num_splits, dv, dtype=torch.float32, device=device)
    mid_lse = torch.empty(b, h, num_splits, dtype=torch.float32, device=device)
    return mid_out, mid_lse


def merge_splits(mid_out: torch.Tensor, mid_lse: torch.Tensor, out: torch.Tensor, *, pdl: bool = False) -> None:
    """Stage 2: writes into out ([B, H, DV], last dim contiguous) the merge of the split partials.
    `pdl`: launch with programmatic dependent launch (see `launch`)."""
    b, h, num_splits, dv = mid_out.shape
    if mid_lse.shape != (b, h, num_splits) or out.shape != (b, h, dv) or out.stride(2) != 1:
        raise ValueError(
            f"merge_splits: mid_out {tuple(mid_out.shape)}, mid_lse {tuple(mid_lse.shape)} and "
            f"out {tuple(out.shape)} disagree (or out's last dim is not contiguous)"
        )
    block_dv = min(MERGE_BLOCK_DV, max(16, next_power_of_2(dv)))
    launch(
        split_k_merge_kernel, (b * h, triton.cdiv(dv, block_dv)), mid_out, mid_lse, out, h, out.stride(0),
        out.stride(1), DV=dv, NUM_SPLITS=num_splits, BLOCK_S=next_power_of_2(num_splits), BLOCK_DV=block_dv,
        CHUNK=min(MERGE_CHUNK, next_power_of_2(num_splits)), num_warps=4, pdl=pdl,
    )
