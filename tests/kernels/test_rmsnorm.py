"""RMSNorm kernels against their torch references (interpreted on CPU, compiled on GPU)."""

import pytest
import torch

from lmlang.kernels.rmsnorm import fused_add_rmsnorm, ref_fused_add_rmsnorm, ref_rmsnorm, rmsnorm

CASES = [
    pytest.param("cpu", torch.float32, (3, 5, 48), id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, (4, 64), id="cpu-bf16"),
    pytest.param("cuda", torch.bfloat16, (257, 4096), id="gpu-llama8b", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, (33, 7168), id="gpu-deepseek", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, (8, 1536), id="gpu-fp16", marks=pytest.mark.gpu),
]


def _tol(dtype):
    # the interpreter truncates fp32 -> bf16 where the GPU rounds: allow two bf16 ulps
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("device,dtype,shape", CASES)
def test_rmsnorm_matches_reference(device, dtype, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device, dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(device, dtype)
    out = rmsnorm(x, w, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref_rmsnorm(x, w, 1e-6), **_tol(dtype))


@pytest.mark.parametrize("device,dtype,shape", CASES)
def test_fused_add_rmsnorm_matches_reference(device, dtype, shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).to(device, dtype)
    res = torch.randn(shape, generator=g).to(device, dtype)
    w = torch.rand(shape[-1], generator=g).to(device, dtype)
    out, new_res = fused_add_rmsnorm(x, res, w, 1e-5)
    ref_out, ref_res = ref_fused_add_rmsnorm(x, res, w, 1e-5)
    torch.testing.assert_close(new_res, ref_res, **_tol(dtype))
    torch.testing.assert_close(out, ref_out, **_tol(dtype))


def test_rmsnorm_rejects_mismatched_weight():
    with pytest.raises(ValueError, match="weight shape"):
        rmsnorm(torch.randn(2, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm(torch.randn(8, 2).t(), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        fused_add_rmsnorm(torch.randn(2, 8), torch.randn(3, 8), torch.ones(8), 1e-6)


@pytest.mark.parametrize("device,dtype", [
    pytest.param("cpu", torch.float32, id="cpu"),
    pytest.param("cuda", torch.bfloat16, id="gpu", marks=pytest.mark.gpu),
])
def test_rmsnorm_reads_strided_rows_in_place(device, dtype):
    """A column slice of a stacked projection's output (DeepSeek's q_a part of q_a + kv_a)."""
    g = torch.Generator().manual_seed(2)
    stacked = torch.randn(5, 48 + 40, generator=g).to(device, dtype)
    x = stacked[:, :48]  # rows 88 apart
    w = (1 + 0.1 * torch.randn(48, generator=g)).to(device, dtype)
    out = rmsnorm(x, w, 1e-6)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref_rmsnorm(x.contiguous(), w, 1e-6), **_tol(dtype))
