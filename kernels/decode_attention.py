"""Decode attention for grouped-query (and plain multi-head) attention over a paged KV pool.

Each sequence has one new query token; its context (the new token included) is at the slots
`kv_indices[kv_indptr[b]:kv_indptr[b + 1]]` of per-layer K / V buffers `[slots, Hk, D]` /
`[slots, Hk, Dv]`. Query head h reads KV head h // (Hq / Hk).

Split-K ("flash decoding"): each (sequence, KV head, split) gets one program, which walks its
`1 / num_kv_splits` share of the context once for all the query heads of that KV head (so K and
V rows are read once per group, not once per query head) and writes a partial output and
log-sum-exp; the partials are then merged. The grid depends only on the batch size and
`num_kv_splits`, never on context lengths, so a launch can be captured in a CUDA graph and
replayed with other lengths (`small_batch_kv_splits` picks splits that way).

One launch per layer, when asked (all keyword-only options of `decode_attention`):
- `counters`: the merge happens in the same launch. Every program stores its partial, then adds
  1 to its (sequence, KV head) counter (acq_rel); the program that sees `num_kv_splits - 1`
  arrived last, merges the partials of its query heads in split order (so the result does not
  depend on arrival order), writes the output and sets the counter back to 0, so the buffer is
  reusable across calls and graph replays without a memset. With one split the output is
  written directly, with or without counters.
- `new_kv` (+ `rope`): the new token's k / v come from the projection's output instead of the
  pool. q and k_new are rotated in float32 exactly as `rotary.ref_apply_rotary` does (same
  products and sums, no fused multiply-add) and rounded to their dtype; the split that owns the
  context's last position attends to the new token from registers and stores the rotated k and v
  at `out_cache_loc[b]` (the slot the engine put last in the context, which no program reads from
  the pool). That store happens even for an empty context (by split 0), as `store_kv` would.
- PDL (`launch.launch(pdl=True)`): a program lets the next kernel launch at once. With `new_kv` it
  reads the indices, positions, slots and its first context tile before waiting for the previous
  kernel (whose output is q and the new k / v), so that chain of dependent loads overlaps the
  previous kernel's tail. This relies on the index buffers, positions and slots being written
  by host copies or by kernels that finished before the forward began (true of the batch builder
  and of CUDA-graph replays). Without `new_kv` the previous kernel stored the new token's row, so
  the program waits before any read.

Cost at small batch (Llama-3.1-8B: Hq 32, Hk 8, D 128): the KV read is a few MB, about a
microsecond of bandwidth, so the kernel is bound by the latency of its dependent loads
(indptr -> indices -> K/V rows) and by filling the multiprocessors: `small_batch_kv_splits`
gives about one program per multiprocessor, each reading one or two `block_n` tiles at ctx 1k.
`DecodeAttentionConfig.use_dot` picks tensor-core scores (the group padded to 16 rows) or FMA
reductions over the group's real rows; which is faster is measured by `benchmarks/kernels.py
--only decode_attention_small`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import dot_needs_fp32, launch, next_power_of_2, pdl_launch_dependents, pdl_wait
from lmlang.kernels.paged_checks import check_gqa_buffers, check_one_device
from lmlang.kernels.rounding import round_to
from lmlang.kernels.split_k import MERGE_CHUNK, merge_split_rows, merge_splits, split_partials, store_split_partial

DEFAULT_KV_SPLITS = 16
MAX_SPLITS = 64  # the fused merge reads group x splits x Dv float32 partials in one program
MIN_SPLIT_TOKENS = 32  # a split shorter than this costs more in partials than it gains


@dataclass(frozen=True)
class DecodeAttentionConfig:
    """Tiling of a program: `block_n` context rows per step (a power of two >= 16);
    `use_dot`: scores and P.V on tensor cores (tl.dot, the GQA group padded to 16 rows) or as
    float32 FMA reductions over the group's own rows (padded to a power of two). The kernel
    pipelines its context walk itself, so `num_stages` > 1 only adds Triton's pipeliner on top."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 1
    use_dot: bool = True

    def __post_init__(self) -> None:
        if self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise ValueError(f"DecodeAttentionConfig.block_n must be a power of two >= 16, got {self.block_n}")


