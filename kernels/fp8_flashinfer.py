"""The W8A8 block-scaled FP8 GEMM through FlashInfer's SM90 kernel (DeepGEMM's recipe), DeepSeek-V3 layout.

Same product as `fp8_block_gemm` (`lmlang.kernels.fp8_gemm`) and `fp8_block_gemm_cublas`
(`lmlang.kernels.fp8_cublas`): activations in 1 x 128 groups with one float32 scale each, weights
with one `scale_inv` per 128 x 128 block. The kernel is a peer library's:
`flashinfer.gemm.fp8_blockscale_gemm_sm90` (flashinfer-python 0.6.6) is TensorRT-LLM's port of
DeepGEMM, a warp-specialized TMA GEMM that applies the scales while accumulating in float32, with
a swap-AB variant for fewer than 32 rows. Why we use it: on the H200 (DeepSeek-V3 projections,
graph-replayed, quantization included) it beat cuBLASLt's block-scaled GEMM at 64 tokens on every
shape (e.g. 36864 x 7168: 73 us against 94; 7168 x 18432: 43 against 59), while at 4096 it was
1-5% slower (16% on 2112 x 7168); `Fp8Linear` picks it in a token range
(`runtime/quantization/fp8_gemm_plan.py`).

We pass x in bf16 and let the library quantize it (`input_scale=None`): one call, one quantization
kernel of its own, and correct at every M. The alternative, our fp8 x with column-major scales
(`per_token_group_quant_fp8(..., column_major_scales=True)`), measured 2-3 us faster at 64 tokens
but is wrong below 32 rows: the swap-AB kernel reads the activation scales in another layout, and
the 32-row switch is an internal of the library. The library's quantization is ours up to
rounding (`scale = amax / 448`, round to nearest), so `ref_fp8_block_gemm_flashinfer` (our
quantization, then the dequantized product in float32) is its reference.

JIT: the library compiles (nvcc, through DeepGEMM's JIT) one kernel per (N, K, block_m, block_n,
stages, TMA multicast, swap-AB) on first use, 2-3 s each; M picks the block configuration (swap-AB
below 32 rows, block_m 64 up to 64 rows, block_n and multicast from the wave count), so one weight
shape needs about nine kernels over 16..1024 tokens. Cubins are cached on disk
(`$TRTLLM_DG_CACHE_DIR`, default `~/.tensorrt_llm/cache`) and loaded from there by later
processes. The first call of a process also loads FlashInfer's binding, building it with nvcc the
first time on a machine (then cached under FlashInfer's JIT directory). A compile must not
happen inside CUDA-graph capture: the model runner
(`runtime/cuda_graph.py`) runs every captured batch size eagerly (`WARMUP_RUNS`) before capturing
it, which compiles what the graph will launch. An eager prefill chunk with a token count of a new
configuration compiles on its first occurrence (a one-time stall per machine).

Workspace: each call allocates its workspace (x quantized, with its scales) with `torch.empty`,
i.e. from PyTorch's caching allocator; under capture that is the graph's private pool, which the
graph keeps, so it is as safe as any temporary of a captured forward. The library's API takes no
workspace (its runner keeps the pointer of the last call's), so none is preallocated here. Its
size grows with the largest M the process has run (the runner keeps that maximum).

Availability (`flashinfer_block_fp8_unsupported_reason`) is decided once per device and kind of
shape by running the kernel on tiny problems, both kernels (swap-AB and normal), against the
reference; a missing library, another GPU or an unsupported shape gives the reason instead.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Callable, Optional

import torch
from lmlang.kernels.device_probe import ProbeKey, cached_probe, sm90_device
from lmlang.kernels.fp8 import quant_weight_block_fp8, ref_fp8_block_gemm, ref_per_token_group_quant_fp8


BLOCK = 128  # 1 x 128 activation groups, 128 x 128 weight blocks; K must be a multiple of it
N_MULTIPLE = 64  # the library's requirement on N
SWAP_AB_BELOW = 32  # rows: under this the library runs its swap-AB kernel (the probe runs both)
_FP8 = torch.float8_e4m3fn


@functools.lru_cache(maxsize=None)
def _library() -> tuple[Optional[Callable], Optional[str]]:
    """(`fp8_blockscale_gemm_sm90`, None), or (None, why it cannot be had here)."""
    try:
        import flashinfer.gemm
    except Exception as e:  # noqa: BLE001 -- any import failure (missing package, CUDA libraries) means unavailable
        return None, f"flashinfer is not importable ({type(e).__name__}: {str(e).strip()[:200]})"
    fn = getattr(flashinfer.gemm, "fp8_blockscale_gemm_sm90", None)
    if fn is None:
        return None, f"flashinfer {getattr(flashinfer, '__version__', '?')} has no gemm.fp8_blockscale_gemm_sm90"
    return fn, None


def _nvcc_missing() -> Optional[str]:
    """Why DeepGEMM's JIT would find no nvcc (it looks where this does), or None. Checked before
    any call: where its JIT fails to load a kernel it ends the process (`exit(1)`), not raises."""
    cuda_home = os.environ.get("CUDA_HOME")
    default = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "nvcc"
    nvcc = os.environ.get("TRTLLM_DG_NVCC_COMPILER") or default
    if shutil.which(nvcc) is not None:
        return None
    return f"DeepGEMM's JIT needs nvcc, {nvcc!r} is not an executable (set CUDA_HOME or TRTLLM_DG_NVCC_COMPILER)"


def ref_fp8_block_gemm_flashinfer(
    x: torch.Tensor, w_fp8: torch.Tensor, w_scale_inv: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Torch reference for `fp8_block_gemm_flashinfer`: x quantized per 1 x 128 group (ours),
    then both operands dequantized and multiplied in float32. [M, K] x [N, K]^T -> [M, N]."""
    x_fp8, x_scales = ref_per_token_group_quant_fp8(x, BLOCK)
    return ref_fp8_block_gemm(x_fp8, x_scales, w_fp8, w_scale_inv, out_dtype, (BLOCK, BLOCK))


