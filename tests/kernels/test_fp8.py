"""FP8 block quantization and the W8A8 block-scaled GEMM against their torch references."""

import pytest
import torch

from lmlang.kernels.fp8 import (
    dequant_weight_block_fp8,
    fp8_block_gemm,
    per_token_group_quant_fp8,
    quant_weight_block_fp8,
    ref_fp8_block_gemm,
    ref_per_token_group_quant_fp8,
)

QUANT_CASES = [
    pytest.param("cpu", torch.float32, (5, 256), id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, (2, 3, 128), id="cpu-bf16-3d"),
    pytest.param("cuda", torch.bfloat16, (4096, 7168), id="gpu-deepseek-hidden", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, (33, 18432), id="gpu-deepseek-mlp", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,shape", QUANT_CASES)
def test_per_token_group_quant_matches_reference_bitwise(device, dtype, shape):
    g = torch.Generator().manual_seed(0)
    # magnitudes over six decades, plus exact zeros and tiny values (fp8 subnormals)
    x = torch.randn(shape, generator=g) * torch.logspace(-4, 2, shape[-1])
    x.view(-1)[:3] = torch.tensor([0.0, 1e-8, -3e-9])
    x = x.to(device, dtype)
    q, s = per_token_group_quant_fp8(x)
    rq, rs = ref_per_token_group_quant_fp8(x)
    assert q.shape == x.shape and s.shape == (*shape[:-1], shape[-1] // 128)
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


def test_weight_block_quant_roundtrip_is_within_fp8_precision():
    w = torch.randn(3, 200, 256, generator=torch.Generator().manual_seed(1))
    wq, scale_inv = quant_weight_block_fp8(w)
    assert scale_inv.shape == (3, 2, 2)
    err = (dequant_weight_block_fp8(wq, scale_inv) - w).abs()
    assert (err <= w.abs() * 2**-4 + scale_inv.max() * 2**-9).all()  # e4m3: 3 mantissa bits


GEMM_CASES = [
    # device, M, N, K, out dtype
    pytest.param("cpu", 5, 256, 256, torch.float32, id="cpu-ragged-m"),
    pytest.param("cpu", 20, 200, 128, torch.bfloat16, id="cpu-ragged-n"),
    pytest.param("cuda", 1, 7168, 2048, torch.bfloat16, id="gpu-decode-o-proj", marks=pytest.mark.gpu),
    pytest.param("cuda", 37, 24576, 1536, torch.bfloat16, id="gpu-q-b-proj", marks=pytest.mark.gpu),
    pytest.param("cuda", 4096, 2112, 7168, torch.bfloat16, id="gpu-prefill-q-kv-a", marks=pytest.mark.gpu),
    pytest.param("cuda", 300, 36864, 7168, torch.bfloat16, id="gpu-gate-up", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,m,n,k,out_dtype", GEMM_CASES)
def test_fp8_block_gemm_matches_reference(device, m, n, k, out_dtype):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(m, k, generator=g).to(device)
    w = (torch.randn(n, k, generator=g) * 0.02).to(device)
    aq, a_scales = per_token_group_quant_fp8(a)
    wq, w_scale_inv = quant_weight_block_fp8(w)
    out = fp8_block_gemm(aq, a_scales, wq, w_scale_inv, out_dtype)
    ref = ref_fp8_block_gemm(aq, a_scales, wq, w_scale_inv, torch.float32)
    assert out.shape == (m, n) and out.dtype == out_dtype
    # same products, different summation order; bf16 output rounding dominates
    tol = 1e-4 if out_dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)
    # and the quantized product is close to the unquantized one
    rel = (ref - a @ w.t()).norm() / (a @ w.t()).norm()
    assert rel < 0.08


def test_fp8_block_gemm_rejects_bad_shapes():
    a = torch.zeros(4, 200).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="multiple"):
        fp8_block_gemm(a, torch.ones(4, 2), a, torch.ones(1, 2))
    a = torch.zeros(4, 256).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="a_scales"):
        fp8_block_gemm(a, torch.ones(4, 1), a, torch.ones(1, 2))
    with pytest.raises(ValueError, match="float8"):
        fp8_block_gemm(a.float(), torch.ones(4, 2), a, torch.ones(1, 2))