def small_batch_kv_splits(
    batch_size: int, num_kv_heads: int, max_context: int, num_sms: int, *, programs_per_sm: int = 1,
) -> int:
    """Context splits for a decode batch, from constants only (CUDA-graph safe):
    `programs_per_sm * num_sms // (batch_size * num_kv_heads)` programs per (sequence, KV head),
    so the grid fills the multiprocessors without a partial second wave; at least 1, at most
    `MAX_SPLITS` and at most `ceil(max_context / MIN_SPLIT_TOKENS)`.
    E.g. H200 (132 SMs), 8 KV heads: B=1 -> 16, B=2 -> 8, B=4 -> 4, B=8 -> 2, B>=16 -> 1."""
    if batch_size < 1 or num_kv_heads < 1 or max_context < 1 or num_sms < 1 or programs_per_sm < 1:
        raise ValueError("small_batch_kv_splits: all arguments must be >= 1")
    fill = programs_per_sm * num_sms // (batch_size * num_kv_heads)
    return max(1, min(fill, MAX_SPLITS, triton.cdiv(max_context, MIN_SPLIT_TOKENS)))


@triton.jit
def _mul_exact(a, b, EXACT_MUL: tl.constexpr):
    """float32 a * b rounded on its own, as torch computes it: PTX `mul.rn` is never contracted
    into an FMA and, unlike libdevice's, does not flush denormals (the interpreter never fuses)."""
    if EXACT_MUL:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return a * b


@triton.jit
def _rope_partner(offs_d, ROT_DIM: tl.constexpr, IS_NEOX: tl.constexpr):
    """(partner feature, frequency index, is-first-of-its-pair) of each feature < ROT_DIM."""
    HALF = ROT_DIM // 2
    if IS_NEOX:  # feature i pairs with i + HALF
        first = offs_d < HALF
        return tl.where(first, offs_d + HALF, offs_d - HALF), tl.where(first, offs_d, offs_d - HALF), first
    else:  # GPT-J: feature 2i pairs with 2i + 1
        return offs_d ^ 1, offs_d // 2, (offs_d % 2) == 0


