"""What `gemv` multiplies its weight by: x itself, a gated activation of x, or a normalized x.

The input is computed per BLOCK_K chunk inside `gemv_kernel`, so the step before a projection
needs no launch of its own (`input_chunk`, `row_rstd`; the kernel imports them by name):
- plain: the chunk of x;
- gated (`gemv(..., gated=True)`, the down projection): x is [M, 2K], gate | up halves, and the
  input is `silu(gate) * up` with the numerics of `activation.silu_and_mul` (silu in float32
  rounded to x's dtype, the product rounded to x's dtype);
- normed (`gemv(..., norm=NormInput(...))`, the projection after a decoder layer's norm): the
  input is `rmsnorm(x + residual) * norm_weight` with the numerics of
  `rmsnorm.fused_add_rmsnorm` (the sum rounded to x's dtype, the statistic in float32, the
  normalized value rounded to x's dtype before the weight multiply, the product rounded to x's
  dtype). Every program computes its rows' statistic itself in a first pass over the rows (read
  again from L2, in wide chunks so the pass costs one or two round trips per row while the
  program's first weight tile is in flight); one program per row writes `residual_out = x +
  residual`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

MAX_NORM_K = 16384  # the largest normalized row (each program re-reads its rows from L2)


@dataclass(frozen=True, eq=False)
class NormInput:
    """Residual-add + RMSNorm applied to `gemv`'s x before the product (see the module doc).

    residual: [M, K] added to x first, or None (plain RMSNorm of x); norm_weight: [K];
    residual_out: [M, K], receives `x + residual` (required exactly when residual is given; it
    must not overlap x or residual, whose rows other programs are still reading). All of x's
    dtype, contiguous along K.
    """

    residual: Optional[torch.Tensor]
    norm_weight: torch.Tensor
    eps: float
    residual_out: Optional[torch.Tensor] = None


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of a and b intersect (conservative for strided views)."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    a_end = a.data_ptr() + ((a.shape[0] - 1) * a.stride(0) + a.shape[-1]) * a.element_size()
    b_end = b.data_ptr() + ((b.shape[0] - 1) * b.stride(0) + b.shape[-1]) * b.element_size()
    return a.data_ptr() < b_end and b.data_ptr() < a_end


def check_norm_input(norm: NormInput, x: torch.Tensor) -> None:
    """Raises ValueError unless `norm` fits x ([M, K])."""
    m, k = x.shape
    if k > MAX_NORM_K:
        raise ValueError(f"gemv: a normalized input row holds at most {MAX_NORM_K} elements, got {k}")
    w = norm.norm_weight
    if w.shape != (k,) or w.dtype != x.dtype or not w.is_contiguous() or w.device != x.device:
        raise ValueError(f"gemv: norm_weight must be a contiguous [{k}] {x.dtype} tensor on {x.device}, "
                         f"got {tuple(w.shape)} {w.dtype} on {w.device}")
    if (norm.residual is None) != (norm.residual_out is None):
        raise ValueError("gemv: NormInput needs residual_out exactly when it has a residual")
    if norm.residual is None:
        return
    for name in ("residual", "residual_out"):
        t = getattr(norm, name)
        if t.shape != (m, k) or t.dtype != x.dtype or t.stride(1) != 1 or t.device != x.device:
            raise ValueError(f"gemv: {name} must be [{m}, {k}] {x.dtype} on {x.device}, contiguous along K; "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    if _overlap(norm.residual_out, x) or _overlap(norm.residual_out, norm.residual):
        raise ValueError("gemv: residual_out must not overlap x or residual")


def check_gated_input(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raises ValueError unless x ([M, 2K], gate | up) fits weight ([N, K]) as a gated input."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != 2 * weight.shape[1]:
        raise ValueError(f"gemv: a gated x must be [M, 2K] (gate | up halves) for weight [N, K]; "
                         f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}")


@triton.jit
def load_k(ptrs, k_mask, EVEN_K: tl.constexpr):
    """Loads along K: unmasked (full-width vector loads) when every step is whole, else zeros past the slice."""
    if EVEN_K:
        values = tl.load(ptrs)
    else:
        values = tl.load(ptrs, mask=k_mask, other=0.0)
    return values


@triton.jit
def row_rstd(x_row, r_row, ro_row, K, eps, write,
             HAS_RESIDUAL: tl.constexpr, EVEN_STAT: tl.constexpr, BLOCK_STAT: tl.constexpr):
    """1 / rms(x + residual) of one row (a float32 scalar), read in BLOCK_STAT chunks (wide:
    one or two L2 round trips for a typical hidden size); where `write` (a scalar), stores the
    sum, rounded to x's dtype, at `ro_row`. EVEN_STAT: K is a multiple of BLOCK_STAT."""
    offs = tl.arange(0, BLOCK_STAT)
    acc = tl.zeros([BLOCK_STAT], dtype=tl.float32)
    for k in range(0, K, BLOCK_STAT):
        if EVEN_STAT:
            k_mask = offs >= 0  # all true, known at compile time: the residual store below stays unmasked
        else:
            k_mask = (k + offs) < K
        h = load_k(x_row + k + offs, k_mask, EVEN_STAT)
        if HAS_RESIDUAL:
            r = load_k(r_row + k + offs, k_mask, EVEN_STAT)
            h = (h.to(tl.float32) + r.to(tl.float32)).to(h.dtype)
            # tl.where, not `&`: the interpreter gives `scalar & vector` an int32 mask
            tl.store(ro_row + k + offs, h, mask=tl.where(write, k_mask, False))
        hf = h.to(tl.float32)
        acc += hf * hf
    return tl.math.rsqrt(tl.sum(acc, axis=0) / K + eps)


@triton.jit
def input_chunk(x_ptrs, r_ptrs, nw_ptr, k, offs, k_mask, up_offset, rstd,
                EVEN_K: tl.constexpr, GATED: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """The input at K positions `k + offs` of the rows at `x_ptrs` (x's dtype; 0 outside `k_mask`
    unless EVEN_K): offs is [BLOCK_K] against one row pointer, or [BLOCK_K, 1] against row
    pointers [1, R] for a [BLOCK_K, R] tile. rstd (read only when NORM) broadcasts against the
    tile: the row's `row_rstd`, or [1, R]. The up half of a gated row starts `up_offset`
    elements after its gate half."""
    x = load_k(x_ptrs + k + offs, k_mask, EVEN_K)
    if GATED:
        up = load_k(x_ptrs + up_offset + k + offs, k_mask, EVEN_K)
        gate = x.to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(x.dtype)
        x = (act.to(tl.float32) * up.to(tl.float32)).to(x.dtype)
    if NORM:
        nw = load_k(nw_ptr + k + offs, k_mask, EVEN_K)
        if HAS_RESIDUAL:
            r = load_k(r_ptrs + k + offs, k_mask, EVEN_K)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        normed = (x.to(tl.float32) * rstd).to(x.dtype)
        x = (normed.to(tl.float32) * nw.to(tl.float32)).to(x.dtype)
    return x
