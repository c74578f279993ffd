"""Fused mixture-of-experts: tokens sorted by expert, one grouped GEMM per projection.

Data path of `fused_experts` for M tokens, each routed to top_k experts:
1. `moe_align_block_size` (kernels/moe_align.py): the M * top_k (token, expert) pairs, numbered
   `t * top_k + j`, are grouped by expert and each expert's run is padded to a multiple of
   BLOCK_SIZE_M with the sentinel M * top_k, so every block of BLOCK_SIZE_M rows belongs to one
   expert (one launch at decode sizes).
2. `fused_moe_kernel` on w13 ([E, 2I, H]): for each block, `hidden[t] @ w13[e]^T` -> [M * top_k, 2I].
3. `silu_and_mul` -> [M * top_k, I].
4. `fused_moe_kernel` on w2 ([E, H, I]), times the routing weight -> [M * top_k, H].
5. `moe_sum`: the sum over the top_k slots (plus an optional residual, e.g. the shared experts'
   output) -> [M, H].
With `use_fp8`, the weights are fp8 with 128 x 128 block scales and each GEMM's input is
quantized per 1 x 128 group first (W8A8, as DeepSeek-V3's checkpoints are served); the second
one's quantization runs inside the SiLU-and-mul launch (`fp8.silu_and_mul_quant_fp8`).
All shapes stay on the device: no host sync, so the path can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from lmlang.kernels.activation import silu_and_mul
from lmlang.kernels.fp8 import FP8_DTYPE, dequant_weight_block_fp8, per_token_group_quant_fp8, silu_and_mul_quant_fp8
from lmlang.kernels.launch import dot_needs_fp32, launch, pdl_launch_dependents, pdl_wait
from lmlang.kernels.moe_align import moe_align_block_size
from lmlang.kernels.moe_config import FusedMoEConfig, get_fused_moe_config
from lmlang.kernels.rounding import round_to
from lmlang.kernels.tiling import grouped_tile

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
__all__ = ["fused_experts", "fused_moe_gemm", "fused_moe_kernel", "moe_align_block_size", "moe_sum", "ref_fused_experts",
           "ref_moe_sum"]


@functools.lru_cache(maxsize=None)
def _device_name(device: torch.device) -> Optional[str]:
    """The CUDA device's name (the config table key; None off CUDA), looked up once per device."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


