"""Program-id to output-tile mapping shared by the GEMM kernels (`fp8`, `fused_moe`)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid` over a num_m x num_n grid of tiles in grouped order:
    GROUP_M row blocks sweep the columns together, so the weight tiles they share stay in L2.
    Callers import it by name (see `launch`: CPU launches interpret the kernel module's JIT
    functions)."""
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_rows
    pid_n = (pid % (GROUP_M * num_n)) // group_rows
    return pid_m, pid_n
