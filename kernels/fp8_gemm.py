"""The W8A8 block-scaled FP8 GEMM (DeepSeek-V3 layout) and its launch configurations.

`out[m, n] = sum_kb (a_fp8[m, kb] . w_fp8[n, kb]) * a_scale[m, kb] * w_scale_inv[n // bn, kb]`:
activations carry one float32 scale per token and k block of `bk` (1 x 128) features, weights
one `scale_inv` per `bn x bk` (128 x 128) block. Each k step of the kernel is one k block, so the
fp8 `tl.dot` of a step gives a float32 partial that is scaled once and added to the accumulator.
When BLOCK_N divides bn (DeepSeek: BLOCK_N <= 128), a program's weight scale is one scalar per k
step, and the per-element cost of scaling is one FMA with a per-row factor.

Variants, all one kernel (a config picks them; none changes the result beyond summation order):
- operand loads through pointers, or through TMA tensor descriptors (`USE_TMA`);
- split-K (`split_k > 1`): programs own a tile and a share of the k blocks and write float32
  partials that a second kernel sums; for small M, where few output tiles would leave most
  SMs idle while the weights stream;
- persistent (`persistent`): the grid is the SM count and each program walks work items.

Configs come from JSON tables (`configs/fp8_gemm/`): `default.json` gives untuned configs by M
bucket; `device=<name>.json` (written by `benchmarks/tune_fp8_gemm.py`) maps `"N=..,K=.."` to M
buckets for one GPU. A call takes the tuned table's shape entry if there is one, else the
default, and within it the M bucket nearest on a log scale.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from lmlang.kernels.launch import launch
from lmlang.kernels.tiling import grouped_tile
from triton.tools.tensor_descriptor import TensorDescriptor

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs" / "fp8_gemm"
_FP8 = torch.float8_e4m3fn
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Fp8GemmConfig:
    """Launch options of `fp8_block_gemm_kernel` (BLOCK_K is always the scale block bk)."""

    BLOCK_M: int
    BLOCK_N: int
    GROUP_M: int
    num_warps: int
    num_stages: int
    split_k: int = 1  # programs per output tile, each over 1/split_k of the k blocks; 0: `auto_split_k`
    use_tma: bool = False  # operand tiles through TMA tensor descriptors (Hopper+)
    persistent: bool = False  # grid = number of SMs, programs loop over work items
    warp_specialize: bool = False  # tl.range(warp_specialize=...) on the k loop

    def to_json(self) -> dict:
        return asdict(self)

    def short(self) -> str:
        """Compact name for tables: `64x128w4s3g8` plus `k4`, `tma`, `pers`, `ws` when set."""
        name = f"{self.BLOCK_M}x{self.BLOCK_N}w{self.num_warps}s{self.num_stages}g{self.GROUP_M}"
        flags = [f"k{self.split_k}" if self.split_k > 1 else "", "tma" if self.use_tma else "",
                 "pers" if self.persistent else "", "ws" if self.warp_specialize else ""]
        return "-".join([name, *[f for f in flags if f]])


def shape_key(n: int, k: int) -> str:
    return f"N={n},K={k}"


def device_table_name(device_name: str) -> str:
    """File name of the tuned table for `device_name` (as torch reports it)."""
    return "device=" + device_name.replace(" ", "_").replace("/", "_") + ".json"


def _parse_buckets(raw: dict) -> dict[int, Fp8GemmConfig]:
    return {int(m): Fp8GemmConfig(**cfg) for m, cfg in raw.items()}


@functools.lru_cache(maxsize=None)
def _load_json(path: pathlib.Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


@functools.lru_cache(maxsize=4096)
def get_fp8_gemm_config(m: int, n: int, k: int, device_name: Optional[str] = None) -> Fp8GemmConfig:
    """The config for an [m, k] x [n, k]^T GEMM: the device's tuned entry for (n, k) if any, else
    the default table; within it the M bucket nearest to m on a log scale (ties: the smaller)."""
    buckets = None
    if device_name is not None:
        tuned = _load_json(CONFIG_DIR / device_table_name(device_name))
        if tuned is not None and shape_key(n, k) in tuned:
            buckets = _parse_buckets(tuned[shape_key(n, k)])
    if buckets is None:
        buckets = _parse_buckets(_load_json(CONFIG_DIR / "default.json")["default"])
    log_m = math.log2(max(m, 1))
    return buckets[min(buckets, key=lambda b: (abs(math.log2(b) - log_m), b))]


# one compile for every M > 1, split count and scale layout (these only index, never vectorize)
@triton.jit(do_not_specialize_on_alignment=["M", "split_k", "stride_asm", "stride_wsn"])
def fp8_block_gemm_kernel(
    a_ptr, a_desc,  # [M, K] fp8 (a_desc: TMA descriptor with block [BLOCK_M, BLOCK_K], or None)
    w_ptr, w_desc,  # [N, K] fp8 (w_desc: block [BLOCK_N, BLOCK_K], or None)
    out_ptr,  # [M, N] out dtype, or [split_k, M, N] float32 partials when split_k > 1
    a_scale_ptr,  # [M, K / BLOCK_K] float32
    w_scale_ptr,  # [ceil(N / SCALE_BLOCK_N), K / BLOCK_K] float32
    M, N, K, split_k,
    stride_am, stride_wn, stride_om, stride_asm, stride_wsn,
    SCALE_BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    USE_TMA: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    k_steps = K // BLOCK_K
    steps_per_split = tl.cdiv(k_steps, split_k)
    num_work = num_m * num_n * split_k
    offs_k = tl.arange(0, BLOCK_K)
    # one program per work item, or (persistent grid) a stride over them
    for work in tl.range(tl.program_id(0), num_work, tl.num_programs(0)):
        split = work % split_k
        pid_m, pid_n = grouped_tile(work // split_k, num_m, num_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        rows = (offs_m % M).to(tl.int64)  # wrapped: loads stay in bounds, the store is masked
        cols = (offs_n % N).to(tl.int64)
        k_lo = split * steps_per_split
        k_hi = tl.minimum(k_lo + steps_per_split, k_steps)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in tl.range(k_lo, k_hi, warp_specialize=WARP_SPECIALIZE):
            k0 = kb * BLOCK_K
            if USE_TMA:
                a = a_desc.load([off_m, k0])  # [BLOCK_M, BLOCK_K]
                w = w_desc.load([off_n, k0])  # [BLOCK_N, BLOCK_K]
            else:
                a = tl.load(a_ptr + rows[:, None] * stride_am + (k0 + offs_k)[None, :])
                w = tl.load(w_ptr + cols[:, None] * stride_wn + (k0 + offs_k)[None, :])
            a_s = tl.load(a_scale_ptr + rows * stride_asm + kb)  # [BLOCK_M]
            if SCALE_BLOCK_N % BLOCK_N == 0:
                # the tile lies in one weight block row: one scalar scale per k step
                w_s = tl.load(w_scale_ptr + (off_n // SCALE_BLOCK_N) * stride_wsn + kb)
                acc += tl.dot(a, w.T) * (a_s * w_s)[:, None]
            else:
                w_s = tl.load(w_scale_ptr + (cols // SCALE_BLOCK_N) * stride_wsn + kb)  # [BLOCK_N]
                acc += tl.dot(a, w.T) * a_s[:, None] * w_s[None, :]
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        if split_k == 1:
            out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            part = out_ptr + split.to(tl.int64) * M * N
            tl.store(part + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], acc, mask=mask)


@triton.jit
def fp8_split_k_sum_kernel(
    part_ptr,  # [SPLIT_K, numel] float32
    out_ptr,  # [numel]
    numel,
    SPLIT_K: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        total += tl.load(part_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


def auto_split_k(num_tiles: int, k_steps: int, num_sms: int) -> int:
    """Splits that give about two programs per SM when the tiles alone would not fill the GPU,
    keeping at least 4 k blocks per split (so each program still pipelines its loads)."""
    if num_tiles >= num_sms:
        return 1
    return max(1, min(triton.cdiv(2 * num_sms, num_tiles), k_steps // 4))


@functools.lru_cache(maxsize=None)
def _device_name_and_sms(device: torch.device) -> tuple[Optional[str], int]:
    if device.type != "cuda":
        return None, 4
    props = torch.cuda.get_device_properties(device)
    return props.name, props.multi_processor_count


def _check_operands(a_fp8, a_scales, w_fp8, w_scale_inv, out_dtype, block) -> None:
    bn, bk = block
    if a_fp8.dtype != _FP8 or w_fp8.dtype != _FP8:
        raise ValueError(f"fp8_block_gemm: operands must be {_FP8}, got {a_fp8.dtype} and {w_fp8.dtype}")
    if a_fp8.dim() != 2 or w_fp8.dim() != 2 or a_fp8.shape[1] != w_fp8.shape[1]:
        raise ValueError(f"fp8_block_gemm: shapes a {tuple(a_fp8.shape)} and w {tuple(w_fp8.shape)} do not chain")
    m, k = a_fp8.shape
    n = w_fp8.shape[0]
    if k % bk or bk & (bk - 1) or bk < 16:
        raise ValueError(f"fp8_block_gemm: K={k} must be a multiple of the k block {bk} (a power of two >= 16)")
    if tuple(a_scales.shape) != (m, k // bk) or a_scales.dtype != torch.float32:
        raise ValueError(
            f"fp8_block_gemm: a_scales must be [{m}, {k // bk}] float32, got {tuple(a_scales.shape)} {a_scales.dtype}"
        )
    if tuple(w_scale_inv.shape) != (triton.cdiv(n, bn), k // bk) or w_scale_inv.dtype != torch.float32:
        raise ValueError(
            f"fp8_block_gemm: w_scale_inv must be [{triton.cdiv(n, bn)}, {k // bk}] float32, "
            f"got {tuple(w_scale_inv.shape)}"
        )
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"fp8_block_gemm: out_dtype {out_dtype} not supported; use one of {_OUT_DTYPES}")
    if not all(t.is_contiguous() for t in (a_fp8, a_scales, w_fp8, w_scale_inv)):
        raise ValueError("fp8_block_gemm: all operands must be contiguous")
    if len({t.device for t in (a_fp8, a_scales, w_fp8, w_scale_inv)}) != 1:
        raise ValueError("fp8_block_gemm: all operands must be on one device")


def fp8_block_gemm(
    a_fp8: torch.Tensor,
    a_scales: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    block: tuple[int, int] = (128, 128),
    *,
    config: Optional[Fp8GemmConfig] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """W8A8 block-scaled GEMM: `a @ w^T` with a ([M, K] fp8, scales [M, K / bk]) and
    w ([N, K] fp8, scale_inv [ceil(N / bn), K / bk]); returns [M, N] in `out_dtype`.

    Any M; K must be a multiple of the k block (128 for DeepSeek); N may be ragged. `config`
    overrides the table lookup (tuning); `out` ([M, N] contiguous, `out_dtype`) is written in
    place of a new tensor. On CPU the kernel runs in triton's interpreter (tests only).
    """
    _check_operands(a_fp8, a_scales, w_fp8, w_scale_inv, out_dtype, block)
    bn, bk = block
    m, k = a_fp8.shape
    n = w_fp8.shape[0]
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=a_fp8.device)
    elif out.shape != (m, n) or out.dtype != out_dtype or not out.is_contiguous() or out.device != a_fp8.device:
        raise ValueError(f"fp8_block_gemm: out must be a contiguous [{m}, {n}] {out_dtype} tensor on {a_fp8.device}")
    if m == 0 or n == 0:
        return out
    device_name, num_sms = _device_name_and_sms(a_fp8.device)
    cfg = config or get_fp8_gemm_config(m, n, k, device_name)
    block_n = min(cfg.BLOCK_N, max(16, triton.next_power_of_2(n)))
    num_tiles = triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(n, block_n)
    split_k = cfg.split_k or auto_split_k(num_tiles, k // bk, num_sms)
    split_k = max(1, min(split_k, k // bk))
    # TMA needs 16-byte aligned bases (row strides are: K is a multiple of bk >= 16)
    use_tma = cfg.use_tma and a_fp8.data_ptr() % 16 == 0 and w_fp8.data_ptr() % 16 == 0
    a_desc = TensorDescriptor.from_tensor(a_fp8, [cfg.BLOCK_M, bk]) if use_tma else None
    w_desc = TensorDescriptor.from_tensor(w_fp8, [block_n, bk]) if use_tma else None
    target = out if split_k == 1 else torch.empty(split_k, m, n, dtype=torch.float32, device=out.device)
    num_work = num_tiles * split_k
    grid = (min(num_work, num_sms) if cfg.persistent else num_work,)
    launch(
        fp8_block_gemm_kernel, grid, a_fp8, a_desc, w_fp8, w_desc, target, a_scales, w_scale_inv,
        m, n, k, split_k, a_fp8.stride(0), w_fp8.stride(0), out.stride(0), a_scales.stride(0), w_scale_inv.stride(0),
        SCALE_BLOCK_N=bn, BLOCK_M=cfg.BLOCK_M, BLOCK_N=block_n, BLOCK_K=bk, GROUP_M=cfg.GROUP_M,
        USE_TMA=use_tma, WARP_SPECIALIZE=cfg.warp_specialize, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split_k > 1:
        sum_block = 1024
        launch(fp8_split_k_sum_kernel, (triton.cdiv(m * n, sum_block),), target, out, m * n,
               SPLIT_K=split_k, BLOCK=sum_block, num_warps=4)
    return out


def ref_fp8_block_gemm(
    a_fp8: torch.Tensor,
    a_scales: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    block: tuple[int, int] = (128, 128),
) -> torch.Tensor:
    """Torch reference for `fp8_block_gemm`: dequantize both operands, matmul in float32."""
    bn, bk = block
    n, k = w_fp8.shape
    a = a_fp8.float() * a_scales.repeat_interleave(bk, dim=-1)  # [M, K]
    w_scales = w_scale_inv.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, -1)[:, :k]  # [N, K]
    return (a @ (w_fp8.float() * w_scales).t()).to(out_dtype)
