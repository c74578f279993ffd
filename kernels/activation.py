"""SiLU-and-multiply, the gated activation of Llama-style MLPs: `silu(x[..., :d]) * x[..., d:]`.

silu is computed in float32 and rounded to the input dtype before the multiply, as
`F.silu(gate) * up` does in torch for bf16/fp16 inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import launch, pdl_launch_dependents, pdl_wait

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCK = 1024


@triton.jit
def silu_and_mul_kernel(
    x_ptr,  # [rows, 2 * d], rows `x_row_stride` apart
    out_ptr,  # [rows, d] contiguous
    d,
    x_row_stride,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    pdl_wait(USE_PDL)
    gate = tl.load(x_ptr + row * x_row_stride + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_row_stride + d + offs, mask=mask, other=0.0)
    act = (gate * tl.sigmoid(gate)).to(x_ptr.dtype.element_ty)
    out = act.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * d + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """`x`: [..., 2 * d] (rows may be strided, the last dim contiguous) -> [..., d], same dtype."""
    if x.dtype not in _DTYPES:
        raise ValueError(f"silu_and_mul: dtype {x.dtype} not supported; use one of {_DTYPES}")
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"silu_and_mul: last dimension must be even, got shape {tuple(x.shape)}")
    d = x.shape[-1] // 2
    out = torch.empty(*x.shape[:-1], d, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    x2 = x.reshape(-1, 2 * d)  # a view when rows are evenly strided; a copy otherwise
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    launch(silu_and_mul_kernel, (rows, triton.cdiv(d, _BLOCK)), x2, out, d, x2.stride(0),
           BLOCK=_BLOCK, num_warps=4, pdl=True)
    return out


def ref_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Torch reference for `silu_and_mul`."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