def _check_operands(x: torch.Tensor, w_fp8: torch.Tensor, w_scale_inv: torch.Tensor, out_dtype: torch.dtype) -> None:
    name = "fp8_block_gemm_flashinfer"
    if x.dtype != torch.bfloat16 or w_fp8.dtype != _FP8 or w_scale_inv.dtype != torch.float32:
        raise ValueError(
            f"{name}: expected x bfloat16, w {_FP8}, w_scale_inv float32; "
            f"got {x.dtype}, {w_fp8.dtype}, {w_scale_inv.dtype}"
        )
    if x.dim() != 2 or w_fp8.dim() != 2 or x.shape[1] != w_fp8.shape[1]:
        raise ValueError(f"{name}: shapes x {tuple(x.shape)} and w {tuple(w_fp8.shape)} do not chain")
    n, k = w_fp8.shape
    if k % BLOCK or n % N_MULTIPLE:
        raise ValueError(f"{name}: needs K % {BLOCK} == 0 and N % {N_MULTIPLE} == 0, got N={n}, K={k}")
    if tuple(w_scale_inv.shape) != (-(-n // BLOCK), k // BLOCK):
        raise ValueError(
            f"{name}: w_scale_inv must be [{-(-n // BLOCK)}, {k // BLOCK}] (one scale per {BLOCK} x {BLOCK} "
            f"block), got {tuple(w_scale_inv.shape)}"
        )
    if out_dtype != torch.bfloat16:
        raise ValueError(f"{name}: the kernel writes bfloat16 only, got out_dtype {out_dtype}")
    if not all(t.is_contiguous() for t in (x, w_fp8, w_scale_inv)):
        raise ValueError(f"{name}: x, w_fp8 and w_scale_inv must be contiguous")
    if x.device.type != "cuda" or len({t.device for t in (x, w_fp8, w_scale_inv)}) != 1:
        raise ValueError(
            f"{name}: all operands must be on one CUDA device, got {x.device}, {w_fp8.device}, {w_scale_inv.device}"
        )


def fp8_block_gemm_flashinfer(
    x: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """`x @ w^T` through FlashInfer's SM90 block-scaled FP8 GEMM, x quantized by the library.

    x: [M, K] bfloat16, contiguous. w_fp8: [N, K] float8_e4m3fn, contiguous, N % 64 == 0,
    K % 128 == 0. w_scale_inv: [ceil(N / 128), K / 128] float32, contiguous (the checkpoint's
    layout). Returns [M, N] bfloat16 (the only output dtype the kernel writes). Call only where
    `flashinfer_block_fp8_unsupported_reason` is None. No host synchronization; the first call per
    kernel configuration compiles it (see the module docstring).
    """
    _check_operands(x, w_fp8, w_scale_inv, out_dtype)
    if x.shape[0] == 0:
        return x.new_empty(0, w_fp8.shape[0])
    if x.data_ptr() % 16:  # the library's quantization kernel loads x in vectors: a fresh (aligned) copy
        x = x.clone()
    fn, reason = _library()
    if fn is None:
        raise RuntimeError(f"fp8_block_gemm_flashinfer: {reason}")
    return fn(x, w_fp8, None, w_scale_inv, out_dtype=torch.bfloat16)


def _probe(device: torch.device, n: int, k: int) -> Optional[str]:
    """Runs the kernel on [m, k] x [n, k]^T at m = 8 (swap-AB) and m = 40; None if both match the
    reference, else why not. Every k group and weight block gets its own magnitude (factors 1 to
    16), so a scale read from the wrong place shows as a large error."""
    g = torch.Generator(device=device).manual_seed(0)
    k_blocks, n_blocks = k // BLOCK, -(-n // BLOCK)
    rows, cols = torch.arange(n_blocks, device=device)[:, None], torch.arange(k_blocks, device=device)
    block_gain = 2.0 ** ((rows + 2 * cols) % 5)  # [ceil(n / 128), k / 128]
    w = torch.randn(n, k, device=device, generator=g) * 0.02
    w = w * block_gain.repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)
    w_fp8, w_scale_inv = quant_weight_block_fp8(w)
    for m in (8, SWAP_AB_BELOW + 8):
        group_gain = 2.0 ** (torch.arange(m * k_blocks, device=device) % 5).view(m, k_blocks)
        x = (torch.randn(m, k, device=device, generator=g) * group_gain.repeat_interleave(BLOCK, 1)).to(torch.bfloat16)
        try:
            out = fp8_block_gemm_flashinfer(x, w_fp8, w_scale_inv)
        except Exception as e:  # noqa: BLE001 -- a peer library's failure of any kind means "not here"
            return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        ref = ref_fp8_block_gemm_flashinfer(x, w_fp8, w_scale_inv, torch.float32)
        err = float((out.float() - ref).norm() / ref.norm())
        if not err < 1e-2:
            return f"wrong result at M={m}, N={n}, K={k} (relative error {err:.3g})"
    return None


_probe_results: dict[ProbeKey, Optional[str]] = {}  # (device, n, k) -> `_probe`'s answer


def flashinfer_block_fp8_unsupported_reason(device: torch.device | str, n: int, k: int) -> Optional[str]:
    """None if `fp8_block_gemm_flashinfer` runs an [*, k] x [n, k]^T GEMM correctly on `device`,
    else why not. Runs (once per device and kind of shape -- N a multiple of 128 or not, K / 128 a
    multiple of 4 or not; never during CUDA graph capture) tiny probes that compile two kernels and
    synchronize the host: call it at load time, not per step."""
    if k % BLOCK or n % N_MULTIPLE:
        return f"shape N={n}, K={k}: FlashInfer's kernel needs K % {BLOCK} == 0 and N % {N_MULTIPLE} == 0"
    device, reason = sm90_device(torch.device(device), "FlashInfer's block-scaled FP8 GEMM")
    if reason is not None:
        return reason
    reason = _library()[1] or _nvcc_missing()
    if reason is not None:
        return reason
    probe_n = 2 * BLOCK if n % BLOCK == 0 else BLOCK + N_MULTIPLE
    probe_k = 12 * BLOCK if k // BLOCK % 4 == 0 else 11 * BLOCK  # more k blocks than pipeline stages
    return cached_probe(_probe_results, (device, probe_n, probe_k), _probe, "FlashInfer's block-scaled FP8 GEMM")
