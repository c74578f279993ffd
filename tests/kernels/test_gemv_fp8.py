"""W8A16 FP8 GEMV (`lmlang.kernels.gemv_fp8`) against its dequantize-then-matmul reference, its
argument checks, and its tuned-table lookup."""

import json

import pytest
import torch

from lmlang.kernels import gemv_fp8 as gemv_fp8_mod
from lmlang.kernels.fp8 import quant_weight_block_fp8
from lmlang.kernels.gemv import GemvConfig, table_key
from lmlang.kernels.gemv_fp8 import config_fits_block, gemv_fp8, gemv_fp8_config, ref_gemv_fp8

BLOCK = (16, 32)  # small scale blocks: several per tiny weight
FMA = GemvConfig(block_n=8, block_k=64)
FMA_SPLIT = GemvConfig(block_n=16, block_k=16, split_k=2)
DOT = GemvConfig(block_n=16, block_k=32, use_dot=True)
DOT_SPLIT = GemvConfig(block_n=16, block_k=16, split_k=2, use_dot=True)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _operands(m, n, k, dtype, device, seed, block=BLOCK, bias=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    # rows of very different magnitude: a wrong block scale shows
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 1, n)[:, None]
    q, scale_inv = quant_weight_block_fp8(w, block)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    return x, q.to(device), scale_inv.to(device), b


CPU_CASES = [  # config, M, N, K, bias; N = 40 is not a multiple of bn = 16
    pytest.param(FMA, 1, 40, 128, False, id="fma-m1-ragged-n"),
    pytest.param(FMA, 2, 32, 96, True, id="fma-m2-ragged-k-bias"),
    pytest.param(FMA_SPLIT, 3, 40, 96, True, id="fma-split2-m3-bias"),
    pytest.param(DOT, 3, 40, 96, False, id="dot-m3-ragged-n"),
    pytest.param(DOT_SPLIT, 2, 32, 96, True, id="dot-split2-bias"),
]


@pytest.mark.parametrize("config,m,n,k,bias", CPU_CASES)
def test_gemv_fp8_matches_reference_on_cpu(config, m, n, k, bias):
    x, q, scale_inv, b = _operands(m, n, k, torch.float16, "cpu", seed=m * 100 + n + k, bias=bias)
    out = gemv_fp8(x, q, scale_inv, BLOCK, b, config)
    assert out.shape == (m, n) and out.dtype == torch.float16
    assert _rel_err(out, ref_gemv_fp8(x, q, scale_inv, BLOCK, b)) < 2e-3


def test_gemv_fp8_bf16_and_strided_rows_of_x():
    base, q, scale_inv, _ = _operands(2, 32, 64, torch.bfloat16, "cpu", seed=5)
    x = torch.cat([base, base], dim=1)[:, :64]  # rows 128 apart
    assert _rel_err(gemv_fp8(x, q, scale_inv, BLOCK, None, FMA), ref_gemv_fp8(x, q, scale_inv, BLOCK)) < 1e-2


def test_gemv_fp8_rejects_bad_arguments():
    x, q, s, _ = _operands(2, 32, 64, torch.float16, "cpu", seed=1)
    with pytest.raises(ValueError, match="rows of x"):
        gemv_fp8(torch.zeros(9, 64, dtype=torch.float16), q, s, BLOCK, None, FMA)
    with pytest.raises(ValueError, match="x must be one of"):
        gemv_fp8(x.float(), q, s, BLOCK, None, FMA)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        gemv_fp8(x, q.to(torch.float16), s, BLOCK, None, FMA)
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        gemv_fp8(x[:, :32], q, s, BLOCK, None, FMA)
    with pytest.raises(ValueError, match="multiple of the scale block"):
        gemv_fp8(x, q, s, (16, 48), None, FMA)
    with pytest.raises(ValueError, match="scale_inv must be"):
        gemv_fp8(x, q, s[:1], BLOCK, None, FMA)
    with pytest.raises(ValueError, match="bias"):
        gemv_fp8(x, q, s, BLOCK, torch.zeros(3, dtype=torch.float16), FMA)
    with pytest.raises(ValueError, match="does not fit"):
        gemv_fp8(x, q, s, BLOCK, None, GemvConfig(block_n=32, block_k=64))  # strip over two row blocks
    with pytest.raises(ValueError, match="does not fit"):
        gemv_fp8(x, q, s, BLOCK, None, GemvConfig(block_n=16, block_k=64, use_dot=True))  # step over two k blocks
    assert config_fits_block(GemvConfig(block_n=16, block_k=256), (128, 128))
    assert not config_fits_block(GemvConfig(block_n=16, block_k=256, use_dot=True), (128, 128))


