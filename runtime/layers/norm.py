"""RMSNorm, optionally fused with the residual add that precedes it.

Numerics follow the Hugging Face reference: the add happens in the input dtype, the
normalisation in float32, and the result is cast back before the weight multiply. On CUDA the
`lmlang.kernels.rmsnorm` kernels compute the same in one pass (the add fused into the norm).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from lmlang.runtime.layers.dispatch import use_kernels
from lmlang.runtime.layers.linear import new_parameter


class RMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps) over the last dim. weight: [hidden_size]."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = new_parameter((hidden_size,))

    def forward(
        self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`x`: [..., hidden]. With `residual`, returns `(norm(x + residual), x + residual)`."""
        if use_kernels(x) and x.dtype == self.weight.dtype:
            from lmlang.kernels.rmsnorm import fused_add_rmsnorm, rmsnorm

            if residual is not None:
                return fused_add_rmsnorm(x.contiguous(), residual.contiguous(), self.weight, self.eps)
            rows_contiguous = x.dim() == 2 and x.stride(1) == 1  # e.g. a slice of a stacked projection
            return rmsnorm(x if rows_contiguous else x.contiguous(), self.weight, self.eps)
        if residual is not None:
            x = x + residual
            return rms_norm(x, self.weight, self.eps), x
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The torch RMSNorm (CPU and compiled paths; `RMSNorm.forward` calls the kernels on CUDA)."""
    x32 = x.float()  # [..., hidden]
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)
