"""Linear layers whose weights are plain `weight` / `bias` Parameters with a loading hook.

Every parameter carries a `weight_loader(param, loaded, shard_id=None)` attribute; a model's
`load_weights` calls it for each checkpoint tensor (see `runtime/models/weight_mapping.py`).
`StackedLinear` fuses several checkpoint projections into one matmul (q/k/v, gate/up): each
checkpoint tensor names its shard id and lands in that shard's rows. Quantization is applied
later as a transformation that swaps these modules for quantized ones; the shard table
(`shard_offsets`) is what such a transformation reads to lay out its scales.

Parameters are created with `torch.empty` (no init cost for large models): the loader or
`load_format="dummy"` fills them. Construction follows the ambient default device and dtype.

`linear` is the matmul every layer here runs: on CUDA, a product with at most 8 rows (a decode
step's batch) goes to lmlang's GEMV kernel when the device's tuned table
(`lmlang.kernels.gemv.gemv_config`) says it beats cuBLAS for that weight shape and row count;
everything else is `F.linear`. The choice depends on the shapes only, so a CUDA graph captures
the same kernel its warm-up ran.
"""

from __future__ import annotations

import functools
from typing import Callable, Hashable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlang.runtime.layers.dispatch import use_kernels

WeightLoader = Callable[..., None]


@functools.lru_cache(maxsize=None)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`x @ weight.T + bias`; x: [..., in], weight: [out, in] -> [..., out] (see the module docstring)."""
    if (use_kernels(x) and x.dtype == weight.dtype and x.stride(-1) == 1 and weight.stride(1) == 1
            and weight.stride(0) % 8 == 0 and x.shape[-1] == weight.shape[1] and (bias is None or bias.dtype == x.dtype)):
        from lmlang.kernels.gemv import gemv, gemv_config  # triton is needed only here

        rows = x.numel() // max(1, x.shape[-1])
        config = gemv_config(rows, weight.shape[0], weight.shape[1], x.dtype, _device_name(x.device.index or 0))
        if config is not None:
            y = gemv(x.reshape(rows, x.shape[-1]), weight, bias, config)  # [rows, out]
            return y.reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[Hashable] = None) -> None:
    """Copies a whole checkpoint tensor into `param` (casting dtype and device)."""
    if shard_id is not None:
        raise ValueError(f"parameter of shape {tuple(param.shape)} has no shards, got shard {shard_id!r}")
    if param.shape != loaded.shape:
        raise ValueError(f"checkpoint tensor has shape {tuple(loaded.shape)}, parameter expects {tuple(param.shape)}")
    param.data.copy_(loaded)


def new_parameter(shape: tuple, loader: WeightLoader = default_weight_loader) -> nn.Parameter:
    """An uninitialised inference parameter (no grad) carrying its `weight_loader` hook."""
    param = nn.Parameter(torch.empty(shape), requires_grad=False)
    param.weight_loader = loader
    return param


class Linear(nn.Module):
    """y = x @ weight.T + bias. weight: [out_features, in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = new_parameter((out_features, in_features), self.weight_loader)
        self.bias = new_parameter((out_features,), self.weight_loader) if bias else None

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[Hashable] = None) -> None:
        """The hook set on `weight` and `bias`; subclasses that stack or shard override it."""
        default_weight_loader(param, loaded, shard_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class StackedLinear(Linear):
    """Several projections of the same input, stacked along the output dim.

    `shards` maps a shard id to its output size, in stacking order, e.g.
    `{"q": 512, "k": 128, "v": 128}` or `{0: inter, 1: inter}` (gate, up). The output is
    split back by the caller with `split_sizes`.
    """

    def __init__(self, in_features: int, shards: Mapping[Hashable, int], bias: bool = False) -> None:
        self.shard_sizes = dict(shards)
        offsets, start = {}, 0
        for shard_id, size in self.shard_sizes.items():
            offsets[shard_id] = (start, size)
            start += size
        self.shard_offsets: dict = offsets  # shard id -> (row offset, rows)
        super().__init__(in_features, start, bias)
        for param in self.parameters():
            param.shard_ids = tuple(self.shard_sizes)  # the loader checks each one arrived

    @property
    def split_sizes(self) -> list:
        return list(self.shard_sizes.values())

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[Hashable] = None) -> None:
        if shard_id not in self.shard_offsets:
            raise ValueError(f"stacked projection has shards {list(self.shard_offsets)}, got {shard_id!r}")
        start, size = self.shard_offsets[shard_id]
        target = param.data.narrow(0, start, size)
        if target.shape != loaded.shape:
            raise ValueError(
                f"shard {shard_id!r}: checkpoint tensor has shape {tuple(loaded.shape)}, expected {tuple(target.shape)}"
            )
        target.copy_(loaded)
