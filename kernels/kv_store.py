"""Writing the new tokens' K/V rows into the paged KV pool at their slots: `buf[loc] = rows`.

One kernel serves both pool layouts:
- MHA/GQA: per layer a K buffer `[num_slots + 1, num_kv_heads, head_dim]` and a V buffer
  `[num_slots + 1, num_kv_heads, v_head_dim]`;
- MLA: one latent buffer `[num_slots + 1, 1, kv_lora_rank + rope_dim]`; the compressed KV and the
  rotated rope key go to its two column ranges in one launch (no concatenation first).
Rows are cast to the buffer dtype in the kernel. Slot indices are not bounds-checked on the
device (that would need a host sync); the allocator guarantees them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import launch, pdl_launch_dependents, pdl_wait

_BLOCK = 512


@triton.jit
def kv_store_kernel(
    loc_ptr,  # [T] int32/int64 slot per new token
    a_src_ptr, a_dst_ptr,  # first source rows [T, a_width] -> buffer rows
    b_src_ptr, b_dst_ptr,  # second source rows [T, b_width] -> buffer rows
    a_src_stride, a_dst_stride, b_src_stride, b_dst_stride,
    a_width, b_width,
    BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pdl_wait(USE_PDL)
    slot = tl.load(loc_ptr + token).to(tl.int64)
    a_mask = offs < a_width
    a = tl.load(a_src_ptr + token * a_src_stride + offs, mask=a_mask)
    tl.store(a_dst_ptr + slot * a_dst_stride + offs, a.to(a_dst_ptr.dtype.element_ty), mask=a_mask)
    b_mask = offs < b_width
    b = tl.load(b_src_ptr + token * b_src_stride + offs, mask=b_mask)
    tl.store(b_dst_ptr + slot * b_dst_stride + offs, b.to(b_dst_ptr.dtype.element_ty), mask=b_mask)


def _token_rows(t: torch.Tensor, name: str, num_tokens: int) -> torch.Tensor:
    """`t` as [num_tokens, width] with contiguous rows: a view where the layout allows, else a copy."""
    if t.shape[0] != num_tokens:
        raise ValueError(f"kv_store: {name} has {t.shape[0]} rows, loc has {num_tokens}")
    rows = t.reshape(num_tokens, -1)
    return rows if rows.stride(1) == 1 else rows.contiguous()


def check_loc(loc: torch.Tensor) -> None:
    """Raises ValueError unless `loc` is a [num_tokens] int32/int64 slot vector."""
    if loc.dim() != 1 or loc.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"kv_store: loc must be [num_tokens] int32/int64, got {tuple(loc.shape)} {loc.dtype}")


def check_store_kv(
    k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """Raises ValueError unless `store_kv(k_buffer, v_buffer, loc, k, v)` fits (see there); shared
    with `rotary.rotary_and_store_kv`, which stores in the same way."""
    check_loc(loc)
    for name, buf, src in (("k", k_buffer, k), ("v", v_buffer, v)):
        if not buf.is_contiguous():
            raise ValueError(f"store_kv: {name}_buffer must be contiguous")
        if tuple(src.shape[1:]) != tuple(buf.shape[1:]):
            raise ValueError(
                f"store_kv: {name} rows {tuple(src.shape[1:])} do not fit buffer rows {tuple(buf.shape[1:])}"
            )
        if src.shape[0] != loc.shape[0]:
            raise ValueError(f"store_kv: {name} has {src.shape[0]} rows, loc has {loc.shape[0]}")
        if len({buf.device, src.device, loc.device}) != 1:
            raise ValueError(f"store_kv: {name}, {name}_buffer and loc must be on one device")


def _launch(loc, a_src, a_dst, b_src, b_dst) -> None:
    """a_src, b_src: [T, width] with contiguous rows; a_dst, b_dst: buffers (views) of those widths."""
    a_width, b_width = a_src.shape[1], b_src.shape[1]
    grid = (loc.shape[0], triton.cdiv(max(a_width, b_width), _BLOCK))
    launch(
        kv_store_kernel, grid, loc, a_src, a_dst, b_src, b_dst,
        a_src.stride(0), a_dst.stride(0), b_src.stride(0), b_dst.stride(0), a_width, b_width,
        BLOCK=_BLOCK, num_warps=4, pdl=True,
    )


def store_kv(
    k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """`k_buffer[loc] = k; v_buffer[loc] = v` (cast to the buffers' dtype).

    k_buffer: [slots, Hk, D]; v_buffer: [slots, Hk, Dv] (both contiguous); loc: [T];
    k: [T, Hk, D], v: [T, Hk, Dv]; views with strided tokens (e.g. split from a fused qkv) are
    read in place when each token's row is contiguous.
    """
    check_store_kv(k_buffer, v_buffer, loc, k, v)
    n = loc.shape[0]
    if n:
        _launch(loc, _token_rows(k, "k", n), k_buffer, _token_rows(v, "v", n), v_buffer)


def check_store_mla_kv(
    kv_buffer: torch.Tensor, loc: torch.Tensor, kv_latent: torch.Tensor, k_rope: torch.Tensor,
    caller: str = "store_mla_kv",
) -> None:
    """Raises ValueError unless `store_mla_kv(kv_buffer, loc, kv_latent, k_rope)` fits (see there);
    shared with `rotary.rotary_and_store_mla_kv`, which stores in the same way."""
    check_loc(loc)
    if kv_buffer.dim() != 3 or kv_buffer.shape[1] != 1 or not kv_buffer.is_contiguous():
        raise ValueError(f"{caller}: kv_buffer must be contiguous [slots, 1, width], got {tuple(kv_buffer.shape)}")
    if len({kv_buffer.device, kv_latent.device, k_rope.device, loc.device}) != 1:
        raise ValueError(f"{caller}: kv_buffer, kv_latent, k_rope and loc must be on one device")
    rank = kv_latent.shape[-1]
    if rank + k_rope.shape[-1] != kv_buffer.shape[2]:
        raise ValueError(
            f"{caller}: kv_lora_rank {rank} + rope_dim {k_rope.shape[-1]} != buffer width {kv_buffer.shape[2]}"
        )
    if kv_latent.shape[0] != loc.shape[0] or k_rope.shape[0] != loc.shape[0]:
        raise ValueError(f"{caller}: kv_latent and k_rope need one row per slot in loc ({loc.shape[0]})")


def store_mla_kv(kv_buffer: torch.Tensor, loc: torch.Tensor, kv_latent: torch.Tensor, k_rope: torch.Tensor) -> None:
    """`kv_buffer[loc, 0] = cat(kv_latent, k_rope)` for an MLA latent pool, without the cat.

    kv_buffer: [slots, 1, kv_lora_rank + rope_dim] contiguous; loc: [T];
    kv_latent: [T, kv_lora_rank] or [T, 1, kv_lora_rank]; k_rope: [T, rope_dim] or [T, 1, rope_dim].
    """
    check_store_mla_kv(kv_buffer, loc, kv_latent, k_rope)
    rank = kv_latent.shape[-1]
    n = loc.shape[0]
    if n:
        latent, rope = _token_rows(kv_latent, "kv_latent", n), _token_rows(k_rope, "k_rope", n)
        _launch(loc, latent, kv_buffer, rope, kv_buffer[:, :, rank:])


def ref_store_kv(
    k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """Torch reference for `store_kv` (in place)."""
    k_buffer[loc.long()] = k.to(k_buffer.dtype)
    v_buffer[loc.long()] = v.to(v_buffer.dtype)


def ref_store_mla_kv(kv_buffer: torch.Tensor, loc: torch.Tensor, kv_latent: torch.Tensor, k_rope: torch.Tensor) -> None:
    """Torch reference for `store_mla_kv` (in place)."""
    n = loc.shape[0]
    row = torch.cat([kv_latent.reshape(n, -1), k_rope.reshape(n, -1)], dim=-1)
    kv_buffer[loc.long(), 0] = row.to(kv_buffer.dtype)
