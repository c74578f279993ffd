"""Block-wise FP8 W8A8 linear layer, the replacement the FP8 transformation puts in for `Linear`.

Weights: float8_e4m3fn `weight` [out, in_padded] with a float32 `weight_scale_inv`
[ceil(out / bn), in_padded / bk]: real weight = weight * scale_inv, blockwise (checkpoint layout).
Activations: quantized per token and group of bk features at run time (dynamic scales), then one
block-scaled GEMM accumulates in float32. `in_padded` rounds `in_features` up to a multiple of bk:
the GEMM works on whole k blocks, so a ragged input dim (DeepSeek-V2-Lite's 10944) is padded
with zero weight columns and zero activations, which changes no product.

On CUDA the GEMM is one of three implementations of the recipe -- our Triton kernel
(`lmlang.kernels.fp8_gemm`, activations quantized by `lmlang.kernels.fp8`), cuBLASLt's
block-scaled GEMM (`lmlang.kernels.fp8_cublas`) or FlashInfer's SM90 DeepGEMM kernel
(`lmlang.kernels.fp8_flashinfer`, which quantizes the activations itself) -- chosen per token
count by the layer's `GemmPlan` (`fp8_gemm_plan.py`: the backends of `$LMLANG_FP8_GEMM_BACKEND`,
`auto` by default, and the token ranges of each). cuBLAS and FlashInfer run bf16 models with
128 x 128 blocks only; others use the Triton kernel.
At decode batch sizes (M <= 8 tokens) on CUDA, a projection runs W8A16 instead where the device's
tuned table (`lmlang.kernels.gemv_fp8.gemv_fp8_config`, from `benchmarks/gemv_bench.py --fp8`)
says it beats W8A8 for that weight shape and token count: one `gemv_fp8` launch streams the fp8
weight and multiplies it, block-scaled, with x as it is -- no activation quantization kernel and
no activation rounding (more accurate than W8A8). Without a table entry W8A8 runs as above.
The plan and cuBLAS's weight-scale layout are fixed once, in `process_weights_after_loading` (the
model loader calls it; it probes cuBLAS and FlashInfer on the device); a forward then only
compares its token count with the plan's ranges, so it adds no host synchronization and captures
in CUDA graphs. FlashInfer compiles a kernel per weight shape and block configuration on first
use (its configuration depends on M): the CUDA-graph runner runs every captured batch size
eagerly before capturing it, so no compile happens inside a capture (see
`lmlang.kernels.fp8_flashinfer`). Elsewhere (CPU) the torch references run (the same arithmetic:
quantize, dequantize, matmul in float32).
A stacked projection (q/k/v, gate/up) keeps its shard table: each checkpoint shard fills its rows
of `weight` and, when its row offset is a multiple of bn, its rows of `weight_scale_inv`.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlang.kernels.fp8 import (
    FP8_DTYPE,
    dequant_weight_block_fp8,
    fp8_block_gemm,
    per_token_group_quant_fp8,
    quant_weight_block_fp8,
    ref_fp8_block_gemm,
    ref_per_token_group_quant_fp8,
)
from lmlang.kernels.fp8_cublas import (
    ROW_MULTIPLE,
    cublas_block_fp8_unsupported_reason,
    cublas_weight_scales,
    fp8_block_gemm_cublas,
)
from lmlang.kernels.fp8_flashinfer import fp8_block_gemm_flashinfer, flashinfer_block_fp8_unsupported_reason
from lmlang.kernels.gemv import MAX_M, GemvConfig
from lmlang.kernels.gemv_fp8 import config_fits_block, gemv_fp8, gemv_fp8_config
from lmlang.runtime.layers.dispatch import use_kernels
from lmlang.runtime.layers.linear import Linear, StackedLinear, _device_name, new_parameter
from lmlang.runtime.quantization.fp8_gemm_plan import GEMM_BACKENDS, GemmPlan, gemm_backend_from_env, plan_gemm


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def w8a16_config(m: int, n: int, k: int, dtype: torch.dtype, block: tuple[int, int],
                 device_name: str) -> Optional[GemvConfig]:
    """The `gemv_fp8` config for m tokens of x (`dtype`) times an [n, k] fp8 weight scaled per
    `block`, or None to run W8A8: none for m > 8, an x dtype other than bf16 / fp16, no table
    entry (`gemv_fp8_config`, cached), or an entry that does not fit the block."""
    if not 1 <= m <= MAX_M or dtype not in (torch.bfloat16, torch.float16):
        return None
    config = gemv_fp8_config(m, n, k, dtype, device_name)
    return config if config is not None and config_fits_block(config, block) else None


def quant_activation(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [m, K] -> (fp8 [m, K], float32 scales [m, K / group]): the kernel on CUDA, else its reference."""
    if x.is_cuda:
        return per_token_group_quant_fp8(x.contiguous(), group)
    return ref_per_token_group_quant_fp8(x, group)


