"""Which W8A8 block-scaled FP8 GEMM an `Fp8Linear` runs at which token count, decided once per layer.

Three implementations of the same product (1 x 128 activation groups, 128 x 128 weight blocks):
- `triton`: our kernel (`lmlang.kernels.fp8_gemm`, tuned per shape and M bucket), any GPU, with
  split-K: the fastest on the weight-bound small batches;
- `cublas`: cuBLASLt's block-scaled GEMM (`lmlang.kernels.fp8_cublas`, Hopper, torch >= 2.9);
- `flashinfer`: FlashInfer's SM90 DeepGEMM kernel (`lmlang.kernels.fp8_flashinfer`; N % 64 == 0).
`$LMLANG_FP8_GEMM_BACKEND` picks among them:
- `auto` (default): FlashInfer for `FLASHINFER_MIN_TOKENS <= M <= FLASHINFER_MAX_TOKENS`, cuBLAS for
  the other `M >= CUBLAS_MIN_TOKENS`, each only where its probe says it runs this weight here;
  Triton for everything else;
- `triton`, `cublas`, `flashinfer`: that implementation at every M (a load-time error for a weight
  it cannot run).
The thresholds come from H200 sweeps over M (`benchmarks/fp8_backends.py`, `tune_fp8_gemm.py
--installed`): cuBLAS beat Triton from 16 tokens on; FlashInfer beat both from 1 to 512 tokens
(geometric means over DeepSeek-V3's and V2-Lite's 12 projections, 2026-11-26T23:00Z: 1.43x /
1.29x / 1.51x / 1.06x cuBLAS at M = 1 / 16 / 64 / 512, 0.93x at 1024) and lost to cuBLAS above.
Where the W8A16 GEMV's table has an entry (<= 8 tokens) `Fp8Linear` runs that instead.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Optional

GEMM_BACKENDS = ("auto", "triton", "cublas", "flashinfer")
GEMM_BACKEND_ENV = "LMLANG_FP8_GEMM_BACKEND"
# `auto` runs cuBLAS from this many tokens up: on the H200 (V3 shapes, run of 18:38Z) cuBLAS was
# faster than our tuned Triton kernel from M = 16 on for every projection, Triton faster at M = 1
CUBLAS_MIN_TOKENS = 16
# `auto` runs FlashInfer's kernel in [FLASHINFER_MIN_TOKENS, FLASHINFER_MAX_TOKENS] (inclusive): see
# the module docstring for the sweep
FLASHINFER_MIN_TOKENS = 1
FLASHINFER_MAX_TOKENS = 512


def gemm_backend_from_env() -> str:
    """`$LMLANG_FP8_GEMM_BACKEND`, one of `GEMM_BACKENDS` (unset or empty: `auto`)."""
    backend = os.environ.get(GEMM_BACKEND_ENV, "") or "auto"
    if backend not in GEMM_BACKENDS:
        raise ValueError(f"{GEMM_BACKEND_ENV} must be one of {GEMM_BACKENDS}, got {backend!r}")
    return backend


@dataclasses.dataclass(frozen=True)
class GemmPlan:
    """The GEMM per token count M of one layer: FlashInfer for M in `flashinfer_tokens`, else cuBLAS
    for M >= `cublas_min_tokens`, else Triton (None: never that backend). The empty plan (the
    default) is Triton everywhere."""

    cublas_min_tokens: Optional[int] = None
    flashinfer_tokens: Optional[range] = None

    def gemm_for(self, m: int) -> str:
        """"flashinfer", "cublas" or "triton" for a batch of m tokens (no host synchronization)."""
        if self.flashinfer_tokens is not None and m in self.flashinfer_tokens:
            return "flashinfer"
        if self.cublas_min_tokens is not None and m >= self.cublas_min_tokens:
            return "cublas"
        return "triton"


def plan_gemm(
    backend: str, unsupported_reason: Callable[[str], Optional[str]], weight: str = "this weight"
) -> GemmPlan:
    """The plan for `backend` (one of `GEMM_BACKENDS`) of a layer whose weight `cublas` / `flashinfer`
    can or cannot run: `unsupported_reason(name)` is None where it can, else why not (it may probe
    the device; called only for the implementations `backend` may use). A forced backend that
    cannot run the weight raises ValueError naming `weight` and the reason."""
    if backend not in GEMM_BACKENDS:
        raise ValueError(f"fp8 GEMM backend must be one of {GEMM_BACKENDS}, got {backend!r}")
    if backend == "triton":
        return GemmPlan()
    if backend in ("cublas", "flashinfer"):
        reason = unsupported_reason(backend)
        if reason is not None:
            raise ValueError(f"fp8 GEMM backend {backend!r} cannot run {weight} here: {reason}")
        if backend == "cublas":
            return GemmPlan(cublas_min_tokens=1)
        return GemmPlan(flashinfer_tokens=range(1, sys.maxsize))
    flashinfer_ok = unsupported_reason("flashinfer") is None
    cublas_ok = unsupported_reason("cublas") is None
    return GemmPlan(
        cublas_min_tokens=CUBLAS_MIN_TOKENS if cublas_ok else None,
        flashinfer_tokens=range(FLASHINFER_MIN_TOKENS, FLASHINFER_MAX_TOKENS + 1) if flashinfer_ok else None,
    )
