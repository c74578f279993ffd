"""CPU launches go through the interpreter whatever TRITON_INTERPRET was when triton was imported."""

import os
import subprocess
import sys

_PROGRAM = """
import triton  # imported first, without TRITON_INTERPRET: the standard library is compiled-mode
import torch
from triton.runtime.jit import JITFunction
import triton.language as tl
from lmlang.kernels.rmsnorm import ref_rmsnorm, rmsnorm, rmsnorm_kernel

assert isinstance(tl.sum, JITFunction) and isinstance(rmsnorm_kernel, JITFunction)
x, w = torch.randn(3, 40), torch.rand(40)
torch.testing.assert_close(rmsnorm(x, w, 1e-6), ref_rmsnorm(x, w, 1e-6))
assert isinstance(tl.sum, JITFunction)  # restored after the launch
"""


def test_cpu_launch_works_when_triton_was_imported_in_compiled_mode():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", _PROGRAM], env=env, check=True, timeout=120)