@triton.jit
def fused_moe_kernel(
    a_ptr,  # [num_a_rows, K]: row of pair p is p // TOP_K
    b_ptr,  # [E, N, K] expert weights
    c_ptr,  # [num_pairs, N]
    a_scale_ptr,  # [num_a_rows, K / SCALE_K] float32 (USE_FP8)
    b_scale_ptr,  # [E, ceil(N / SCALE_N), K / SCALE_K] float32 (USE_FP8)
    topk_weights_ptr,  # [num_pairs] (MUL_ROUTED_WEIGHT)
    sorted_ids_ptr, expert_ids_ptr, num_post_padded_ptr,  # from moe_align_block_size
    N, K, num_pairs, num_sorted,
    stride_am, stride_be, stride_bn, stride_cm, stride_asm, stride_bse, stride_bsn,
    SCALE_N: tl.constexpr, SCALE_K: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    TOP_K: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr, USE_FP8: tl.constexpr,
    IEEE_FP32: tl.constexpr,  # fp32 inputs: exact products, not tf32
    DOT_IN_FP32: tl.constexpr,  # see launch.dot_needs_fp32
    USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    pid = tl.program_id(0)
    num_m = tl.cdiv(num_sorted, BLOCK_SIZE_M)
    num_n = tl.cdiv(N, BLOCK_SIZE_N)
    pid_m, pid_n = grouped_tile(pid, num_m, num_n, GROUP_SIZE_M)
    pdl_wait(USE_PDL)  # the alignment, the routing weights and the input come from the kernels before
    if pid_m * BLOCK_SIZE_M >= tl.load(num_post_padded_ptr):
        return

    pairs = tl.load(sorted_ids_ptr + pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)).to(tl.int64)
    pair_mask = pairs < num_pairs
    a_rows = pairs // TOP_K
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    cols = offs_n % N  # wrapped: loads stay in bounds, the store is masked
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + expert * stride_be + cols[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
    if USE_FP8:
        a_scale_ptrs = a_scale_ptr + a_rows * stride_asm
        b_scale_ptrs = b_scale_ptr + expert * stride_bse + (cols // SCALE_N) * stride_bsn

    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_left = K - kb * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=pair_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if USE_FP8:
            scale_col = (kb * BLOCK_SIZE_K) // SCALE_K
            a_s = tl.load(a_scale_ptrs + scale_col, mask=pair_mask, other=0.0)
            b_s = tl.load(b_scale_ptrs + scale_col)
            acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        elif DOT_IN_FP32:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        elif IEEE_FP32:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
        a_ptrs += BLOCK_SIZE_K
        b_ptrs += BLOCK_SIZE_K
    if MUL_ROUTED_WEIGHT:
        w = tl.load(topk_weights_ptr + pairs, mask=pair_mask, other=0.0).to(tl.float32)
        acc = acc * w[:, None]
    c_ptrs = c_ptr + pairs[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=pair_mask[:, None] & (offs_n[None, :] < N))


def fused_moe_gemm(
    a: torch.Tensor,
    w: torch.Tensor,
    out: torch.Tensor,
    topk_weights: Optional[torch.Tensor],
    sorted_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_post_padded: torch.Tensor,
    top_k: int,
    config: FusedMoEConfig,
    a_scale: Optional[torch.Tensor] = None,
    w_scale: Optional[torch.Tensor] = None,
    block_shape: tuple[int, int] = (128, 128),
) -> None:
    """One grouped GEMM: `out[p] = a[p // top_k] @ w[expert(p)]^T` (times `topk_weights[p]` if given).

    a: [rows, K] (fp8 with `a_scale` [rows, K / bk] when w is fp8); w: [E, N, K] (fp8 with
    `w_scale` [E, ceil(N / bn), K / bk]); out: [num_pairs, N]; the alignment tensors come from
    `moe_align_block_size(..., config.BLOCK_SIZE_M, E)`.
    """
    use_fp8 = w.dtype == FP8_DTYPE
    if use_fp8 and (a.dtype != FP8_DTYPE or a_scale is None or w_scale is None):
        raise ValueError("fused_moe_gemm: fp8 weights need an fp8 input with a_scale and w_scale")
    if use_fp8 and block_shape[1] % config.BLOCK_SIZE_K:
        raise ValueError(f"fused_moe_gemm: BLOCK_SIZE_K {config.BLOCK_SIZE_K} must divide the k block {block_shape[1]}")
    if not use_fp8 and a.dtype != w.dtype:
        raise ValueError(f"fused_moe_gemm: input dtype {a.dtype} differs from weight dtype {w.dtype}")
    num_pairs, n = out.shape
    k = w.shape[2]
    grid = (triton.cdiv(sorted_ids.shape[0], config.BLOCK_SIZE_M) * triton.cdiv(n, config.BLOCK_SIZE_N),)
    launch(
        fused_moe_kernel, grid, a, w, out, a_scale, w_scale, topk_weights,
        sorted_ids, expert_ids, num_post_padded, n, k, num_pairs, sorted_ids.shape[0],
        a.stride(0), w.stride(0), w.stride(1), out.stride(0),
        a_scale.stride(0) if use_fp8 else 0, w_scale.stride(0) if use_fp8 else 0, w_scale.stride(1) if use_fp8 else 0,
        SCALE_N=block_shape[0], SCALE_K=block_shape[1],
        BLOCK_SIZE_M=config.BLOCK_SIZE_M, BLOCK_SIZE_N=config.BLOCK_SIZE_N, BLOCK_SIZE_K=config.BLOCK_SIZE_K,
        GROUP_SIZE_M=config.GROUP_SIZE_M, TOP_K=top_k, MUL_ROUTED_WEIGHT=topk_weights is not None,
        USE_FP8=use_fp8, IEEE_FP32=a.dtype == torch.float32, DOT_IN_FP32=dot_needs_fp32(a),
        num_warps=config.num_warps, num_stages=config.num_stages, pdl=True,
    )


def _check_experts(hidden, w13, w2, topk_weights, topk_ids, use_fp8, w13_scale, w2_scale, block_shape) -> None:
    if hidden.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError("fused_experts: hidden must be [M, H], w13 [E, 2I, H], w2 [E, H, I]")
    m, h = hidden.shape
    e, two_i, _ = w13.shape
    if w13.shape[2] != h or two_i % 2 or tuple(w2.shape) != (e, h, two_i // 2):
        raise ValueError(
            f"fused_experts: shapes hidden {tuple(hidden.shape)}, w13 {tuple(w13.shape)}, "
            f"w2 {tuple(w2.shape)} do not chain"
        )
    if topk_ids.dim() != 2 or topk_ids.shape[0] != m or topk_weights.shape != topk_ids.shape:
        raise ValueError(f"fused_experts: topk_ids / topk_weights must both be [{m}, top_k]")
    if hidden.dtype not in _DTYPE_NAMES:
        raise ValueError(f"fused_experts: hidden dtype {hidden.dtype} not supported")
    if use_fp8:
        bn, bk = block_shape
        if w13.dtype != FP8_DTYPE or w2.dtype != FP8_DTYPE or w13_scale is None or w2_scale is None:
            raise ValueError("fused_experts: use_fp8 needs float8_e4m3fn w13/w2 and both w13_scale and w2_scale")
        if h % bk or (two_i // 2) % bk:
            raise ValueError(f"fused_experts: hidden {h} and intermediate {two_i // 2} must be multiples of {bk}")
        for name, wt, sc in (("w13", w13, w13_scale), ("w2", w2, w2_scale)):
            want = (e, triton.cdiv(wt.shape[1], bn), wt.shape[2] // bk)
            if tuple(sc.shape) != want or sc.dtype != torch.float32:
                raise ValueError(f"fused_experts: {name}_scale must be {list(want)} float32, got {tuple(sc.shape)}")
    elif w13.dtype != hidden.dtype or w2.dtype != hidden.dtype:
        raise ValueError(f"fused_experts: weights {w13.dtype}/{w2.dtype} must match hidden {hidden.dtype} (or use_fp8)")
    tensors = [hidden, w13, w2, topk_weights, topk_ids] + ([w13_scale, w2_scale] if use_fp8 else [])
    if len({t.device for t in tensors}) != 1:
        raise ValueError("fused_experts: all tensors must be on one device")
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("fused_experts: all tensors must be contiguous")


def fused_experts(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    use_fp8: bool = False,
    w13_scale: Optional[torch.Tensor] = None,
    w2_scale: Optional[torch.Tensor] = None,
    block_shape: tuple[int, int] = (128, 128),
    config: Optional[FusedMoEConfig] = None,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`sum_j topk_weights[t, j] * w2[e] @ silu_and_mul(w13[e] @ hidden[t])`, e = topk_ids[t, j]
    (`+ residual[t]` when given, e.g. the shared experts' output: added in the same launch as the sum).

    hidden: [M, H] bf16/fp16/fp32; w13: [E, 2I, H] (gate rows then up rows); w2: [E, H, I];
    topk_weights: [M, top_k] float; topk_ids: [M, top_k] int in [0, E). With `use_fp8`, w13/w2
    are float8_e4m3fn with block scales `w13_scale` [E, 2I/bn, H/bk] and `w2_scale`
    [E, H/bn, I/bk]. `config` overrides the table lookup (see `moe_config`). Returns [M, H].
    """
    _check_experts(hidden, w13, w2, topk_weights, topk_ids, use_fp8, w13_scale, w2_scale, block_shape)
    m, h = hidden.shape
    e, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    if m == 0:
        return hidden.new_empty(0, h)
    if residual is not None and (residual.shape != hidden.shape or residual.dtype != hidden.dtype):
        raise ValueError(f"fused_experts: residual must match hidden {tuple(hidden.shape)} {hidden.dtype}")
    if config is None:
        dtype_name = "fp8_w8a8" if use_fp8 else _DTYPE_NAMES[hidden.dtype]
        config = get_fused_moe_config(m, e, two_i, h, dtype_name, _device_name(hidden.device))
    sorted_ids, expert_ids, num_post = moe_align_block_size(topk_ids, config.BLOCK_SIZE_M, e)

    gate_up = torch.empty(m * top_k, two_i, dtype=hidden.dtype, device=hidden.device)  # [M * top_k, 2I]
    a, a_scale = per_token_group_quant_fp8(hidden, block_shape[1]) if use_fp8 else (hidden, None)
    fused_moe_gemm(a, w13, gate_up, None, sorted_ids, expert_ids, num_post, top_k, config,
                   a_scale, w13_scale, block_shape)
    if use_fp8:
        a, a_scale = silu_and_mul_quant_fp8(gate_up, block_shape[1])  # [M * top_k, I] fp8
    else:
        a, a_scale = silu_and_mul(gate_up), None  # [M * top_k, I]
    down = torch.empty(m, top_k, h, dtype=hidden.dtype, device=hidden.device)
    fused_moe_gemm(a, w2, down.view(m * top_k, h), topk_weights.flatten(), sorted_ids, expert_ids, num_post, 1,
                   config, a_scale, w2_scale, block_shape)
    return moe_sum(down, residual)


@triton.jit
def moe_sum_kernel(
    x_ptr,  # [M, TOP_K, H] contiguous
    residual_ptr,  # [M, H] contiguous (HAS_RESIDUAL)
    out_ptr,  # [M, H]
    h,
    TOP_K: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < h
    pdl_wait(USE_PDL)
    acc = tl.zeros([BLOCK], tl.float32)
    for j in tl.static_range(TOP_K):  # slot order, float32: as torch's sum over dim 1
        acc += tl.load(x_ptr + (row * TOP_K + j) * h + offs, mask=mask, other=0.0).to(tl.float32)
    out = round_to(acc, out_ptr.dtype.element_ty)
    if HAS_RESIDUAL:  # rounded once more, as `sum + residual` in torch
        r = tl.load(residual_ptr + row * h + offs, mask=mask, other=0.0)
        out = round_to(out + r.to(tl.float32), out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * h + offs, out.to(out_ptr.dtype.element_ty), mask=mask)  # exact: already rounded


_SUM_BLOCK = 1024


def moe_sum(x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`x.sum(dim=1) (+ residual)`: the top-k slots of each token summed ([M, top_k, H] -> [M, H]),
    plus e.g. the shared experts' output ([M, H]), in one launch."""
    if x.dim() != 3 or not x.is_contiguous():
        raise ValueError(f"moe_sum: x must be a contiguous [M, top_k, H], got {tuple(x.shape)}")
    m, top_k, h = x.shape
    if residual is not None and (residual.shape != (m, h) or residual.dtype != x.dtype or not residual.is_contiguous()):
        raise ValueError(f"moe_sum: residual must be a contiguous [{m}, {h}] {x.dtype}, got {tuple(residual.shape)}")
    out = torch.empty(m, h, dtype=x.dtype, device=x.device)
    if m:
        launch(moe_sum_kernel, (m, triton.cdiv(h, _SUM_BLOCK)), x, residual if residual is not None else x, out, h,
               TOP_K=top_k, HAS_RESIDUAL=residual is not None, BLOCK=_SUM_BLOCK, num_warps=4, pdl=True)
    return out


def ref_moe_sum(x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Torch reference for `moe_sum`."""
    out = x.sum(dim=1)
    return out + residual if residual is not None else out


def ref_fused_experts(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    use_fp8: bool = False,
    w13_scale: Optional[torch.Tensor] = None,
    w2_scale: Optional[torch.Tensor] = None,
    block_shape: tuple[int, int] = (128, 128),
) -> torch.Tensor:
    """Torch reference for `fused_experts`: a loop over experts in float32 (fp8 weights
    dequantized one expert at a time, activations not quantized)."""
    x = hidden.float()
    out = torch.zeros_like(x)
    for e in range(w13.shape[0]):
        tokens, slots = (topk_ids == e).nonzero(as_tuple=True)
        if tokens.numel() == 0:
            continue
        if use_fp8:
            w_gate_up = dequant_weight_block_fp8(w13[e], w13_scale[e], block_shape)
            w_down = dequant_weight_block_fp8(w2[e], w2_scale[e], block_shape)
        else:
            w_gate_up, w_down = w13[e].float(), w2[e].float()
        gate, up = (x[tokens] @ w_gate_up.t()).chunk(2, dim=-1)
        y = (torch.nn.functional.silu(gate) * up) @ w_down.t()
        out.index_add_(0, tokens, y * topk_weights[tokens, slots, None].float())
    return out.to(hidden.dtype)
