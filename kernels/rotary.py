"""Rotary position embedding applied to q and k from a precomputed cos/sin cache.

The cache is `[max_position, rotary_dim]`: row p is `cat(cos(p * inv_freq), sin(p * inv_freq))`,
each half `rotary_dim / 2` wide (the model layer builds it, with any linear / llama3 / yarn
scaling already folded in). Only the first `rotary_dim` features of each head rotate; the rest
pass through. Two pairings of features:
- neox (`is_neox=True`, Llama/Qwen): feature i pairs with i + rotary_dim/2;
- GPT-J interleaved (`is_neox=False`, DeepSeek's rope part): feature 2i pairs with 2i + 1.
For a pair (a, b) and frequency i: `a' = a cos - b sin`, `b' = b cos + a sin`, in float32.

One program handles one token: all heads of q, then all heads of k, in blocks of heads.
q and k may be strided views (e.g. split from a fused qkv projection) as long as each head's
features are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import launch, next_power_of_2

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, src_tok_stride, src_head_stride, dst_tok_stride, dst_head_stride,
    token, cos, sin, num_heads, head_dim,
    HALF: tl.constexpr, IS_NEOX: tl.constexpr, COPY_TAIL: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_TAIL: tl.constexpr,
):
    """Rotates heads [0, num_heads) of one token; cos/sin: [BLOCK_HALF] float32."""
    offs_i = tl.arange(0, BLOCK_HALF)
    if IS_NEOX:
        first = offs_i
        second = offs_i + HALF
    else:
        first = 2 * offs_i
        second = 2 * offs_i + 1
    for h0 in range(0, num_heads, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask = (offs_h[:, None] < num_heads) & (offs_i[None, :] < HALF)
        src = src_ptr + token * src_tok_stride + offs_h[:, None] * src_head_stride
        dst = dst_ptr + token * dst_tok_stride + offs_h[:, None] * dst_head_stride
        a = tl.load(src + first[None, :], mask=mask, other=0.0).to(tl.float32)
        b = tl.load(src + second[None, :], mask=mask, other=0.0).to(tl.float32)
        a_rot = a * cos[None, :] - b * sin[None, :]
        b_rot = b * cos[None, :] + a * sin[None, :]
        tl.store(dst + first[None, :], a_rot.to(dst_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + second[None, :], b_rot.to(dst_ptr.dtype.element_ty), mask=mask)
        if COPY_TAIL:
            offs_t = 2 * HALF + tl.arange(0, BLOCK_TAIL)
            tail_mask = (offs_h[:, None] < num_heads) & (offs_t[None, :] < head_dim)
            tail = tl.load(src + offs_t[None, :], mask=tail_mask, other=0.0)
            tl.store(dst + offs_t[None, :], tail, mask=tail_mask)


@triton.jit
def rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr,  # [T, Hq, head_dim], [T, Hk, head_dim] (strided)
    positions_ptr,  # [T] int32/int64
    cache_ptr,  # [max_position, 2 * HALF]
    q_tok_stride, q_head_stride, k_tok_stride, k_head_stride,
    qo_tok_stride, qo_head_stride, ko_tok_stride, ko_head_stride,
    num_q_heads, num_k_heads, head_dim,
    HALF: tl.constexpr, IS_NEOX: tl.constexpr, COPY_TAIL: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_TAIL: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs_i = tl.arange(0, BLOCK_HALF)
    cmask = offs_i < HALF
    cos = tl.load(cache_ptr + pos * 2 * HALF + offs_i, mask=cmask, other=0.0).to(tl.float32)
    sin = tl.load(cache_ptr + pos * 2 * HALF + HALF + offs_i, mask=cmask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, q_tok_stride, q_head_stride, qo_tok_stride, qo_head_stride,
                  token, cos, sin, num_q_heads, head_dim,
                  HALF, IS_NEOX, COPY_TAIL, BLOCK_H, BLOCK_HALF, BLOCK_TAIL)
    _rotate_heads(k_ptr, k_out_ptr, k_tok_stride, k_head_stride, ko_tok_stride, ko_head_stride,
                  token, cos, sin, num_k_heads, head_dim,
                  HALF, IS_NEOX, COPY_TAIL, BLOCK_H, BLOCK_HALF, BLOCK_TAIL)


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
    rotary_dim = _check(q, k, positions, cos_sin_cache)
    head_dim = q.shape[2]
    q_out = q if inplace else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = k if inplace else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return q_out, k_out
    half = rotary_dim // 2
    launch(
        rotary_kernel, (num_tokens,), q, k, q_out, k_out, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        q.shape[1], k.shape[1], head_dim,
        HALF=half, IS_NEOX=is_neox, COPY_TAIL=(not inplace) and rotary_dim < head_dim,
        BLOCK_H=min(next_power_of_2(max(q.shape[1], k.shape[1])), 16),
        BLOCK_HALF=next_power_of_2(half), BLOCK_TAIL=next_power_of_2(head_dim - rotary_dim),
        num_warps=4,
    )
    return q_out, k_out


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

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rot, tail = x[..., :rotary_dim].float(), x[..., rotary_dim:]
        if is_neox:
            a, b = rot.chunk(2, dim=-1)
            out = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
        else:
            a, b = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
        return torch.cat([out.to(x.dtype), tail], dim=-1)

    return rotate(q), rotate(k)
