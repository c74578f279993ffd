"""Gated activations (on CUDA through `lmlang.kernels.activation`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlang.runtime.layers.dispatch import use_kernels


class SiluAndMul(nn.Module):
    """[..., 2 * d] (gate | up) -> silu(gate) * up: [..., d]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_kernels(x):
            from lmlang.kernels.activation import silu_and_mul

            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