@triton.jit
def _load_rows(rows_ptr, mask, offs_d, ROPE: tl.constexpr, ROT_DIM: tl.constexpr, IS_NEOX: tl.constexpr):
    """(rows, their rotary partners) [R, BLOCK_D] as float32; rows_ptr [R, 1] (or a scalar) points
    at each row's first feature. The partners are zeros without ROPE."""
    x = tl.load(rows_ptr + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        partner, _, _ = _rope_partner(offs_d, ROT_DIM, IS_NEOX)
        xp = tl.load(rows_ptr + partner[None, :], mask=mask & (offs_d < ROT_DIM)[None, :], other=0.0)
        return x, xp.to(tl.float32)
    else:
        return x, tl.zeros_like(x)


@triton.jit
def _rotate(x, xp, cos, sin, offs_d, dtype: tl.constexpr, ROT_DIM: tl.constexpr, IS_NEOX: tl.constexpr,
            EXACT_MUL: tl.constexpr):
    """Rows x [R, BLOCK_D] (float32 holding `dtype` values) rotated like `rotary.ref_apply_rotary`:
    for a pair (a, b), a' = a cos - b sin and b' = b cos + a sin with cos / sin and each product
    rounded to `dtype` (the sum is left for the caller to round); features >= ROT_DIM pass through."""
    _, _, first = _rope_partner(offs_d, ROT_DIM, IS_NEOX)
    xc = round_to(_mul_exact(x, round_to(cos, dtype)[None, :], EXACT_MUL), dtype)
    xs = round_to(_mul_exact(xp, round_to(sin, dtype)[None, :], EXACT_MUL), dtype)
    return tl.where((offs_d < ROT_DIM)[None, :], tl.where(first[None, :], xc - xs, xc + xs), x)


@triton.jit
def _tile_slots(kv_indices_ptr, start, n0, hi, BLOCK_N: tl.constexpr):
    """(n_mask, slots) [BLOCK_N] of context positions [n0, min(n0 + BLOCK_N, hi))."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < hi
    return n_mask, tl.load(kv_indices_ptr + start + offs_n, mask=n_mask, other=0).to(tl.int64)


@triton.jit
def _gather_tile(k_ptr, v_ptr, slots, n_mask, kv_head, offs_d, offs_dv, d_mask, dv_mask,
                 stride_ks, stride_kh, stride_vs, stride_vh):
    """(K [BLOCK_N, BLOCK_D], V [BLOCK_N, BLOCK_DV]) rows of `slots`: V is issued with K, before
    any softmax math needs it."""
    k = tl.load(k_ptr + slots[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :],
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    v = tl.load(v_ptr + slots[:, None] * stride_vs + kv_head * stride_vh + offs_dv[None, :],
                mask=n_mask[:, None] & dv_mask[None, :], other=0.0)
    return k, v


@triton.jit
def _attend_tile(q, q_op, k, v, n_mask, sm_scale, m_i, l_i, acc,
                 BLOCK_G: tl.constexpr, USE_DOT: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """Folds one tile into the online softmax (m_i, l_i [BLOCK_G], acc [BLOCK_G, BLOCK_DV]).
    q: float32 [BLOCK_G, BLOCK_D]; q_op: q as tl.dot's operand (USE_DOT). Without USE_DOT each
    query head is a row of FMA reductions (one [BLOCK_N, BLOCK_D] product live at a time)."""
    rows = tl.arange(0, BLOCK_G)[:, None]
    if USE_DOT:
        if DOT_IN_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        score = tl.dot(q_op, tl.trans(k))  # [BLOCK_G, BLOCK_N]
    else:
        k = k.to(tl.float32)
        score = tl.zeros([BLOCK_G, k.shape[0]], tl.float32)
        for g in tl.static_range(BLOCK_G):
            q_g = tl.sum(tl.where(rows == g, q, 0.0), axis=0)  # [BLOCK_D]
            score = tl.where(rows == g, tl.sum(k * q_g[None, :], axis=1)[None, :], score)
    score = tl.where(n_mask[None, :], score * sm_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(score, axis=1))
    p = tl.exp(score - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    if USE_DOT:
        pv = tl.dot(p.to(v.dtype), v)
    else:
        v = v.to(tl.float32)
        pv = tl.zeros([BLOCK_G, v.shape[1]], tl.float32)
        for g in tl.static_range(BLOCK_G):
            p_g = tl.sum(tl.where(rows == g, p, 0.0), axis=0)  # [BLOCK_N]
            pv = tl.where(rows == g, tl.sum(p_g[:, None] * v, axis=0)[None, :], pv)
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc * alpha[:, None] + pv


@triton.jit
def decode_attention_kernel(
    q_ptr,  # [B, Hq, D]
    k_ptr,  # [slots, Hk, D]
    v_ptr,  # [slots, Hk, Dv]
    kv_indptr_ptr,  # [B + 1]
    kv_indices_ptr,  # [total]
    mid_out_ptr,  # [B, Hq, NUM_SPLITS, Dv] float32
    mid_lse_ptr,  # [B, Hq, NUM_SPLITS] float32
    out_ptr,  # [B, Hq, Dv]: written when DIRECT_OUT or USE_COUNTERS
    counters_ptr,  # [>= B * Hk] int32, USE_COUNTERS
    k_new_ptr, v_new_ptr, out_loc_ptr,  # [B, Hk, D], [B, Hk, Dv], [B]: NEW_KV
    positions_ptr, cos_sin_ptr,  # [B], [max_pos, ROT_DIM]: ROPE
    sm_scale, num_q_heads, num_kv_heads, group_size,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
    stride_knb, stride_knh, stride_vnb, stride_vnh, stride_ob, stride_oh,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_GM: tl.constexpr, MERGE_CHUNK: tl.constexpr, USE_DOT: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    DIRECT_OUT: tl.constexpr, USE_COUNTERS: tl.constexpr, NEW_KV: tl.constexpr,
    ROPE: tl.constexpr, ROT_DIM: tl.constexpr, IS_NEOX: tl.constexpr, EXACT_MUL: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    # Warps issue in order, so the code is ordered by latency: the loads that need nothing are issued
    # first, then the dependent chain indptr -> kv_indices -> first K/V tile, and only then the
    # rotary math, which waits on cos/sin loads that were in flight meanwhile. The context walk is
    # pipelined by hand (num_stages=1 is meant): Triton's pipeliner would issue the first tile's
    # loads after the rotary math.
    pdl_launch_dependents(USE_PDL)
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    offs_g = tl.arange(0, BLOCK_G)
    g_mask = offs_g < group_size
    heads = kv_head * group_size + offs_g  # [BLOCK_G] query heads of this KV head
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < D
    dv_mask = offs_dv < DV
    dtype = q_ptr.dtype.element_ty

    # Before the PDL wait only what no kernel of this forward writes is read: the index buffers,
    # positions and slots (host copies, or kernels that finished before the forward began) and,
    # with NEW_KV, the context's K/V rows (earlier steps; this step's row is not read from the pool).
    # Without NEW_KV the previous kernel has just stored the new row, so the wait comes first.
    if not NEW_KV:
        pdl_wait(USE_PDL)
    start = tl.load(kv_indptr_ptr + b)
    seq_len = tl.load(kv_indptr_ptr + b + 1) - start
    if ROPE:
        pos = tl.load(positions_ptr + b).to(tl.int64)
    if NEW_KV:
        slot = tl.load(out_loc_ptr + b).to(tl.int64)
    split_len = tl.cdiv(seq_len, NUM_SPLITS)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, seq_len)
    if NEW_KV:
        last = seq_len - 1  # the new token's position; its slot is out_loc[b], never read from the pool
        owner = (lo <= last) & (last < hi)
        hi = tl.minimum(hi, last)
    # the slots of tile i + 2 and the rows of tile i + 1 are in flight while tile i is computed
    n_mask, slots = _tile_slots(kv_indices_ptr, start, lo, hi, BLOCK_N)
    next_mask, next_slots = _tile_slots(kv_indices_ptr, start, lo + BLOCK_N, hi, BLOCK_N)
    if ROPE:
        _, freq, _ = _rope_partner(offs_d, ROT_DIM, IS_NEOX)
        rot = offs_d < ROT_DIM
        cos = tl.load(cos_sin_ptr + pos * ROT_DIM + freq, mask=rot, other=1.0).to(tl.float32)
        sin = tl.load(cos_sin_ptr + pos * ROT_DIM + ROT_DIM // 2 + freq, mask=rot, other=0.0).to(tl.float32)
    k, v = _gather_tile(k_ptr, v_ptr, slots, n_mask, kv_head, offs_d, offs_dv, d_mask, dv_mask,
                        stride_ks, stride_kh, stride_vs, stride_vh)
    if NEW_KV:
        pdl_wait(USE_PDL)  # q and the new k / v are the previous kernel's output
    q, q_partner = _load_rows(q_ptr + b * stride_qb + heads[:, None] * stride_qh,
                              g_mask[:, None] & d_mask[None, :], offs_d, ROPE, ROT_DIM, IS_NEOX)
    if NEW_KV:
        k_new, k_partner = _load_rows(k_new_ptr + b * stride_knb + kv_head * stride_knh, d_mask[None, :],
                                      offs_d, ROPE, ROT_DIM, IS_NEOX)  # [1, BLOCK_D]
        v_new = tl.load(v_new_ptr + b * stride_vnb + kv_head * stride_vnh + offs_dv[None, :],
                        mask=dv_mask[None, :], other=0.0)  # [1, BLOCK_DV]

    if ROPE:
        q = _rotate(q, q_partner, cos, sin, offs_d, dtype, ROT_DIM, IS_NEOX, EXACT_MUL)
    q = round_to(q, dtype)  # [BLOCK_G, BLOCK_D] float32 holding dtype values
    q_op = q if DOT_IN_FP32 else q.to(dtype)
    if NEW_KV:
        if ROPE:
            k_new = _rotate(k_new, k_partner, cos, sin, offs_d, dtype, ROT_DIM, IS_NEOX, EXACT_MUL)
        k_new = round_to(k_new, dtype)
        # one program per (b, kv_head) writes the new row: the owner, or split 0 of an empty context
        # (masks are bounds on the feature index: the interpreter cannot mask with a broadcast scalar bool)
        writes_new = owner | ((seq_len <= 0) & (split == 0))
        tl.store(k_ptr + slot * stride_ks + kv_head * stride_kh + offs_d[None, :], k_new.to(dtype),
                 mask=offs_d[None, :] < tl.where(writes_new, D, 0))
        tl.store(v_ptr + slot * stride_vs + kv_head * stride_vh + offs_dv[None, :], v_new,
                 mask=offs_dv[None, :] < tl.where(writes_new, DV, 0))

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        next_k, next_v = _gather_tile(k_ptr, v_ptr, next_slots, next_mask, kv_head, offs_d, offs_dv, d_mask,
                                      dv_mask, stride_ks, stride_kh, stride_vs, stride_vh)
        after_mask, after_slots = _tile_slots(kv_indices_ptr, start, n0 + 2 * BLOCK_N, hi, BLOCK_N)
        m_i, l_i, acc = _attend_tile(q, q_op, k, v, n_mask, sm_scale, m_i, l_i, acc, BLOCK_G, USE_DOT,
                                       DOT_IN_FP32)
        n_mask, k, v = next_mask, next_k, next_v
        next_mask, next_slots = after_mask, after_slots
    if NEW_KV:
        if owner:  # the new token, from registers
            s_new = tl.sum(q * k_new, axis=1) * sm_scale  # [BLOCK_G]
            m_new = tl.maximum(m_i, s_new)
            alpha = tl.exp(m_i - m_new)
            p_new = tl.exp(s_new - m_new)
            acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)
            l_i = l_i * alpha + p_new
            m_i = m_new

    if DIRECT_OUT:  # one split: this program's result is the output
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_dv[None, :], out.to(dtype),
                 mask=g_mask[:, None] & dv_mask[None, :])
    else:
        store_split_partial(mid_out_ptr, mid_lse_ptr, acc, m_i, l_i, b, heads, g_mask, split, num_q_heads, offs_dv,
                            DV, NUM_SPLITS)
        if USE_COUNTERS:
            tl.debug_barrier()  # all threads' partial stores precede the release below
            counter = counters_ptr + b * num_kv_heads + kv_head
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == NUM_SPLITS - 1:  # the last split of (b, kv_head) to finish: merge
                offs_m = tl.arange(0, BLOCK_GM)
                m_mask = offs_m < group_size
                m_heads = kv_head * group_size + offs_m
                out = merge_split_rows(mid_out_ptr, mid_lse_ptr, b * num_q_heads + m_heads, m_mask, offs_dv,
                                       DV, NUM_SPLITS, BLOCK_S, MERGE_CHUNK)
                tl.store(out_ptr + b * stride_ob + m_heads[:, None] * stride_oh + offs_dv[None, :], out.to(dtype),
                         mask=m_mask[:, None] & dv_mask[None, :])
                tl.store(counter, 0)  # every split has arrived: reset for the next call


def _check(q, k_buffer, v_buffer, kv_indptr, kv_indices) -> None:
    check_gqa_buffers("decode_attention", q, k_buffer, v_buffer)
    if kv_indptr.shape != (q.shape[0] + 1,) or kv_indices.dim() != 1:
        raise ValueError(f"decode_attention: kv_indptr must be [B + 1] = [{q.shape[0] + 1}] and kv_indices 1-D")
    check_one_device("decode_attention", (q, k_buffer, v_buffer, kv_indptr, kv_indices))


def _check_new_kv(q, k_buffer, v_buffer, new_kv, rope) -> None:
    b, hk = q.shape[0], k_buffer.shape[1]
    k_new, v_new, loc = new_kv
    for name, t, buf in (("k_new", k_new, k_buffer), ("v_new", v_new, v_buffer)):
        if t.shape != (b, hk, buf.shape[2]) or t.dtype != buf.dtype or t.stride(2) != 1:
            raise ValueError(
                f"decode_attention: {name} must be [B, Hk, {buf.shape[2]}] = [{b}, {hk}, {buf.shape[2]}] {buf.dtype} "
                f"with contiguous features, got {tuple(t.shape)} {t.dtype} strides {t.stride()}"
            )
    if loc.shape != (b,) or loc.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"decode_attention: out_cache_loc must be [B] int32/int64, got {tuple(loc.shape)} {loc.dtype}")
    tensors = [q, k_new, v_new, loc]
    if rope is not None:
        positions, cos_sin_cache, _ = rope
        if positions.shape != (b,) or positions.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"decode_attention: positions must be [B] int32/int64, got {tuple(positions.shape)} {positions.dtype}"
            )
        rotary_dim = cos_sin_cache.shape[-1]
        if cos_sin_cache.dim() != 2 or not cos_sin_cache.is_contiguous() or rotary_dim % 2 or rotary_dim > q.shape[2]:
            raise ValueError(
                "decode_attention: cos_sin_cache must be a contiguous [max_position, rotary_dim] tensor with an even "
                f"rotary_dim <= head_dim {q.shape[2]}, got {tuple(cos_sin_cache.shape)}"
            )
        tensors += [positions, cos_sin_cache]
    check_one_device("decode_attention", tensors)


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    num_kv_splits: int = DEFAULT_KV_SPLITS,
    *,
    counters: Optional[torch.Tensor] = None,
    new_kv: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    rope: Optional[tuple[torch.Tensor, torch.Tensor, bool]] = None,
    config: Optional[DecodeAttentionConfig] = None,
) -> torch.Tensor:
    """Attention of B one-token queries q ([B, Hq, D], strided rows allowed) over their paged
    contexts; returns [B, Hq, Dv]. A sequence with an empty context gets zeros.

    k_buffer / v_buffer: [slots, Hk, D] / [slots, Hk, Dv]; kv_indptr: [B + 1] int32/int64;
    kv_indices: [kv_indptr[-1]] slots. See the module docstring for the options:
    - counters: int32 [>= B * Hk], zeros; merge in the same launch (left zero afterwards).
    - new_kv: (k_new [B, Hk, D], v_new [B, Hk, Dv], out_cache_loc [B] int32/int64); k_new / v_new
      in the buffers' dtype, rows may be strided. The new token must be its context's last entry
      (`kv_indices[kv_indptr[b + 1] - 1] == out_cache_loc[b]`, not checked). Writes the (rotated)
      k_new and v_new into the buffers at out_cache_loc.
    - rope (needs new_kv): (positions [B] int32/int64, cos_sin_cache [max_position, rotary_dim]
      float32 cos | sin halves, is_neox); q and k_new are rotated as `rotary.apply_rotary` does.
    - config: the tiling (`DecodeAttentionConfig()` by default).
    """
    _check(q, k_buffer, v_buffer, kv_indptr, kv_indices)
    if num_kv_splits < 1:
        raise ValueError(f"decode_attention: num_kv_splits must be >= 1, got {num_kv_splits}")
    b, hq, d = q.shape
    hk, dv = k_buffer.shape[1], v_buffer.shape[2]
    if rope is not None and new_kv is None:
        raise ValueError("decode_attention: rope rotates q and the new token's k; it needs new_kv")
    if new_kv is not None:
        _check_new_kv(q, k_buffer, v_buffer, new_kv, rope)
    if counters is not None and (
        counters.dtype != torch.int32 or counters.dim() != 1 or counters.numel() < b * hk or counters.device != q.device
    ):
        raise ValueError(f"decode_attention: counters must be a 1-D int32 tensor of >= B * Hk = {b * hk} zeros on "
                         f"{q.device}, got {tuple(counters.shape)} {counters.dtype} on {counters.device}")
    config = config or DecodeAttentionConfig()
    out = torch.empty(b, hq, dv, dtype=q.dtype, device=q.device)
    if b == 0:
        return out
    group = hq // hk
    direct = num_kv_splits == 1
    if direct:
        mid_out = mid_lse = out  # not written
    else:
        mid_out, mid_lse = split_partials(b, hq, num_kv_splits, dv, q.device)
    k_new, v_new, loc = new_kv if new_kv is not None else (k_buffer, v_buffer, kv_indptr)  # dummies when absent
    positions, cos_sin, is_neox = rope if rope is not None else (kv_indptr, q, True)
    on_gpu = q.device.type == "cuda"
    launch(
        decode_attention_kernel, (b, hk, num_kv_splits),
        q, k_buffer, v_buffer, kv_indptr, kv_indices, mid_out, mid_lse, out,
        counters if counters is not None else kv_indptr, k_new, v_new, loc, positions, cos_sin,
        sm_scale, hq, hk, group,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1), out.stride(0), out.stride(1),
        D=d, DV=dv, BLOCK_D=max(16, next_power_of_2(d)), BLOCK_DV=max(16, next_power_of_2(dv)),
        BLOCK_G=max(16, next_power_of_2(group)) if config.use_dot else next_power_of_2(group),
        BLOCK_N=config.block_n, NUM_SPLITS=num_kv_splits, BLOCK_S=next_power_of_2(num_kv_splits),
        BLOCK_GM=next_power_of_2(group), MERGE_CHUNK=min(MERGE_CHUNK, next_power_of_2(num_kv_splits)),
        USE_DOT=config.use_dot, DOT_IN_FP32=dot_needs_fp32(q), DIRECT_OUT=direct,
        USE_COUNTERS=counters is not None and not direct, NEW_KV=new_kv is not None, ROPE=rope is not None,
        ROT_DIM=cos_sin.shape[-1] if rope is not None else 0, IS_NEOX=bool(is_neox), EXACT_MUL=on_gpu,
        num_warps=config.num_warps, num_stages=config.num_stages, pdl=True,
    )
    if not direct and counters is None:
        merge_splits(mid_out, mid_lse, out, pdl=True)
    return out


def ref_decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
) -> torch.Tensor:
    """Torch reference for `decode_attention` without new_kv, one sequence at a time in float32."""
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


def ref_decode_attention_new_kv(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    new_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    rope: Optional[tuple[torch.Tensor, torch.Tensor, bool]] = None,
) -> torch.Tensor:
    """Torch reference for `decode_attention` with new_kv (and rope): `ref_apply_rotary`, then
    `ref_store_kv` into the buffers (in place), then `ref_decode_attention`."""
    from lmlang.kernels.kv_store import ref_store_kv
    from lmlang.kernels.rotary import ref_apply_rotary

    k_new, v_new, loc = new_kv
    if rope is not None:
        positions, cos_sin_cache, is_neox = rope
        q, k_new = ref_apply_rotary(q, k_new, positions, cos_sin_cache, is_neox=is_neox)
    ref_store_kv(k_buffer, v_buffer, loc, k_new, v_new)
    return ref_decode_attention(q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale)
