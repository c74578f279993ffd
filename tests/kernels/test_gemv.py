"""Skinny GEMV kernel against its float32 reference (plain, gated and normalized inputs), and the
tuned-table lookup."""

import json

import pytest
import torch

from lmlang.kernels import gemv as gemv_mod
from lmlang.kernels.activation import ref_silu_and_mul
from lmlang.kernels.gemv import GemvConfig, NormInput, fused_gemv_config, gemv, gemv_config, ref_gemv, table_key
from lmlang.kernels.rmsnorm import ref_fused_add_rmsnorm, ref_rmsnorm

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


FUSED_CASES = [  # config, M, N, K, bias
    pytest.param(FMA, 1, 24, 64, False, id="fma-m1"),
    pytest.param(FMA, 3, 20, 80, True, id="fma-m3-ragged-k-bias"),
    pytest.param(FMA_SPLIT, 2, 12, 96, True, id="fma-split3-bias"),
    pytest.param(DOT, 2, 40, 64, False, id="dot-m2-ragged-n"),
    pytest.param(DOT_SPLIT, 3, 32, 80, True, id="dot-split-ragged-k-bias"),
]
# fp16 is exact in the interpreter (numpy rounds fp32 -> fp16 as the GPU does); bf16 is not
# (the interpreter truncates fp32 -> bf16), so each rounded intermediate may be off by an ulp
TOL = {torch.float16: 2e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("config,m,n,k,bias", FUSED_CASES)
def test_gated_gemv_matches_silu_and_mul_then_gemv(config, m, n, k, bias, dtype):
    _, w, b = _inputs(m, n, k, dtype, "cpu", seed=m + n + k, bias=bias)
    x = (3 * torch.randn(m, 2 * k, generator=torch.Generator().manual_seed(k))).to(dtype)  # [M, 2K] gate | up
    out = gemv(x, w, b, config, gated=True)
    assert out.shape == (m, n) and out.dtype == dtype
    assert _rel_err(out, ref_gemv(ref_silu_and_mul(x), w, b)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("config,m,n,k,bias", FUSED_CASES)
def test_norm_gemv_matches_fused_add_rmsnorm_then_gemv(config, m, n, k, bias, dtype):
    x, w, b = _inputs(m, n, k, dtype, "cpu", seed=m + n + k, bias=bias)
    g = torch.Generator().manual_seed(n)
    residual = torch.randn(m, k, generator=g).to(dtype)
    norm_weight = (1 + 0.5 * torch.rand(k, generator=g)).to(dtype)
    residual_out = torch.full((m, k), float("nan"), dtype=dtype)
    out = gemv(x, w, b, config, norm=NormInput(residual, norm_weight, 1e-5, residual_out))
    normed, ref_residual = ref_fused_add_rmsnorm(x, residual, norm_weight, 1e-5)
    assert _rel_err(out, ref_gemv(normed, w, b)) < TOL[dtype]
    if dtype == torch.float16:
        assert torch.equal(residual_out, ref_residual)  # every row written once, exactly x + residual
    else:
        torch.testing.assert_close(residual_out, ref_residual, atol=2e-2, rtol=1e-2)
    plain = gemv(x, w, b, config, norm=NormInput(None, norm_weight, 1e-5))  # no residual: rmsnorm(x)
    assert _rel_err(plain, ref_gemv(ref_rmsnorm(x, norm_weight, 1e-5), w, b)) < TOL[dtype]


@pytest.mark.parametrize("config,k", [
    pytest.param(GemvConfig(block_n=8, block_k=256, num_warps=1), 4096, id="fma-8-even-chunks"),
    pytest.param(GemvConfig(block_n=16, block_k=128, split_k=2, use_dot=True), 2304, id="dot-split-ragged-chunks"),
])
def test_norm_statistic_over_rows_longer_than_one_chunk(config, k):
    m, n = 2, 8
    x, w, _ = _inputs(m, n, k, torch.float16, "cpu", seed=k)
    residual = torch.randn(m, k, generator=torch.Generator().manual_seed(3)).to(torch.float16)
    norm_weight = torch.rand(k, generator=torch.Generator().manual_seed(4)).to(torch.float16)
    residual_out = torch.empty_like(residual)
    out = gemv(x, w, None, config, norm=NormInput(residual, norm_weight, 1e-6, residual_out))
    normed, ref_residual = ref_fused_add_rmsnorm(x, residual, norm_weight, 1e-6)
    assert _rel_err(out, ref_gemv(normed, w)) < TOL[torch.float16]
    assert torch.equal(residual_out, ref_residual)


def test_gated_and_norm_inputs_reject_bad_arguments():
    x, w, _ = _inputs(2, 16, 32, torch.float16, "cpu", seed=2)
    nw = torch.ones(32, dtype=torch.float16)
    with pytest.raises(ValueError, match="gated x must be"):
        gemv(x, w, None, FMA, gated=True)  # x is [M, K], not [M, 2K]
    with pytest.raises(ValueError, match="not both"):
        gemv(torch.zeros(2, 64, dtype=torch.float16), w, None, FMA, gated=True, norm=NormInput(None, nw, 1e-6))
    with pytest.raises(ValueError, match="norm_weight"):
        gemv(x, w, None, FMA, norm=NormInput(None, nw[:16].clone(), 1e-6))
    with pytest.raises(ValueError, match="residual_out exactly"):
        gemv(x, w, None, FMA, norm=NormInput(x.clone(), nw, 1e-6))
    with pytest.raises(ValueError, match="residual must be"):
        gemv(x, w, None, FMA, norm=NormInput(x[:1].clone(), nw, 1e-6, torch.empty_like(x)))
    with pytest.raises(ValueError, match="must not overlap"):
        residual = x.clone()
        gemv(x, w, None, FMA, norm=NormInput(residual, nw, 1e-6, residual))
    with pytest.raises(ValueError, match="at most"):
        big = torch.zeros(1, 16392, dtype=torch.float16)
        gemv(big, torch.zeros(8, 16392, dtype=torch.float16), None, FMA, norm=NormInput(None, big[0], 1e-6))


def test_gemv_config_reads_the_table(tmp_path, monkeypatch):
    table = {"device": "test", "shapes": {
        table_key(48, 64, torch.bfloat16): {"1": FMA.to_json(), "4": DOT.to_json(), "8": None},
        table_key(32, 64, torch.bfloat16): {"1": FMA.to_json()},
    }, "ours": {table_key(48, 64, torch.bfloat16): {"8": DOT_SPLIT.to_json()}}}
    path = tmp_path / "gemv.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(gemv_mod.CONFIG_ENV, str(path))
    gemv_config.cache_clear()
    fused_gemv_config.cache_clear()
    try:
        assert gemv_config(1, 48, 64, torch.bfloat16, "any") == FMA
        assert gemv_config(3, 48, 64, torch.bfloat16, "any") == DOT  # smallest tuned M >= 3
        assert gemv_config(8, 48, 64, torch.bfloat16, "any") is None  # cuBLAS won there
        assert gemv_config(9, 48, 64, torch.bfloat16, "any") is None
        assert gemv_config(1, 48, 64, torch.float16, "any") is None  # untuned dtype
        assert gemv_config(1, 64, 64, torch.bfloat16, "any") is None  # untuned shape
        # fused inputs take our fastest config even where cuBLAS won the plain product
        assert fused_gemv_config(8, 48, 64, torch.bfloat16, "any") == DOT_SPLIT
        assert fused_gemv_config(1, 32, 64, torch.bfloat16, "any") == FMA  # no `ours` entry: the table's
        assert fused_gemv_config(1, 64, 64, torch.bfloat16, "any") is None
    finally:
        gemv_config.cache_clear()
        fused_gemv_config.cache_clear()


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


@pytest.mark.gpu
@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_fused_inputs_match_references_on_gpu(config):
    g = torch.Generator().manual_seed(5)
    hidden, inter = 4096, 14336
    w_down = torch.randn(hidden, inter, generator=g).to("cuda", torch.bfloat16)
    norm_weight = (1 + 0.5 * torch.rand(hidden, generator=g)).to("cuda", torch.bfloat16)
    for m in (1, 2, 4, 8):
        gate_up = (3 * torch.randn(m, 2 * inter, generator=g)).to("cuda", torch.bfloat16)
        out = gemv(gate_up, w_down, None, config, gated=True)
        assert _rel_err(out, ref_gemv(ref_silu_and_mul(gate_up), w_down)) < 1e-2
        for n in (6144, 28672):  # qkv, gate_up
            x, w, b = _inputs(m, n, hidden, torch.bfloat16, "cuda", seed=m + n, bias=m == 2)
            residual = torch.randn(m, hidden, generator=g).to("cuda", torch.bfloat16)
            residual_out = torch.empty_like(residual)
            out = gemv(x, w, b, config, norm=NormInput(residual, norm_weight, 1e-5, residual_out))
            normed, ref_residual = ref_fused_add_rmsnorm(x, residual, norm_weight, 1e-5)
            assert _rel_err(out, ref_gemv(normed, w, b)) < 1e-2
            assert torch.equal(residual_out, ref_residual)


@pytest.mark.gpu
@pytest.mark.parametrize("pdl", ["1", "0"])
def test_decoder_chain_in_a_cuda_graph_matches_references(pdl, monkeypatch):
    """Every kernel of a decode step back to back in one CUDA graph (with and without PDL): each
    output matches its reference computed from the inputs the kernel actually read."""
    from lmlang.kernels.activation import silu_and_mul
    from lmlang.kernels.kv_store import ref_store_kv, store_kv
    from lmlang.kernels.rmsnorm import fused_add_rmsnorm
    from lmlang.kernels.rotary import apply_rotary, ref_apply_rotary, rotary_and_store_kv

    monkeypatch.setenv("LMLANG_PDL", pdl)
    g = torch.Generator().manual_seed(11)
    hidden, inter, heads, kv_heads, head_dim, slots, m = 4096, 14336, 32, 8, 128, 64, 2

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to("cuda", torch.bfloat16)

    w_gate_up, w_down = rand(2 * inter, hidden, scale=0.02), rand(hidden, inter, scale=0.02)
    w_qkv = rand((heads + 2 * kv_heads) * head_dim, hidden, scale=0.02)
    nw1, nw2 = rand(hidden, scale=0.1) + 1, rand(hidden, scale=0.1) + 1
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(4096).float()[:, None] * inv_freq[None, :]
    cache = torch.cat([angles.cos(), angles.sin()], dim=-1).cuda()
    x, residual = rand(m, hidden), rand(m, hidden)
    positions = torch.zeros(m, dtype=torch.int64, device="cuda")
    loc = torch.zeros(m, dtype=torch.int64, device="cuda")
    k_buf = torch.zeros(slots, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    v_buf, k_buf2, v_buf2 = torch.zeros_like(k_buf), torch.zeros_like(k_buf), torch.zeros_like(k_buf)
    fma, split, dot = GPU_CONFIGS[0], GPU_CONFIGS[1], GPU_CONFIGS[2]
    r2 = torch.empty(m, hidden, dtype=torch.bfloat16, device="cuda")

    def step():
        n1, r1 = fused_add_rmsnorm(x, residual, nw1, 1e-5)
        gu = gemv(n1, w_gate_up, None, dot)
        act = silu_and_mul(gu)
        d = gemv(act, w_down, None, split)  # split-K: the reduce kernel too
        qkv = gemv(d, w_qkv, None, fma, norm=NormInput(r1, nw2, 1e-5, r2))
        q = qkv[:, : heads * head_dim].view(m, heads, head_dim)
        k = qkv[:, heads * head_dim: (heads + kv_heads) * head_dim].view(m, kv_heads, head_dim)
        v = qkv[:, (heads + kv_heads) * head_dim:].view(m, kv_heads, head_dim)
        pre_rotary = qkv.clone()
        q_rot, k_rot = apply_rotary(q, k, positions, cache)  # out of place, before the in-place one
        rotary_and_store_kv(q, k, v, positions, cache, k_buf, v_buf, loc, inplace=True)
        store_kv(k_buf2, v_buf2, loc, k_rot, v)
        d2 = gemv(gu, w_down, None, split, gated=True)
        return dict(n1=n1, r1=r1, gu=gu, act=act, d=d, pre_rotary=pre_rotary, qkv=qkv, q_rot=q_rot, d2=d2)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for trial in range(3):
        x.copy_(rand(m, hidden))
        residual.copy_(rand(m, hidden))
        positions.copy_(torch.randint(0, 4096, (m,), generator=g))
        loc.copy_(torch.randperm(slots, generator=g)[:m])
        graph.replay()
        torch.cuda.synchronize()
        o = outs
        ref_n1, ref_r1 = ref_fused_add_rmsnorm(x, residual, nw1, 1e-5)
        torch.testing.assert_close(o["n1"], ref_n1, atol=2e-2, rtol=2e-2)
        assert torch.equal(o["r1"], ref_r1)
        assert _rel_err(o["gu"], ref_gemv(o["n1"], w_gate_up)) < 1e-2
        torch.testing.assert_close(o["act"], ref_silu_and_mul(o["gu"]), atol=3e-2, rtol=2e-2)
        assert _rel_err(o["d"], ref_gemv(o["act"], w_down)) < 1e-2
        normed, ref_r2 = ref_fused_add_rmsnorm(o["d"], o["r1"], nw2, 1e-5)
        assert torch.equal(r2, ref_r2)
        assert _rel_err(o["pre_rotary"], ref_gemv(normed, w_qkv)) < 1e-2
        pre = o["pre_rotary"]
        q0 = pre[:, : heads * head_dim].view(m, heads, head_dim)
        k0 = pre[:, heads * head_dim: (heads + kv_heads) * head_dim].view(m, kv_heads, head_dim)
        v0 = pre[:, (heads + kv_heads) * head_dim:].view(m, kv_heads, head_dim)
        ref_q, ref_k = ref_apply_rotary(q0, k0, positions, cache)
        rotated = o["qkv"]
        torch.testing.assert_close(rotated[:, : heads * head_dim].view(m, heads, head_dim), ref_q, atol=3e-2, rtol=2e-2)
        k_ref, v_ref = torch.zeros_like(k_buf), torch.zeros_like(v_buf)
        ref_store_kv(k_ref, v_ref, loc, ref_k, v0)
        torch.testing.assert_close(k_buf[loc], k_ref[loc], atol=3e-2, rtol=2e-2)
        assert torch.equal(v_buf[loc], v_ref[loc])
        assert torch.equal(k_buf2[loc], k_buf[loc]) and torch.equal(v_buf2[loc], v_buf[loc])
        assert torch.equal(o["q_rot"], rotated[:, : heads * head_dim].view(m, heads, head_dim))
        assert _rel_err(o["d2"], ref_gemv(ref_silu_and_mul(o["gu"]), w_down)) < 1e-2
