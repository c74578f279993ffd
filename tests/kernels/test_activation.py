"""silu_and_mul kernel against its torch reference."""

import pytest
import torch

from lmlang.kernels.activation import ref_silu_and_mul, silu_and_mul

CASES = [
    pytest.param("cpu", torch.float32, (3, 2, 40), id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, (5, 2100), id="cpu-bf16-two-blocks"),
    pytest.param("cuda", torch.bfloat16, (512, 2 * 14336), id="gpu-llama8b", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, (64, 2 * 2048), id="gpu-deepseek-expert", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, (7, 2 * 18432), id="gpu-fp16", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,shape", CASES)
def test_silu_and_mul_matches_reference(device, dtype, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype) * 3
    out = silu_and_mul(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(out, ref_silu_and_mul(x), **tol)


def test_silu_and_mul_accepts_strided_rows_and_rejects_odd_width():
    base = torch.randn(4, 20)
    x = base[:, :12]  # rows 20 apart
    torch.testing.assert_close(silu_and_mul(x), ref_silu_and_mul(x))
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.randn(2, 5))
