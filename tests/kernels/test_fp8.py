"""FP8 block quantization and the W8A8 block-scaled GEMM against their torch references."""

import json

import pytest
import torch
from lmlang.kernels import fp8_gemm
from lmlang.kernels.fp8 import (
    Fp8GemmConfig,
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


CPU_CONFIGS = [
    # scalar weight scale (BLOCK_N divides bn), pointer loads, one program per tile
    pytest.param(Fp8GemmConfig(16, 64, 1, 4, 3), (128, 128), id="scalar-scale"),
    # BLOCK_N spans two weight blocks: a vector of weight scales
    pytest.param(Fp8GemmConfig(16, 64, 2, 4, 3), (32, 32), id="vector-scale"),
    pytest.param(Fp8GemmConfig(16, 32, 1, 4, 3, split_k=3), (128, 128), id="split-k-uneven"),
    pytest.param(Fp8GemmConfig(16, 64, 1, 4, 3, split_k=0), (128, 128), id="split-k-auto"),
    pytest.param(Fp8GemmConfig(16, 64, 2, 4, 3, use_tma=True, persistent=True), (128, 128), id="tma-persistent"),
    pytest.param(Fp8GemmConfig(32, 64, 1, 4, 3, split_k=2, use_tma=True, warp_specialize=True), (64, 64),
                 id="tma-split-ws"),
]


@pytest.mark.parametrize("cfg,block", CPU_CONFIGS)
def test_fp8_block_gemm_variants_compute_the_same_product(cfg, block):
    """Every config the tuner may pick computes the reference product; ragged M and N, every
    output element written (the output is poisoned first)."""
    g = torch.Generator().manual_seed(3)
    m, n, k = 37, 200, 512
    aq, a_scales = per_token_group_quant_fp8(torch.randn(m, k, generator=g), block[1])
    wq, w_scale_inv = quant_weight_block_fp8(torch.randn(n, k, generator=g) * 0.02, block)
    out = torch.full((m, n), float("nan"))
    fp8_block_gemm(aq, a_scales, wq, w_scale_inv, torch.float32, block, config=cfg, out=out)
    ref = ref_fp8_block_gemm(aq, a_scales, wq, w_scale_inv, torch.float32, block)
    torch.testing.assert_close(out, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)


def test_fp8_block_gemm_rejects_a_wrong_out_buffer():
    a = torch.zeros(4, 128).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="out must be"):
        fp8_block_gemm(a, torch.ones(4, 1), a, torch.ones(1, 1), torch.bfloat16, out=torch.empty(4, 4))


def test_gemm_config_lookup_prefers_the_tuned_shape_and_the_nearest_m_bucket(tmp_path, monkeypatch):
    tuned = {"N=256,K=512": {"1": Fp8GemmConfig(16, 32, 1, 4, 5, split_k=8).to_json(),
                             "4096": Fp8GemmConfig(128, 128, 8, 8, 4, use_tma=True).to_json()}}
    (tmp_path / fp8_gemm.device_table_name("Fake GPU/1")).write_text(json.dumps(tuned))
    (tmp_path / "default.json").write_text((fp8_gemm.CONFIG_DIR / "default.json").read_text())
    monkeypatch.setattr(fp8_gemm, "CONFIG_DIR", tmp_path)
    fp8_gemm.get_fp8_gemm_config.cache_clear()
    try:
        lookup = fp8_gemm.get_fp8_gemm_config
        assert lookup(2, 256, 512, "Fake GPU/1").split_k == 8
        assert lookup(40, 256, 512, "Fake GPU/1").split_k == 8  # log2 distance: 40 is nearer 1 than 4096
        assert lookup(3000, 256, 512, "Fake GPU/1").use_tma
        default = json.loads((tmp_path / "default.json").read_text())["default"]
        assert lookup(3000, 128, 512, "Fake GPU/1") == Fp8GemmConfig(**default["4096"])  # untuned shape
        assert lookup(1, 256, 512, None) == Fp8GemmConfig(**default["1"])  # CPU: no device table
    finally:
        fp8_gemm.get_fp8_gemm_config.cache_clear()


def test_auto_split_k_fills_the_gpu_only_when_tiles_do_not():
    assert fp8_gemm.auto_split_k(num_tiles=300, k_steps=56, num_sms=132) == 1
    assert fp8_gemm.auto_split_k(num_tiles=33, k_steps=56, num_sms=132) == 8
    assert fp8_gemm.auto_split_k(num_tiles=1, k_steps=8, num_sms=132) == 2  # >= 4 k blocks per split