def test_gemv_fp8_config_reads_its_own_table(tmp_path, monkeypatch):
    table = {"device": "test", "shapes": {table_key(48, 128, torch.bfloat16): {"1": FMA.to_json(), "4": DOT.to_json(),
                                                                             "8": None}}}
    path = tmp_path / "gemv_fp8.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(gemv_fp8_mod.CONFIG_ENV, str(path))
    gemv_fp8_config.cache_clear()
    try:
        assert gemv_fp8_config(1, 48, 128, torch.bfloat16, "any") == FMA
        assert gemv_fp8_config(2, 48, 128, torch.bfloat16, "any") == DOT  # smallest tuned M >= 2
        assert gemv_fp8_config(8, 48, 128, torch.bfloat16, "any") is None  # W8A8 won there
        assert gemv_fp8_config(1, 64, 128, torch.bfloat16, "any") is None  # untuned shape
        assert gemv_fp8_config(1, 48, 128, torch.float16, "any") is None  # untuned dtype
    finally:
        gemv_fp8_config.cache_clear()


GPU_SHAPES = [(2112, 7168), (7168, 16384), (2048, 11008), (1000, 2048)]  # V3 q_a+kv_a, o; V2-Lite down; ragged
GPU_CONFIGS = [
    GemvConfig(block_n=8, block_k=512),
    GemvConfig(block_n=16, block_k=1024, split_k=4, num_warps=8),
    GemvConfig(block_n=64, block_k=128, use_dot=True, num_stages=4),
    GemvConfig(block_n=32, block_k=128, split_k=2, use_dot=True, num_stages=3),
]


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", GPU_SHAPES)
@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_gemv_fp8_matches_reference_on_gpu(config, n, k):
    for m in (1, 2, 4, 8):
        x, q, s, b = _operands(m, n, k, torch.bfloat16, "cuda", seed=m + n + k, block=(128, 128), bias=m == 2)
        out = gemv_fp8(x, q, s, (128, 128), b, config)
        assert torch.isfinite(out).all()
        assert _rel_err(out, ref_gemv_fp8(x, q, s, (128, 128), b)) < 1e-2


@pytest.mark.gpu
def test_gemv_fp8_pdl_chain_in_a_cuda_graph(monkeypatch):
    """Two dependent products back to back in a graph (PDL on): the second reads the first's output."""
    monkeypatch.setenv("LMLANG_PDL", "1")
    x, q1, s1, _ = _operands(2, 2048, 7168, torch.bfloat16, "cuda", seed=1, block=(128, 128))
    _, q2, s2, b2 = _operands(2, 7168, 2048, torch.bfloat16, "cuda", seed=2, block=(128, 128), bias=True)
    cfg1, cfg2 = GPU_CONFIGS[1], GPU_CONFIGS[2]

    def step():
        h = gemv_fp8(x, q1, s1, (128, 128), None, cfg1)
        return h, gemv_fp8(h, q2, s2, (128, 128), b2, cfg2)

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h, y = step()
    for seed in range(3):
        x.copy_(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x))
        graph.replay()
        torch.cuda.synchronize()
        assert _rel_err(h, ref_gemv_fp8(x, q1, s1, (128, 128))) < 1e-2
        assert _rel_err(y, ref_gemv_fp8(h, q2, s2, (128, 128), b2)) < 1e-2