def fake_quant_activation(x: torch.Tensor, group: int) -> torch.Tensor:
    """x rounded through per-group FP8 and back, in x's dtype (what the W8A8 GEMM sees of x)."""
    q, scales = ref_per_token_group_quant_fp8(x, group)
    return (q.float() * scales.repeat_interleave(group, dim=-1)).to(x.dtype)


def new_fp8_parameter(shape: tuple, loader) -> nn.Parameter:
    param = nn.Parameter(torch.zeros(shape, dtype=FP8_DTYPE), requires_grad=False)
    param.weight_loader = loader
    return param


def new_scale_parameter(shape: tuple, loader) -> nn.Parameter:
    param = nn.Parameter(torch.ones(shape, dtype=torch.float32), requires_grad=False)
    param.weight_loader = loader
    return param


class Fp8Linear(nn.Module):
    """`y = x @ W^T + bias` with W stored block-quantized (see the module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        block: tuple[int, int],
        shards: Optional[Mapping[Hashable, int]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """`dtype`: the model's dtype (bias, output of `dequantized_weight`); default: the ambient one."""
        super().__init__()
        bn, bk = block
        self.dtype = dtype or torch.get_default_dtype()
        self.in_features = in_features
        self.out_features = out_features
        self.block = (bn, bk)
        self.padded_in = cdiv(in_features, bk) * bk
        self.shard_sizes = dict(shards) if shards else None
        self.shard_offsets: dict = {}
        start = 0
        for shard_id, size in (self.shard_sizes or {}).items():
            self.shard_offsets[shard_id] = (start, size)
            start += size
        self.weight = new_fp8_parameter((out_features, self.padded_in), self.weight_loader)
        self.weight_scale_inv = new_scale_parameter((cdiv(out_features, bn), self.padded_in // bk), self.weight_loader)
        self.bias = new_parameter((out_features,), self.weight_loader) if bias else None
        self.gemm_plan = GemmPlan()  # set by process_weights_after_loading: which GEMM runs at which M
        self.register_buffer("weight_scale_cublas", None, persistent=False)  # [L4, ceil(out / bn)], strides (1, L4)
        if self.shard_sizes:
            for param in self.parameters():
                param.shard_ids = tuple(self.shard_sizes)

    @property
    def split_sizes(self) -> list:
        if self.shard_sizes is None:
            raise AttributeError("split_sizes: this projection is not stacked")
        return list(self.shard_sizes.values())

    def _rows(self, shard_id: Optional[Hashable]) -> tuple[int, int]:
        if self.shard_sizes is None:
            if shard_id is not None:
                raise ValueError(f"fp8 projection has no shards, got shard {shard_id!r}")
            return 0, self.out_features
        if shard_id not in self.shard_offsets:
            raise ValueError(f"stacked fp8 projection has shards {list(self.shard_offsets)}, got {shard_id!r}")
        return self.shard_offsets[shard_id]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[Hashable] = None) -> None:
        start, size = self._rows(shard_id)
        bn = self.block[0]
        if param is self.weight:
            if loaded.dtype != FP8_DTYPE:
                raise ValueError(f"fp8 checkpoint: expected a {FP8_DTYPE} weight, got {loaded.dtype}")
            target = param.data.narrow(0, start, size)[:, : self.in_features]
        elif param is self.weight_scale_inv:
            if start % bn:
                raise ValueError(
                    f"fp8 checkpoint: shard {shard_id!r} of a stacked projection starts at row {start}, not a multiple "
                    f"of the {bn}-row weight block, so its block scales cannot be stacked"
                )
            target = param.data.narrow(0, start // bn, cdiv(size, bn))
        else:
            target = param.data.narrow(0, start, size)
        if target.shape != loaded.shape:
            what = "" if shard_id is None else f"shard {shard_id!r}: "
            raise ValueError(f"{what}checkpoint tensor has shape {tuple(loaded.shape)}, expected {tuple(target.shape)}")
        target.copy_(loaded)

    @classmethod
    def like(cls, linear: Linear, block: tuple[int, int]) -> "Fp8Linear":
        """An empty FP8 layer of `linear`'s shape (and shard table), to load an FP8 checkpoint into."""
        shards = linear.shard_sizes if isinstance(linear, StackedLinear) else None
        return cls(linear.in_features, linear.out_features, linear.bias is not None, block, shards, linear.weight.dtype)

    @classmethod
    @torch.no_grad()
    def quantize(cls, linear: Linear, block: tuple[int, int]) -> "Fp8Linear":
        """`linear`'s loaded weights, block-quantized (online quantization)."""
        with torch.device(linear.weight.device):
            layer = cls.like(linear, block)
        w = F.pad(linear.weight.float(), (0, layer.padded_in - linear.in_features))
        q, scale_inv = quant_weight_block_fp8(w, block)
        layer.weight.copy_(q)
        layer.weight_scale_inv.copy_(scale_inv)
        if linear.bias is not None:
            layer.bias = linear.bias
        return layer

    @torch.no_grad()
    def process_weights_after_loading(self, backend: Optional[str] = None) -> None:
        """Fixes the GEMM plan (`backend`, default `$LMLANG_FP8_GEMM_BACKEND`; see `fp8_gemm_plan`)
        and, where cuBLAS is in it, lays the weight scales out once as cuBLASLt reads them
        (`weight_scale_cublas`; `weight_scale_inv` stays as loaded, for Triton and FlashInfer).
        Probes cuBLAS and FlashInfer on the device once per kind of shape (host synchronizations;
        FlashInfer's first probe compiles kernels); call it again after a change of weights or
        device. A forced backend that cannot run this weight raises ValueError. CPU layers keep
        the torch reference whatever the backend."""
        backend = backend or gemm_backend_from_env()
        if backend not in GEMM_BACKENDS:
            raise ValueError(f"fp8 GEMM backend must be one of {GEMM_BACKENDS}, got {backend!r}")
        self.gemm_plan, self.weight_scale_cublas = GemmPlan(), None
        if not self.weight.is_cuda:
            return
        n, k = self.weight.shape

        def unsupported_reason(name: str) -> Optional[str]:
            if self.block != (128, 128):
                return f"block {list(self.block)} is not the 128 x 128 of {name}'s kernel"
            if name == "cublas":
                return cublas_block_fp8_unsupported_reason(self.weight.device, n, k)
            return flashinfer_block_fp8_unsupported_reason(self.weight.device, n, k)

        self.gemm_plan = plan_gemm(backend, unsupported_reason, weight=f"the [{n}, {k}] fp8 weight")
        if self.gemm_plan.cublas_min_tokens is not None:
            self.weight_scale_cublas = cublas_weight_scales(self.weight_scale_inv)

    def dequantized_weight(self) -> torch.Tensor:
        """W [out, in] in the model's dtype (for layers that need it dense, e.g. MLA's absorption)."""
        w = dequant_weight_block_fp8(self.weight, self.weight_scale_inv, self.block)[:, : self.in_features]
        return w.to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        m = x2.shape[0]
        if use_kernels(x) and m <= MAX_M:
            config = w8a16_config(m, *self.weight.shape, x.dtype, self.block, _device_name(x.device.index or 0))
            if config is not None:
                fused_bias = self.bias is not None and self.bias.dtype == x.dtype
                if x2.stride(1) != 1:
                    x2 = x2.contiguous()
                y = gemv_fp8(x2, self.weight, self.weight_scale_inv, self.block, self.bias if fused_bias else None,
                             config)
                if self.bias is not None and not fused_bias:
                    y = y + self.bias
                return y.reshape(*lead, self.out_features)
        gemm = self.gemm_plan.gemm_for(m) if x.dtype == torch.bfloat16 and x.is_cuda else "triton"
        if gemm == "flashinfer" and use_kernels(x):  # (a peer library's call: not under torch.compile's tracing)
            y = fp8_block_gemm_flashinfer(x2.contiguous(), self.weight, self.weight_scale_inv, x.dtype)
        elif gemm == "cublas":
            # rows padded to a multiple of 4, scales column-major: the layout cuBLASLt reads
            a, a_scales = per_token_group_quant_fp8(
                x2.contiguous(), self.block[1], column_major_scales=True, pad_rows_to=ROW_MULTIPLE
            )
            y = fp8_block_gemm_cublas(a, a_scales, self.weight, self.weight_scale_cublas, x.dtype)[:m]
        else:
            a, a_scales = quant_activation(x2, self.block[1])
            triton_gemm = fp8_block_gemm if x.is_cuda else ref_fp8_block_gemm
            y = triton_gemm(a, a_scales, self.weight, self.weight_scale_inv, x.dtype, self.block)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"block={list(self.block)}"
        )
