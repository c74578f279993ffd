"""Kernel tests run on CPU through triton's interpreter when no CUDA device is present.

`TRITON_INTERPRET=1` is set here, before this directory's tests import triton, so that kernels
decorated from now on are interpreted ones. Correctness does not depend on it: when another test
imported triton earlier, `lmlang.kernels.launch.launch` still interprets CPU launches (it swaps
the compiled standard-library functions for interpreted ones during the call); see its docstring.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
