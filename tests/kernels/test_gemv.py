"""Skinny GEMV kernel against its float32 reference, and the tuned-table lookup."""

import json

import pytest
import torch

from lmlang.kernels import gemv as gemv_mod
from lmlang.kernels.gemv import GemvConfig, gemv, gemv_config, ref_gemv, table_key

FMA = GemvConfig(block_n=8, block_k=32)
FMA_SPLIT = GemvConfig(block_n=4, block_k=16, split_k=3)
DOT = GemvConfig(block_n=16, block_k=32, use_dot=True)
DOT_SPLIT = GemvConfig(block_n=16, block_k=16, split_k=2, use_dot=True)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _inputs(m, n, k, dtype, device, seed, bias=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    w = torch.randn(n, k, generator=g).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    return x, w, b


CPU_CASES = [
    pytest.param(FMA, 1, 40, 64, False, id="fma-m1-ragged-n"),
    pytest.param(FMA, 2, 16, 80, True, id="fma-m2-ragged-k-bias"),
    pytest.param(FMA_SPLIT, 3, 12, 96, False, id="fma-split3"),
    pytest.param(FMA_SPLIT, 1, 8, 72, True, id="fma-split-ragged-k-bias"),
    pytest.param(DOT, 5, 48, 64, False, id="dot-m5"),
    pytest.param(DOT, 8, 20, 48, True, id="dot-m8-ragged-bias"),
    pytest.param(DOT_SPLIT, 4, 32, 80, False, id="dot-split-ragged-k"),
]


@pytest.mark.parametrize("config,m,n,k,bias", CPU_CASES)
def test_gemv_matches_reference_on_cpu(config, m, n, k, bias):
    x, w, b = _inputs(m, n, k, torch.bfloat16, "cpu", seed=m * 1000 + n + k)
    out = gemv(x, w, b, config)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    assert _rel_err(out, ref_gemv(x, w, b)) < 1e-2


def test_gemv_reads_strided_rows_of_x():
    base, w, _ = _inputs(2, 16, 96, torch.float16, "cpu", seed=7)
    x = base[:, :64]  # rows 96 apart
    assert _rel_err(gemv(x, w[:, :64].contiguous(), None, FMA), ref_gemv(x, w[:, :64])) < 1e-2


def test_gemv_rejects_bad_arguments():
    x, w, _ = _inputs(2, 16, 32, torch.bfloat16, "cpu", seed=1)
    with pytest.raises(ValueError, match="rows of x"):
        gemv(torch.zeros(9, 32, dtype=torch.bfloat16), w, None, FMA)
    with pytest.raises(ValueError, match="dtype"):
        gemv(x.float(), w.float(), None, FMA)
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        gemv(x, w[:, :16], None, FMA)
    with pytest.raises(ValueError, match="bias"):
        gemv(x, w, torch.zeros(3, dtype=torch.bfloat16), FMA)
    with pytest.raises(ValueError, match="power of two"):
        GemvConfig(block_n=6, block_k=32)
    with pytest.raises(ValueError, match="tensor-core"):
        GemvConfig(block_n=8, block_k=32, use_dot=True)


def test_gemv_config_reads_the_table(tmp_path, monkeypatch):
    table = {"device": "test", "shapes": {
        table_key(48, 64, torch.bfloat16): {"1": FMA.to_json(), "4": DOT.to_json(), "8": None},
    }}
    path = tmp_path / "gemv.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(gemv_mod.CONFIG_ENV, str(path))
    gemv_config.cache_clear()
    try:
        assert gemv_config(1, 48, 64, torch.bfloat16, "any") == FMA
        assert gemv_config(3, 48, 64, torch.bfloat16, "any") == DOT  # smallest tuned M >= 3
        assert gemv_config(8, 48, 64, torch.bfloat16, "any") is None  # cuBLAS won there
        assert gemv_config(9, 48, 64, torch.bfloat16, "any") is None
        assert gemv_config(1, 48, 64, torch.float16, "any") is None  # untuned dtype
        assert gemv_config(1, 64, 64, torch.bfloat16, "any") is None  # untuned shape
    finally:
        gemv_config.cache_clear()


GPU_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (1000, 4096)]
GPU_CONFIGS = [
    GemvConfig(block_n=8, block_k=512),
    GemvConfig(block_n=16, block_k=256, split_k=4, num_warps=8),
    GemvConfig(block_n=64, block_k=128, use_dot=True, num_stages=4),
    GemvConfig(block_n=32, block_k=256, split_k=2, use_dot=True, num_stages=3),
]


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", GPU_SHAPES)
@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_gemv_matches_reference_on_gpu(config, n, k):
    for m in (1, 2, 4, 8):
        x, w, b = _inputs(m, n, k, torch.bfloat16, "cuda", seed=m + n + k, bias=m == 2)
        out = gemv(x, w, b, config)
        assert torch.isfinite(out).all()
        assert _rel_err(out, ref_gemv(x, w, b)) < 1e-2


@pytest.mark.gpu
def test_linear_runs_the_tuned_gemv_on_gpu(tmp_path, monkeypatch):
    from lmlang.runtime.layers.linear import linear

    n, k = 1000, 4096
    table = {"device": "test", "shapes": {table_key(n, k, torch.bfloat16): {"4": GPU_CONFIGS[1].to_json()}}}
    path = tmp_path / "gemv.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(gemv_mod.CONFIG_ENV, str(path))
    gemv_config.cache_clear()
    try:
        x, w, b = _inputs(3, n, k, torch.bfloat16, "cuda", seed=3, bias=True)
        assert gemv_config(3, n, k, torch.bfloat16, torch.cuda.get_device_name()) == GPU_CONFIGS[1]
        assert _rel_err(linear(x[None], w, b)[0], ref_gemv(x, w, b)) < 1e-2
    finally:
        gemv_config.cache_clear()
