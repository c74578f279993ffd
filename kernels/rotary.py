"""Rotary position embedding applied to q and k from a precomputed cos/sin cache.

The cache is `[max_position, rotary_dim]`: row p is `cat(cos(p * inv_freq), sin(p * inv_freq))`,
each half `rotary_dim / 2` wide (the model layer builds it, with any linear / llama3 / yarn
scaling already folded in). Only the first `rotary_dim` features of each head rotate; the rest
pass through. Two pairings of features:
- neox (`is_neox=True`, Llama/Qwen): feature i pairs with i + rotary_dim/2;
- GPT-J interleaved (`is_neox=False`, DeepSeek's rope part): feature 2i pairs with 2i + 1.
For a pair (a, b) and frequency i: `a' = a cos - b sin`, `b' = b cos + a sin`, rounded as the
Hugging Face modules compute it in the activations' dtype: cos and sin, each product and the sum
rounded to that dtype (bf16 / fp16; float32 inputs stay float32). Keeping the reference's
rounding keeps the engine's bf16 logprobs close to the checkpoints' reference implementation.

One program handles one block of up to 8 heads of one token (q's blocks, then k's), so a
decode step's few tokens still spread over several SMs. q and k may be strided views (e.g.
split from a fused qkv projection) as long as each head's features are contiguous.
`rotary_and_store_kv` also writes the rotated k and v into the paged KV pool at the tokens'
slots in the same launch (what `kv_store.store_kv` would do after `apply_rotary`), and
`rotary_and_store_mla_kv` the rotated rope key and the compressed KV into an MLA latent pool's
two column ranges (what `kv_store.store_mla_kv` would do).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from lmlang.kernels.kv_store import check_store_kv, check_store_mla_kv
from lmlang.kernels.launch import launch, next_power_of_2, pdl_launch_dependents, pdl_wait
from lmlang.kernels.rounding import round_to

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _rotate_heads(
    src_row, dst_row, pool_row, src_head_stride, dst_head_stride, pool_head_stride,
    h0, cos, sin, num_heads, head_dim,
    HALF: tl.constexpr, IS_NEOX: tl.constexpr, HAS_TAIL: tl.constexpr, COPY_TAIL: tl.constexpr,
    TO_POOL: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_TAIL: tl.constexpr,
):
    """Rotates heads [h0, h0 + BLOCK_H) of one token (cos/sin: [BLOCK_HALF] float32) into dst_row
    and, with TO_POOL, into a pool row (the rotated values rounded to src's dtype first, then cast
    to the pool's, as rotating and then storing would; the tail copied as well)."""
    offs_i = tl.arange(0, BLOCK_HALF)
    if IS_NEOX:
        first = offs_i
        second = offs_i + HALF
    else:
        first = 2 * offs_i
        second = 2 * offs_i + 1
    offs_h = h0 + tl.arange(0, BLOCK_H)
    mask = (offs_h[:, None] < num_heads) & (offs_i[None, :] < HALF)
    src = src_row + offs_h[:, None] * src_head_stride
    dst = dst_row + offs_h[:, None] * dst_head_stride
    a = tl.load(src + first[None, :], mask=mask, other=0.0)
    b = tl.load(src + second[None, :], mask=mask, other=0.0)
    dt = a.dtype
    c = round_to(cos, dt)[None, :]
    s = round_to(sin, dt)[None, :]
    af, bf = a.to(tl.float32), b.to(tl.float32)
    a_rot = round_to(round_to(af * c, dt) - round_to(bf * s, dt), dt).to(a.dtype)
    b_rot = round_to(round_to(bf * c, dt) + round_to(af * s, dt), dt).to(a.dtype)
    tl.store(dst + first[None, :], a_rot.to(dst_row.dtype.element_ty), mask=mask)
    tl.store(dst + second[None, :], b_rot.to(dst_row.dtype.element_ty), mask=mask)
    if TO_POOL:
        pool = pool_row + offs_h[:, None] * pool_head_stride
        tl.store(pool + first[None, :], a_rot.to(pool_row.dtype.element_ty), mask=mask)
        tl.store(pool + second[None, :], b_rot.to(pool_row.dtype.element_ty), mask=mask)
    if HAS_TAIL:
        offs_t = 2 * HALF + tl.arange(0, BLOCK_TAIL)
        tail_mask = (offs_h[:, None] < num_heads) & (offs_t[None, :] < head_dim)
        tail = tl.load(src + offs_t[None, :], mask=tail_mask, other=0.0)
        if COPY_TAIL:
            tl.store(dst + offs_t[None, :], tail, mask=tail_mask)
        if TO_POOL:
            tl.store(pool + offs_t[None, :], tail.to(pool_row.dtype.element_ty), mask=tail_mask)


@triton.jit
def rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr,  # [T, Hq, head_dim], [T, Hk, head_dim] (strided)
    positions_ptr,  # [T] int32/int64
    cache_ptr,  # [max_position, 2 * HALF]
    v_ptr,  # [T, Hk, v_head_dim] (strided; read only with STORE_KV)
    k_pool_ptr, v_pool_ptr,  # [slots, Hk, head_dim], [slots, Hk, v_head_dim] (written only with STORE_KV)
    loc_ptr,  # [T] int32/int64 slot per token (read only with STORE_KV)
    v_norm_w_ptr,  # [v_head_dim] RMSNorm weight applied to v before it is stored (read only with NORM_V)
    v_norm_eps,
    q_tok_stride, q_head_stride, k_tok_stride, k_head_stride,
    qo_tok_stride, qo_head_stride, ko_tok_stride, ko_head_stride,
    v_tok_stride, v_head_stride, kp_slot_stride, kp_head_stride, vp_slot_stride, vp_head_stride,
    num_q_heads, num_k_heads, head_dim, v_head_dim,
    HALF: tl.constexpr, IS_NEOX: tl.constexpr, HAS_TAIL: tl.constexpr, COPY_TAIL: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_TAIL: tl.constexpr,
    STORE_KV: tl.constexpr, NORM_V: tl.constexpr, BLOCK_DV: tl.constexpr, USE_PDL: tl.constexpr,
):
    # program (token, head block): q's head blocks first, then k's (with v's same heads)
    pdl_launch_dependents(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    q_blocks = tl.cdiv(num_q_heads, BLOCK_H)
    offs_i = tl.arange(0, BLOCK_HALF)
    cmask = offs_i < HALF
    pdl_wait(USE_PDL)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    cos = tl.load(cache_ptr + pos * 2 * HALF + offs_i, mask=cmask, other=0.0).to(tl.float32)
    sin = tl.load(cache_ptr + pos * 2 * HALF + HALF + offs_i, mask=cmask, other=0.0).to(tl.float32)
    if head_block < q_blocks:
        _rotate_heads(q_ptr + token * q_tok_stride, q_out_ptr + token * qo_tok_stride, q_out_ptr,
                      q_head_stride, qo_head_stride, 0, head_block * BLOCK_H, cos, sin, num_q_heads, head_dim,
                      HALF, IS_NEOX, HAS_TAIL, COPY_TAIL, False, BLOCK_H, BLOCK_HALF, BLOCK_TAIL)
    else:
        h0 = (head_block - q_blocks) * BLOCK_H
        slot = 0
        if STORE_KV:
            slot = tl.load(loc_ptr + token).to(tl.int64)
        _rotate_heads(k_ptr + token * k_tok_stride, k_out_ptr + token * ko_tok_stride,
                      k_pool_ptr + slot * kp_slot_stride, k_head_stride, ko_head_stride, kp_head_stride,
                      h0, cos, sin, num_k_heads, head_dim,
                      HALF, IS_NEOX, HAS_TAIL, COPY_TAIL, STORE_KV, BLOCK_H, BLOCK_HALF, BLOCK_TAIL)
        if STORE_KV:
            offs_h = h0 + tl.arange(0, BLOCK_H)
            offs_d = tl.arange(0, BLOCK_DV)
            v_mask = (offs_h[:, None] < num_k_heads) & (offs_d[None, :] < v_head_dim)
            v = tl.load(v_ptr + token * v_tok_stride + offs_h[:, None] * v_head_stride + offs_d[None, :],
                        mask=v_mask, other=0.0)
            if NORM_V:  # rmsnorm_kernel's operations, per head row
                w = tl.load(v_norm_w_ptr + offs_d, mask=offs_d < v_head_dim, other=0.0).to(tl.float32)
                vf = v.to(tl.float32)
                mean_sq = tl.sum(vf * vf, axis=1) / v_head_dim
                normed = (vf * tl.math.rsqrt(mean_sq + v_norm_eps)[:, None]).to(v_ptr.dtype.element_ty)
                v = (normed.to(tl.float32) * w[None, :]).to(v_ptr.dtype.element_ty)
            tl.store(v_pool_ptr + slot * vp_slot_stride + offs_h[:, None] * vp_head_stride + offs_d[None, :],
                     v.to(v_pool_ptr.dtype.element_ty), mask=v_mask)


def _check(q, k, positions, cos_sin_cache) -> int:
    """Validates the arguments; returns rotary_dim."""
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(
            f"rotary: q and k must be [num_tokens, heads, head_dim], got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"rotary: q {tuple(q.shape)} and k {tuple(k.shape)} disagree on tokens or head_dim")
    if q.dtype not in _DTYPES or k.dtype != q.dtype:
        raise ValueError(f"rotary: q/k dtypes {q.dtype}/{k.dtype}; both must be one of {_DTYPES}")
    if q.stride(2) != 1 or k.stride(2) != 1:
        raise ValueError("rotary: each head's features must be contiguous (stride 1 in the last dim)")
    if positions.shape != (q.shape[0],) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"rotary: positions must be [num_tokens] int32/int64, got {tuple(positions.shape)} {positions.dtype}"
        )
    if cos_sin_cache.dim() != 2 or not cos_sin_cache.is_contiguous():
        raise ValueError("rotary: cos_sin_cache must be a contiguous [max_position, rotary_dim] tensor")
    rotary_dim = cos_sin_cache.shape[1]
    if rotary_dim % 2 or rotary_dim > q.shape[2]:
        raise ValueError(f"rotary: rotary_dim {rotary_dim} must be even and <= head_dim {q.shape[2]}")
    if len({q.device, k.device, positions.device, cos_sin_cache.device}) != 1:
        raise ValueError("rotary: q, k, positions and cos_sin_cache must be on one device")
    return rotary_dim


_MAX_BLOCK_H = 8  # heads per program: at decode a token's heads spread over several programs


def _launch(q, k, positions, cos_sin_cache, is_neox: bool, inplace: bool,
            store: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
            v_norm: Optional[tuple[torch.Tensor, float]] = None) -> tuple:
    """Checks q, k, positions and the cache, launches `rotary_kernel`; store: (v, k_buffer, v_buffer,
    loc); v_norm: (weight, eps) of an RMSNorm applied to v before it is stored."""
    rotary_dim = _check(q, k, positions, cos_sin_cache)
    head_dim = q.shape[2]
    q_out = q if inplace else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = k if inplace else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return q_out, k_out
    v, k_pool, v_pool, loc = store if store is not None else (k, k, k, positions)  # unread without STORE_KV
    v_norm_w, v_norm_eps = v_norm if v_norm is not None else (k, 0.0)  # unread without NORM_V
    half = rotary_dim // 2
    block_h = min(next_power_of_2(max(q.shape[1], k.shape[1])), _MAX_BLOCK_H)
    head_blocks = triton.cdiv(q.shape[1], block_h) + triton.cdiv(k.shape[1], block_h)
    launch(
        rotary_kernel, (num_tokens, head_blocks), q, k, q_out, k_out, positions, cos_sin_cache,
        v, k_pool, v_pool, loc, v_norm_w, v_norm_eps,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        v.stride(0), v.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        q.shape[1], k.shape[1], head_dim, v.shape[2],
        HALF=half, IS_NEOX=is_neox, HAS_TAIL=rotary_dim < head_dim, COPY_TAIL=(not inplace) and rotary_dim < head_dim,
        BLOCK_H=block_h, BLOCK_HALF=next_power_of_2(half), BLOCK_TAIL=next_power_of_2(head_dim - rotary_dim),
        STORE_KV=store is not None, NORM_V=v_norm is not None, BLOCK_DV=next_power_of_2(v.shape[2]), num_warps=4,
        pdl=True,
    )
    return q_out, k_out


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    *,
    is_neox: bool = True,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q ([T, Hq, head_dim]) and k ([T, Hk, head_dim]) by `positions` ([T]).

    `cos_sin_cache`: [max_position, rotary_dim], see the module docstring. With `inplace=True`
    q and k are overwritten and returned; otherwise new contiguous tensors are returned.
    """
    return _launch(q, k, positions, cos_sin_cache, is_neox, inplace, None)


def rotary_and_store_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    loc: torch.Tensor,
    *,
    is_neox: bool = True,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`apply_rotary(q, k, ...)` and `kv_store.store_kv(k_buffer, v_buffer, loc, rotated k, v)` in one launch.

    v: [T, Hk, v_head_dim] (strided tokens allowed); k_buffer / v_buffer / loc as `store_kv`
    takes them. The pool receives exactly what rotating and then storing would write (rotated k
    rounded to k's dtype, then cast to the buffer's). Returns the rotated (q, k) as
    `apply_rotary` does.
    """
    if k_buffer.dim() != 3 or v_buffer.dim() != 3 or v.dim() != 3:
        raise ValueError("rotary_and_store_kv: k_buffer, v_buffer must be [slots, Hk, D] and v [T, Hk, Dv]")
    check_store_kv(k_buffer, v_buffer, loc, k, v)
    if v.stride(2) != 1:
        raise ValueError("rotary_and_store_kv: v's head features must be contiguous (stride 1 in the last dim)")
    return _launch(q, k, positions, cos_sin_cache, is_neox, inplace, (v, k_buffer, v_buffer, loc))


def rotary_and_store_mla_kv(
    q_rope: torch.Tensor,
    k_rope: torch.Tensor,
    kv_latent: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    kv_buffer: torch.Tensor,
    loc: torch.Tensor,
    *,
    is_neox: bool = False,
    latent_norm: Optional[tuple[torch.Tensor, float]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`apply_rotary(q_rope, k_rope, ...)` and `kv_store.store_mla_kv(kv_buffer, loc, kv_latent,
    rotated k_rope)` in one launch, for an MLA layer's latent pool.

    q_rope: [T, H, rope_dim]; k_rope: [T, 1, rope_dim] (strided tokens allowed); kv_latent:
    [T, kv_lora_rank] or [T, 1, kv_lora_rank] with contiguous rows; kv_buffer: contiguous
    [slots, 1, kv_lora_rank + rope_dim]. `latent_norm=(weight [kv_lora_rank], eps)`: the latent
    rows are RMS-normalized first, as `rmsnorm.rmsnorm(kv_latent, weight, eps)` would (the layer's
    kv_a_layernorm, whose output only the cache reads). Returns the rotated (q_rope, k_rope) as
    `apply_rotary` does.
    """
    check_store_mla_kv(kv_buffer, loc, kv_latent, k_rope, caller="rotary_and_store_mla_kv")
    if k_rope.dim() != 3 or k_rope.shape[1] != 1:
        raise ValueError(f"rotary_and_store_mla_kv: k_rope must be [T, 1, rope_dim], got {tuple(k_rope.shape)}")
    rank = kv_latent.shape[-1]
    latent = kv_latent.reshape(kv_latent.shape[0], 1, rank)  # [T, 1, R]
    if latent.stride(2) != 1:
        raise ValueError("rotary_and_store_mla_kv: kv_latent's rows must be contiguous")
    if latent_norm is not None:
        weight = latent_norm[0]
        if weight.shape != (rank,) or weight.dtype != kv_latent.dtype or weight.device != kv_latent.device:
            raise ValueError(
                f"rotary_and_store_mla_kv: the latent norm's weight must be [{rank}] {kv_latent.dtype} on "
                f"kv_latent's device, got {tuple(weight.shape)} {weight.dtype}"
            )
    return _launch(q_rope, k_rope, positions, cos_sin_cache, is_neox, False,
                   (latent, kv_buffer[:, :, rank:], kv_buffer[:, :, :rank], loc), latent_norm)


def ref_apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    *,
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference for `apply_rotary` (out of place)."""
    rotary_dim = cos_sin_cache.shape[1]
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)  # [T, rotary_dim / 2] each
    cos, sin = cos[:, None, :], sin[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:  # every op in x's dtype, as Hugging Face computes it
        rot, tail = x[..., :rotary_dim], x[..., rotary_dim:]
        cos_x, sin_x = cos.to(x.dtype), sin.to(x.dtype)
        if is_neox:
            a, b = rot.chunk(2, dim=-1)
            out = torch.cat([a * cos_x - b * sin_x, b * cos_x + a * sin_x], dim=-1)
        else:
            a, b = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack([a * cos_x - b * sin_x, b * cos_x + a * sin_x], dim=-1).flatten(-2)
        return torch.cat([out.to(x.dtype), tail], dim=-1)

    return rotate(q), rotate(k)
