"""Applying a packed token bitmask (grammar-constrained decoding) to logits in place.

Layout (shared with `lmlang.grammar`): row b of `bitmask` ([B, W] int32) allows token t iff
bit `t % 32` of word `t // 32` is set; disallowed logits become -inf. `W * 32` must cover the
logits' vocabulary (extra bits past it are ignored). With `indices`, only those rows of `logits`
are masked, each by the `bitmask` row of the same index.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import launch

_BLOCK = 4096  # tokens per program: 128 words
_LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def token_bitmask_kernel(
    logits_ptr,  # [B, V] (rows logits_stride apart)
    bitmask_ptr,  # [B, W] int32 (rows bitmask_stride apart)
    indices_ptr,  # [R] int32/int64 rows to mask, read only when HAS_INDICES
    vocab_size,
    logits_stride,
    bitmask_stride,
    HAS_INDICES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if HAS_INDICES:
        row = tl.load(indices_ptr + tl.program_id(0)).to(tl.int64)
    else:
        row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < vocab_size
    words = tl.load(bitmask_ptr + row * bitmask_stride + offs // 32, mask=mask, other=0)
    allowed = ((words >> (offs % 32)) & 1) != 0
    # store only the -inf entries: allowed logits are never read or written back
    ninf = tl.full([BLOCK], float("-inf"), logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + row * logits_stride + offs, ninf, mask=mask & ~allowed)


def _check(logits: torch.Tensor, bitmask: torch.Tensor, indices: Optional[torch.Tensor]) -> None:
    if logits.dim() != 2 or logits.dtype not in _LOGIT_DTYPES or logits.stride(1) != 1:
        raise ValueError(
            f"token bitmask: logits must be [B, V] float with contiguous rows, got {tuple(logits.shape)} {logits.dtype}"
        )
    if bitmask.dim() != 2 or bitmask.dtype != torch.int32 or bitmask.stride(1) != 1:
        raise ValueError(
            f"token bitmask: bitmask must be [B, W] int32 with contiguous rows, "
            f"got {tuple(bitmask.shape)} {bitmask.dtype}"
        )
    if bitmask.shape[1] * 32 < logits.shape[1]:
        raise ValueError(
            f"token bitmask: {bitmask.shape[1]} words cover {bitmask.shape[1] * 32} tokens, "
            f"logits have {logits.shape[1]}"
        )
    if indices is None and bitmask.shape[0] != logits.shape[0]:
        raise ValueError(f"token bitmask: bitmask has {bitmask.shape[0]} rows, logits {logits.shape[0]}")
    if indices is not None and (indices.dim() != 1 or indices.dtype not in (torch.int32, torch.int64)):
        raise ValueError("token bitmask: indices must be a 1-D int32/int64 tensor")
    devices = {logits.device, bitmask.device} | ({indices.device} if indices is not None else set())
    if len(devices) != 1:
        raise ValueError(f"token bitmask: tensors on several devices {sorted(map(str, devices))}")


def apply_token_bitmask_(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    indices: Optional[torch.Tensor] = None,
    *,
    use_triton: Optional[bool] = None,
) -> None:
    """Sets `logits[b, t] = -inf` for every token t that `bitmask[b]` disallows (in place).

    logits: [B, V] float32/fp16/bf16; bitmask: [B, ceil(V/32)] int32 (wider is fine);
    indices: optional [R] rows to mask (others are left alone).
    `use_triton=None` runs the Triton kernel on CUDA and the torch path on CPU (the sampler's
    CPU path); `True` forces the kernel (interpreted on CPU, which tests use).
    """
    _check(logits, bitmask, indices)
    if use_triton is None:
        use_triton = logits.device.type == "cuda"
    if not use_triton:
        if indices is None:
            logits.masked_fill_(~_allowed(bitmask, logits.shape[1]), float("-inf"))
        else:
            rows = indices.long()
            logits[rows] = logits[rows].masked_fill(~_allowed(bitmask[rows], logits.shape[1]), float("-inf"))
        return
    num_rows = indices.shape[0] if indices is not None else logits.shape[0]
    vocab = logits.shape[1]
    if num_rows == 0 or vocab == 0:
        return
    launch(
        token_bitmask_kernel, (num_rows, triton.cdiv(vocab, _BLOCK)), logits, bitmask, indices,
        vocab, logits.stride(0), bitmask.stride(0), HAS_INDICES=indices is not None, BLOCK=_BLOCK, num_warps=4,
    )


def _allowed(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, W] int32 words -> [R, vocab] bool, True where the token is allowed."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    return ((bitmask[:, :, None] >> shifts) & 1).flatten(1)[:, :vocab].bool()


def ref_apply_token_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, indices: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Torch reference: returns a masked copy of `logits` (same arguments as `apply_token_bitmask_`)."""
    out = logits.clone()
    rows = indices.long() if indices is not None else torch.arange(logits.shape[0], device=logits.device)
    out[rows] = out[rows].masked_fill(~_allowed(bitmask[rows], logits.shape[1]), float("-inf"))
    return out
