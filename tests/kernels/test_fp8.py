"""FP8 block quantization and the W8A8 block-scaled GEMMs (Triton, cuBLAS) against their torch references."""

import json

import pytest
import torch
from lmlang.kernels import fp8_gemm
from lmlang.kernels.fp8_cublas import (
    cublas_block_fp8_supported,
    cublas_block_fp8_unsupported_reason,
    cublas_weight_scales,
    fp8_block_gemm_cublas,
)
from lmlang.kernels.fp8 import (
    Fp8GemmConfig,
    dequant_weight_block_fp8,
    fp8_block_gemm,
    per_token_group_quant_fp8,
    quant_weight_block_fp8,
    ref_fp8_block_gemm,
    ref_per_token_group_quant_fp8,
    silu_and_mul_quant_fp8,
)
from lmlang.kernels.activation import silu_and_mul

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


@pytest.mark.parametrize("device,dtype,rows,d", [
    pytest.param("cpu", torch.bfloat16, 3, 256, id="cpu-bf16"),
    pytest.param("cpu", torch.float32, 2, 384, id="cpu-fp32-three-groups"),
    pytest.param("cuda", torch.bfloat16, 6, 1408, id="gpu-v2-lite-experts", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 300, 2048, id="gpu-v3-experts", marks=pytest.mark.gpu),
])
def test_silu_and_mul_quant_equals_the_two_kernels_bitwise(device, dtype, rows, d):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(rows, 2 * d, generator=g) * torch.logspace(-3, 1, 2 * d)).to(device, dtype)
    x_strided = torch.cat([x, x[:, :64]], dim=1)[:, : 2 * d]  # rows strided, as a view of a wider buffer
    q, s = silu_and_mul_quant_fp8(x_strided)
    rq, rs = per_token_group_quant_fp8(silu_and_mul(x))
    assert q.shape == (rows, d) and s.shape == (rows, d // 128)
    assert torch.equal(s, rs)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


def test_silu_and_mul_quant_rejects_widths_off_the_group():
    with pytest.raises(ValueError, match="multiple of 128"):
        silu_and_mul_quant_fp8(torch.randn(2, 2 * 200))


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


@pytest.mark.parametrize("device,m,k", [pytest.param("cpu", 5, 384, id="cpu"),
                                        pytest.param("cuda", 37, 7168, id="gpu", marks=pytest.mark.gpu)])
def test_quant_writes_column_major_scales_and_zero_padding_rows(device, m, k):
    """The layout cuBLASLt reads: rows padded to 4 (zeros), scales the transpose of a [K/128, Mp] tensor."""
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(4)).to(device, torch.bfloat16)
    q, s = per_token_group_quant_fp8(x, column_major_scales=True, pad_rows_to=4)
    rq, rs = ref_per_token_group_quant_fp8(x)
    mp = -(-m // 4) * 4
    assert q.shape == (mp, k) and s.shape == (mp, k // 128) and s.stride() == (1, mp)
    assert torch.equal(q[:m].view(torch.uint8), rq.view(torch.uint8)) and not q[m:].float().any()
    torch.testing.assert_close(s[:m], rs, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="2-D"):
        per_token_group_quant_fp8(x.view(1, m, k), column_major_scales=True)


def test_cublas_weight_scales_pad_k_blocks_to_four():
    scale_inv = torch.rand(3, 5)  # [ceil(N / 128), L = 5]
    scales = cublas_weight_scales(scale_inv)
    assert scales.shape == (8, 3) and scales.stride() == (1, 8)  # L4 = 8
    assert torch.equal(scales[:5], scale_inv.t()) and not scales[5:].any()


def test_fp8_block_gemm_cublas_rejects_other_layouts():
    aq, a_scales = per_token_group_quant_fp8(torch.randn(8, 256), column_major_scales=True, pad_rows_to=4)
    w = torch.zeros(128, 256).to(torch.float8_e4m3fn)
    w_scales = cublas_weight_scales(torch.ones(1, 2))
    with pytest.raises(ValueError, match="a_scales"):
        fp8_block_gemm_cublas(aq, a_scales.contiguous(), w, w_scales)  # row-major scales
    with pytest.raises(ValueError, match="w_scales"):
        fp8_block_gemm_cublas(aq, a_scales, w, torch.ones(1, 2).t())  # k blocks not padded to 4
    with pytest.raises(ValueError, match="M % 4"):
        fp8_block_gemm_cublas(aq[:6], a_scales[:6], w, w_scales)
    assert not cublas_block_fp8_supported("cpu", 128, 256)


def _cuda_is_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.gpu
def test_cublas_block_fp8_is_supported_on_hopper():
    if not _cuda_is_sm90():
        pytest.skip("cuBLASLt runs the DeepSeek block recipe on SM90 only")
    for n, k in ((7168, 2048), (2112, 7168), (2048, 11008)):  # whole blocks; ragged N; L = 86, padded to 88
        assert cublas_block_fp8_unsupported_reason("cuda", n, k) is None, (n, k)
    assert not cublas_block_fp8_supported("cuda", 200, 256)  # N % 16 != 0


CUBLAS_CASES = [  # M, N, K: decode (M padded to 4), V3 projections, K blocks not a multiple of 4
    pytest.param(1, 7168, 2048, id="decode-o-proj"),
    pytest.param(37, 24576, 1536, id="q-b-proj"),
    pytest.param(4096, 2112, 7168, id="prefill-q-kv-a-ragged-n"),
    pytest.param(300, 7168, 18432, id="down"),
    pytest.param(64, 2048, 11008, id="v2lite-down-L86"),
    pytest.param(129, 4096, 1408, id="L11"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", CUBLAS_CASES)
def test_fp8_block_gemm_cublas_matches_reference(m, n, k):
    if not cublas_block_fp8_supported("cuda", n, k):
        pytest.skip(f"cuBLAS block FP8: {cublas_block_fp8_unsupported_reason('cuda', n, k)}")
    g = torch.Generator().manual_seed(5)
    a = torch.randn(m, k, generator=g).cuda()
    # weight blocks with magnitudes over 4 octaves: a scale read from the wrong block shows
    gain = 2.0 ** torch.randint(0, 5, (-(-n // 128), k // 128), generator=g).float()
    w = (torch.randn(n, k, generator=g) * 0.02 * gain.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)).cuda()
    aq, a_scales = per_token_group_quant_fp8(a, column_major_scales=True, pad_rows_to=4)
    wq, w_scale_inv = quant_weight_block_fp8(w)
    out = fp8_block_gemm_cublas(aq, a_scales, wq, cublas_weight_scales(w_scale_inv), torch.bfloat16)
    assert out.shape == (aq.shape[0], n) and out.dtype == torch.bfloat16
    ref = ref_fp8_block_gemm(aq[:m], a_scales[:m], wq, w_scale_inv, torch.float32)
    rel = float((out[:m].float() - ref).norm() / ref.norm())
    assert rel < 2e-2, rel
    torch.testing.assert_close(out[:m].float(), ref, atol=2e-2 * ref.abs().max().item(), rtol=2e-2)
