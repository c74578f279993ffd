"""Which implementation a layer op runs: lmlang's Triton kernel or the op's torch code.

Kernels run for CUDA tensors; CPU tensors run the torch code (the kernels would go through
Triton's interpreter there, far too slowly), and so does code being traced by `torch.compile`,
which fuses the torch code itself and cannot trace the kernels' Python launchers.
"""

from __future__ import annotations

import torch


def use_kernels(x: torch.Tensor) -> bool:
    """True when an op on `x` should call its kernel from `lmlang.kernels`."""
    return x.is_cuda and not torch.compiler.is_compiling()
