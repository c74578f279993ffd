"""Argument checks shared by the launchers of the paged-KV attention kernels.

Each raises ValueError naming the kernel (`name`) and the disagreement, so a caller's mistake is
reported before any launch."""

from __future__ import annotations

from typing import Iterable

import torch


def check_gqa_buffers(name: str, q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor) -> None:
    """q [N, Hq, D], k_buffer [slots, Hk, D], v_buffer [slots, Hk, Dv]: Hk divides Hq, one dtype,
    contiguous head features."""
    if q.dim() != 3 or k_buffer.dim() != 3 or v_buffer.dim() != 3:
        raise ValueError(f"{name}: q must be [N, Hq, D], k_buffer [slots, Hk, D], v_buffer [slots, Hk, Dv]")
    if k_buffer.shape[2] != q.shape[2] or k_buffer.shape[:2] != v_buffer.shape[:2]:
        raise ValueError(
            f"{name}: q {tuple(q.shape)}, k_buffer {tuple(k_buffer.shape)}, v_buffer {tuple(v_buffer.shape)} disagree"
        )
    if q.shape[1] % k_buffer.shape[1]:
        raise ValueError(f"{name}: {q.shape[1]} query heads are not a multiple of {k_buffer.shape[1]} KV heads")
    if q.dtype != k_buffer.dtype or v_buffer.dtype != k_buffer.dtype:
        raise ValueError(f"{name}: dtypes q {q.dtype}, k {k_buffer.dtype}, v {v_buffer.dtype} must match")
    if q.stride(2) != 1 or k_buffer.stride(2) != 1 or v_buffer.stride(2) != 1:
        raise ValueError(f"{name}: head features must be contiguous")


def check_one_device(name: str, tensors: Iterable[torch.Tensor]) -> None:
    """All `tensors` on one device."""
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"{name}: all tensors must be on one device")
