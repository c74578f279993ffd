"""The W8A8 block-scaled FP8 GEMM through cuBLASLt (`torch._scaled_mm`), DeepSeek-V3 layout.

Same product as `fp8_block_gemm` (`lmlang.kernels.fp8_gemm`): activations with one float32 scale
per token and 1 x 128 group, weights with one `scale_inv` per 128 x 128 block. cuBLASLt (CUDA >=
12.9) runs this recipe on SM90 only; PyTorch exposes it in `torch.nn.functional.scaled_mm` (the
explicit-recipe API; `torch._scaled_mm_v2` underneath) and, inferring the recipe from the scale
shapes, in `torch._scaled_mm`. cuBLASLt reads the scales in fixed layouts, for A [M, K] (row-major)
and B = w.t() [K, N] (column-major), with L = K / 128 and L4 = L rounded up to a multiple of 4:

- A's scales: [M, L] with strides (1, M): the transpose of a contiguous [L, M] tensor, which
  `per_token_group_quant_fp8(..., column_major_scales=True)` writes directly; M is padded to a
  multiple of 4 (`pad_rows_to=4`) so that the scale columns are 16-byte aligned.
- B's scales: [L4, ceil(N / 128)] with strides (1, L4): the transpose of a contiguous
  [ceil(N / 128), L4] tensor whose columns past L are padding. `cublas_weight_scales` builds it
  once per weight, at load time.

`torch._scaled_mm` checks B's scales against the unpadded stride L, and without the padding
cuBLASLt reads wrong scales when L % 4 != 0 (pytorch/pytorch#166752), so that API is used only
where L % 4 == 0 (there both layouts are the same); `torch.nn.functional.scaled_mm` takes the
padded layout for every L.

Availability (`cublas_block_fp8_supported`) is decided once per device by running the recipe on
a tiny problem and comparing it with `ref_fp8_block_gemm`: an older torch, another GPU or a
cuBLAS that computes something else makes it False, and callers use the Triton kernel.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from lmlang.kernels.device_probe import ProbeKey, cached_probe, sm90_device
from lmlang.kernels.fp8 import quant_weight_block_fp8, ref_fp8_block_gemm, ref_per_token_group_quant_fp8


BLOCK = 128  # cuBLASLt's only block size: 1 x 128 activation groups, 128 x 128 weight blocks
ROW_MULTIPLE = 4  # A's rows (and so its scale columns' length) padded to this multiple
K_BLOCKS_MULTIPLE = 4  # B's scale rows hold L rounded up to this multiple of k blocks
_FP8 = torch.float8_e4m3fn
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


@functools.lru_cache(maxsize=None)
def _scaled_mm_for(padded_k_blocks: bool) -> Optional[Callable]:
    """The torch entry point that runs the recipe right, `(a, b, scale_a, scale_b, out_dtype) -> out`,
    for L % 4 != 0 (`padded_k_blocks`) or L % 4 == 0; None if this torch has none."""
    scaling = getattr(F, "ScalingType", None)
    if hasattr(F, "scaled_mm") and all(hasattr(scaling, r) for r in ("BlockWise1x128", "BlockWise128x128")):
        recipes = dict(scale_recipe_a=scaling.BlockWise1x128, scale_recipe_b=scaling.BlockWise128x128)
        return lambda a, b, sa, sb, out_dtype: F.scaled_mm(a, b, scale_a=sa, scale_b=sb, output_dtype=out_dtype,
                                                            **recipes)
    if hasattr(torch, "_scaled_mm") and not padded_k_blocks:
        return lambda a, b, sa, sb, out_dtype: torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    return None


def cublas_weight_scales(w_scale_inv: torch.Tensor) -> torch.Tensor:
    """w_scale_inv [ceil(N / 128), L] (checkpoint layout) -> the [L4, ceil(N / 128)] view, strides
    (1, L4), that cuBLASLt reads for B = w.t(); a new tensor, zero in the padding columns."""
    if w_scale_inv.dim() != 2 or w_scale_inv.dtype != torch.float32:
        raise ValueError(
            f"cublas_weight_scales: expected a 2-D float32 scale_inv, "
            f"got {tuple(w_scale_inv.shape)} {w_scale_inv.dtype}"
        )
    n_blocks, k_blocks = w_scale_inv.shape
    padded = w_scale_inv.new_zeros(n_blocks, round_up(k_blocks, K_BLOCKS_MULTIPLE))  # [ceil(N / 128), L4]
    padded[:, :k_blocks] = w_scale_inv
    return padded.t()


def fp8_block_gemm_cublas(
    a_fp8: torch.Tensor,
    a_scales: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scales: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """`a @ w^T` through cuBLASLt's 1x128 x 128x128 block scaling; returns [Mp, N] in `out_dtype`.

    a_fp8: [Mp, K] fp8, row-major, Mp a multiple of 4 (pad the rows; slice the output back).
    a_scales: [Mp, K / 128] float32 with strides (1, Mp) (`per_token_group_quant_fp8` with
    `column_major_scales=True, pad_rows_to=4`). w_fp8: [N, K] fp8, contiguous. w_scales: the
    `cublas_weight_scales` of w's scale_inv. Call only where `cublas_block_fp8_supported` holds
    (it raises RuntimeError if torch has no entry point for this K). No host synchronization.
    """
    if a_fp8.dtype != _FP8 or w_fp8.dtype != _FP8:
        raise ValueError(f"fp8_block_gemm_cublas: operands must be {_FP8}, got {a_fp8.dtype} and {w_fp8.dtype}")
    if a_fp8.dim() != 2 or w_fp8.dim() != 2 or a_fp8.shape[1] != w_fp8.shape[1]:
        raise ValueError(
            f"fp8_block_gemm_cublas: shapes a {tuple(a_fp8.shape)} and w {tuple(w_fp8.shape)} do not chain"
        )
    m, k = a_fp8.shape
    n = w_fp8.shape[0]
    k_blocks, n_blocks = k // BLOCK, -(-n // BLOCK)
    if k % BLOCK or m % ROW_MULTIPLE or n % 16:
        raise ValueError(
            f"fp8_block_gemm_cublas: needs K % {BLOCK} == 0, M % {ROW_MULTIPLE} == 0 and N % 16 == 0; "
            f"got M={m}, N={n}, K={k}"
        )
    if not (a_fp8.is_contiguous() and w_fp8.is_contiguous()):
        raise ValueError("fp8_block_gemm_cublas: a_fp8 and w_fp8 must be contiguous")
    if a_scales.dtype != torch.float32 or tuple(a_scales.shape) != (m, k_blocks) or (
        k_blocks > 1 and a_scales.stride() != (1, m)
    ):
        raise ValueError(
            f"fp8_block_gemm_cublas: a_scales must be [{m}, {k_blocks}] float32 with strides (1, {m}) "
            f"(per_token_group_quant_fp8(..., column_major_scales=True, pad_rows_to={ROW_MULTIPLE})), "
            f"got {tuple(a_scales.shape)} {a_scales.dtype} strides {a_scales.stride()}"
        )
    k_padded = round_up(k_blocks, K_BLOCKS_MULTIPLE)
    if w_scales.dtype != torch.float32 or tuple(w_scales.shape) != (k_padded, n_blocks) or (
        w_scales.stride(0) != 1 or (n_blocks > 1 and w_scales.stride(1) != k_padded)
    ):
        raise ValueError(
            f"fp8_block_gemm_cublas: w_scales must be [{k_padded}, {n_blocks}] float32 with strides (1, {k_padded}) "
            f"(cublas_weight_scales(w_scale_inv)), got {tuple(w_scales.shape)} {w_scales.dtype} "
            f"strides {w_scales.stride()}"
        )
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"fp8_block_gemm_cublas: out_dtype {out_dtype} not supported; use one of {_OUT_DTYPES}")
    scaled_mm = _scaled_mm_for(k_padded != k_blocks)
    if scaled_mm is None:
        raise RuntimeError(f"fp8_block_gemm_cublas: this torch ({torch.__version__}) cannot run the recipe at K={k}")
    return scaled_mm(a_fp8, w_fp8.t(), a_scales, w_scales, out_dtype)


def _probe(device: torch.device, n: int, k: int) -> Optional[str]:
    """Runs the recipe on a [4, k] x [n, k]^T problem; None if it matches the reference, else why not.
    Every k group and weight block gets its own magnitude (factors 1 to 16), so a scale read from the
    wrong place, or padding read as a scale, shows as a large error."""
    g = torch.Generator(device=device).manual_seed(0)
    k_blocks, n_blocks = k // BLOCK, -(-n // BLOCK)
    rows, cols = torch.arange(n_blocks, device=device)[:, None], torch.arange(k_blocks, device=device)
    group_gain = 2.0 ** (torch.arange(ROW_MULTIPLE * k_blocks, device=device) % 5).view(ROW_MULTIPLE, k_blocks)
    block_gain = 2.0 ** ((rows + 2 * cols) % 5)  # [ceil(n / 128), L]
    a = torch.randn(ROW_MULTIPLE, k, device=device, generator=g) * group_gain.repeat_interleave(BLOCK, 1)
    w = torch.randn(n, k, device=device, generator=g) * 0.02
    w = w * block_gain.repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)
    a_fp8, a_scales = ref_per_token_group_quant_fp8(a, BLOCK)
    w_fp8, w_scale_inv = quant_weight_block_fp8(w, (BLOCK, BLOCK))
    try:
        out = fp8_block_gemm_cublas(a_fp8, a_scales.t().contiguous().t(), w_fp8, cublas_weight_scales(w_scale_inv))
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    ref = ref_fp8_block_gemm(a_fp8, a_scales, w_fp8, w_scale_inv, torch.float32)
    err = float((out.float() - ref).norm() / ref.norm())
    return None if err < 1e-2 else f"wrong result at N={n}, K={k} (relative error {err:.3g})"


_probe_results: dict[ProbeKey, Optional[str]] = {}  # (device, n, k) -> `_probe`'s answer


def cublas_block_fp8_unsupported_reason(device: torch.device | str, n: int, k: int) -> Optional[str]:
    """None if `fp8_block_gemm_cublas` runs an [*, k] x [n, k]^T GEMM correctly on `device`, else
    why not. Runs (once per device and kind of shape; never during CUDA graph capture) a tiny
    probe, with a host synchronization: call it at load time, not per step."""
    device, reason = sm90_device(torch.device(device), "cuBLASLt's 1x128 x 128x128 block scaling")
    if reason is not None:
        return reason
    if k % BLOCK or n % 16:
        return f"shape N={n}, K={k}: cuBLASLt needs K % {BLOCK} == 0 and N % 16 == 0"
    if _scaled_mm_for(k // BLOCK % K_BLOCKS_MULTIPLE != 0) is None:
        return f"torch {torch.__version__} has no block-scaled scaled_mm for K={k}"
    # one probe per case that differs in layout: k blocks a multiple of 4 or padded; whole or ragged n blocks
    probe_n = 2 * BLOCK if n % BLOCK == 0 else BLOCK + 64
    probe_k = 4 * BLOCK if k // BLOCK % K_BLOCKS_MULTIPLE == 0 else 3 * BLOCK
    return cached_probe(_probe_results, (device, probe_n, probe_k), _probe, "cuBLAS block-scaled FP8 GEMM")


def cublas_block_fp8_supported(device: torch.device | str, n: int, k: int) -> bool:
    """Whether `fp8_block_gemm_cublas` can replace `fp8_block_gemm` for weights [n, k] on `device`
    (see `cublas_block_fp8_unsupported_reason`)."""
    return cublas_block_fp8_unsupported_reason(device, n, k) is None
