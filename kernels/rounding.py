"""Rounding float32 values to a narrower float type the same way compiled and interpreted.

Kernels that reproduce a torch computation done in bf16 / fp16 (each op rounded to the
activations' dtype) round their float32 intermediates with `round_to`. A plain `.to(tl.bfloat16)`
rounds to nearest-even on the GPU but truncates in triton's CPU interpreter, so bf16 is rounded
here by bit arithmetic; fp16 asks for round-to-nearest-even explicitly.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """float32 x rounded to nearest-even in `dtype` (bf16, fp16; float32: unchanged), as float32."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True).to(tl.float32)
    elif dtype == tl.float16:
        return x.to(tl.float16, fp_downcast_rounding="rtne").to(tl.float32)
    else:
        return x
