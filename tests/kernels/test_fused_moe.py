"""Fused MoE: token alignment invariants, the grouped GEMM, and fused_experts against the
per-expert torch loop (bf16/fp16/fp32 and FP8 block-scaled weights)."""

import pytest
import torch

from lmlang.kernels.fp8 import per_token_group_quant_fp8, quant_weight_block_fp8, ref_fp8_block_gemm
from lmlang.kernels.fused_moe import (
    fused_experts,
    fused_moe_gemm,
    moe_align_block_size,
    moe_sum,
    ref_fused_experts,
    ref_moe_sum,
)
from lmlang.kernels.moe_align import max_aligned_blocks, ref_moe_align_block_size
from lmlang.kernels.moe_config import FusedMoEConfig, get_fused_moe_config


def _routing(m, e, k, g, device):
    logits = torch.randn(m, e, generator=g)
    weights, ids = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return weights.to(device), ids.to(device, torch.int32)


ALIGN_CASES = [(5, 2, 4, 4), (1, 1, 8, 16), (9, 3, 3, 2), (1, 8, 256, 16), (12, 8, 256, 16), (40, 6, 64, 16), (3, 2, 5, 1)]


@pytest.mark.parametrize("align", [moe_align_block_size, ref_moe_align_block_size], ids=["kernel", "torch"])
@pytest.mark.parametrize("m,k,e,block", ALIGN_CASES)
def test_moe_align_block_size_sorts_and_pads_per_expert(align, m, k, e, block):
    ids = torch.stack([torch.randperm(e, generator=torch.Generator().manual_seed(m + t))[:k] for t in range(m)]) \
        if k <= e else torch.randint(0, e, (m, k), generator=torch.Generator().manual_seed(m))
    sorted_ids, expert_ids, num_post = align(ids, block, e)
    flat = ids.flatten().tolist()
    n, used = len(flat), int(num_post.item())
    assert sorted_ids.shape[0] == max_aligned_blocks(n, block, e) * block and used % block == 0
    assert sorted(p for p in sorted_ids.tolist() if p < n) == list(range(n))  # every pair exactly once
    assert all(p == n for p in sorted_ids[used:].tolist())
    for b in range(used // block):
        rows = [p for p in sorted_ids[b * block : (b + 1) * block].tolist() if p < n]
        assert rows == sorted(rows) and all(flat[p] == expert_ids[b].item() for p in rows)
    assert all(x == -1 for x in expert_ids[used // block :].tolist())
    counts = torch.bincount(ids.flatten(), minlength=e)
    assert used == int(((counts + block - 1) // block * block).sum())


@pytest.mark.parametrize("m,k,e,block", ALIGN_CASES + [(7, 3, 3, 4)])
def test_moe_align_kernel_equals_the_torch_sort(m, k, e, block):
    """The one-launch kernel and the sort path give identical tensors (int32 and int64 ids)."""
    ids = torch.randint(0, e, (m, k), generator=torch.Generator().manual_seed(7 * m + e))
    for dtype in (torch.int32, torch.int64):
        got = moe_align_block_size(ids.to(dtype), block, e)
        want = ref_moe_align_block_size(ids.to(dtype), block, e)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype == torch.int32 and torch.equal(g, w)


def test_moe_align_grid_bound_is_tight_at_decode():
    """One DeepSeek-V3 token (8 distinct experts of 256) needs 8 blocks, not 256."""
    assert max_aligned_blocks(8, 16, 256) == 8
    assert max_aligned_blocks(32768, 64, 256) == (32768 + 256 * 63) // 64


def test_fp8_grouped_gemm_matches_block_gemm_per_pair():
    """With the same quantized inputs, each output row equals the dense fp8 GEMM of its expert."""
    g = torch.Generator().manual_seed(0)
    m, k, e, n, hdim = 6, 2, 3, 192, 256
    _, ids = _routing(m, e, k, g, "cpu")
    a_q, a_s = per_token_group_quant_fp8(torch.randn(m, hdim, generator=g))
    w_q, w_s = quant_weight_block_fp8(torch.randn(e, n, hdim, generator=g))
    cfg = FusedMoEConfig(16, 64, 128, 1, 4, 3)
    sorted_ids, expert_ids, num_post = moe_align_block_size(ids, cfg.BLOCK_SIZE_M, e)
    out = torch.empty(m * k, n)
    fused_moe_gemm(a_q, w_q, out, None, sorted_ids, expert_ids, num_post, k, cfg, a_s, w_s)
    for p, ex in enumerate(ids.flatten().tolist()):
        t = p // k
        ref = ref_fp8_block_gemm(a_q[t : t + 1], a_s[t : t + 1], w_q[ex], w_s[ex], torch.float32)
        torch.testing.assert_close(out[p : p + 1], ref, rtol=1e-4, atol=1e-4)


CASES = [
    # device, dtype, M, hidden, intermediate, experts, top_k
    pytest.param("cpu", torch.float32, 7, 64, 32, 4, 2, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, 3, 32, 48, 5, 3, id="cpu-bf16-ragged"),
    pytest.param("cuda", torch.bfloat16, 1, 4096, 14336, 8, 2, id="gpu-mixtral-decode", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 300, 4096, 14336, 8, 2, id="gpu-mixtral-prefill", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 64, 2048, 768, 128, 8, id="gpu-qwen3-moe", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float32, 33, 256, 128, 16, 4, id="gpu-fp32", marks=pytest.mark.gpu),
]


def _randn(*shape, g, device, scale=1.0):
    return torch.randn(*shape, generator=g, device=device).mul_(scale)


@pytest.mark.parametrize("device,dtype,m,hidden,inter,e,k", CASES)
def test_fused_experts_matches_reference(device, dtype, m, hidden, inter, e, k):
    g = torch.Generator(device).manual_seed(1)  # weights are made on the device: GBs at real shapes
    x = _randn(m, hidden, g=g, device=device).to(dtype)
    w13 = _randn(e, 2 * inter, hidden, g=g, device=device, scale=hidden**-0.5).to(dtype)
    w2 = _randn(e, hidden, inter, g=g, device=device, scale=inter**-0.5).to(dtype)
    weights, ids = _routing(m, e, k, torch.Generator().manual_seed(1), device)
    out = fused_experts(x, w13, w2, weights, ids)
    ref = ref_fused_experts(x, w13, w2, weights, ids)
    assert out.shape == (m, hidden) and out.dtype == dtype
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(out, ref, **tol)


@pytest.mark.parametrize("device,dtype,m,k,h", [
    pytest.param("cpu", torch.float32, 3, 2, 40, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, 2, 6, 1100, id="cpu-bf16-two-blocks"),
    pytest.param("cuda", torch.bfloat16, 1, 6, 2048, id="gpu-v2-lite-decode", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 300, 8, 7168, id="gpu-v3-prefill", marks=pytest.mark.gpu),
])
def test_moe_sum_adds_the_slots_and_the_residual(device, dtype, m, k, h):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(m, k, h, generator=g).to(device, dtype)
    residual = torch.randn(m, h, generator=g).to(device, dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(moe_sum(x), ref_moe_sum(x), **tol)
    # the residual is added to the rounded sum, as `sum + residual` in torch
    assert torch.equal(moe_sum(x, residual), moe_sum(x) + residual)


def test_fused_experts_adds_the_residual_in_its_last_launch():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 64, generator=g)
    w13, w2 = torch.randn(3, 64, 64, generator=g) * 0.1, torch.randn(3, 64, 32, generator=g) * 0.1
    weights, ids = _routing(4, 3, 2, torch.Generator().manual_seed(6), "cpu")
    residual = torch.randn(4, 64, generator=g)
    assert torch.equal(fused_experts(x, w13, w2, weights, ids, residual=residual),
                       fused_experts(x, w13, w2, weights, ids) + residual)
    with pytest.raises(ValueError, match="residual"):
        fused_experts(x, w13, w2, weights, ids, residual=residual[:2])


FP8_CASES = [
    pytest.param("cpu", 5, 128, 128, 4, 2, id="cpu"),
    pytest.param("cuda", 1, 7168, 2048, 256, 8, id="gpu-deepseek-v3-decode", marks=pytest.mark.gpu),
    pytest.param("cuda", 64, 7168, 2048, 256, 8, id="gpu-deepseek-v3-batch64", marks=pytest.mark.gpu),
    pytest.param("cuda", 2048, 7168, 2048, 256, 8, id="gpu-deepseek-v3-prefill", marks=pytest.mark.gpu),
]


def _fp8_experts(e, n, k, g, device):
    """Block-quantized random experts, one at a time (all 256 DeepSeek experts in float32 take 30 GB)."""
    parts = [quant_weight_block_fp8(_randn(n, k, g=g, device=device, scale=k**-0.5)) for _ in range(e)]
    return torch.stack([q for q, _ in parts]), torch.stack([s for _, s in parts])


@pytest.mark.parametrize("device,m,hidden,inter,e,k", FP8_CASES)
def test_fused_experts_fp8_matches_reference(device, m, hidden, inter, e, k):
    g = torch.Generator(device).manual_seed(2)
    x = _randn(m, hidden, g=g, device=device).to(torch.bfloat16)
    w13_q, w13_s = _fp8_experts(e, 2 * inter, hidden, g, device)
    w2_q, w2_s = _fp8_experts(e, hidden, inter, g, device)
    weights, ids = _routing(m, e, k, torch.Generator().manual_seed(2), device)
    kw = dict(use_fp8=True, w13_scale=w13_s, w2_scale=w2_s)
    out = fused_experts(x, w13_q, w2_q, weights, ids, **kw).float()
    ref = ref_fused_experts(x, w13_q, w2_q, weights, ids, **kw).float()
    # the kernel also quantizes both GEMM inputs to fp8 per 1x128 group; the reference does not
    assert (out - ref).norm() / ref.norm() < 0.1


def test_fused_experts_rejects_mismatched_shapes_and_missing_scales():
    x = torch.randn(2, 16)
    w13, w2 = torch.randn(2, 8, 16), torch.randn(2, 16, 4)
    ids, weights = torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, 1)
    with pytest.raises(ValueError, match="do not chain"):
        fused_experts(x, w13, torch.randn(2, 16, 5), weights, ids)
    with pytest.raises(ValueError, match="use_fp8"):
        fused_experts(x, w13, w2, weights, ids, use_fp8=True)


def test_config_lookup_takes_the_nearest_token_count():
    small = get_fused_moe_config(1, 8, 256, 128, "bf16")
    large = get_fused_moe_config(100_000, 8, 256, 128, "bf16")
    assert small.BLOCK_SIZE_M <= large.BLOCK_SIZE_M
    assert get_fused_moe_config(3, 8, 256, 128, "fp8_w8a8", "no such device").BLOCK_SIZE_K == 128
    with pytest.raises(ValueError, match="dtype"):
        get_fused_moe_config(1, 8, 256, 128, "int4")


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 32, 200])
def test_fused_experts_replays_from_a_cuda_graph(m):
    """Decode runs the experts inside a CUDA graph: no host sync anywhere on the path (small and
    sort alignment), and the replay, with new routing copied in, matches an eager call."""
    g = torch.Generator("cuda").manual_seed(4)
    e, k, hidden, inter = 64, 6, 256, 128
    x = _randn(m, hidden, g=g, device="cuda").bfloat16()
    w13 = _randn(e, 2 * inter, hidden, g=g, device="cuda", scale=hidden**-0.5).bfloat16()
    w2 = _randn(e, hidden, inter, g=g, device="cuda", scale=inter**-0.5).bfloat16()
    weights, ids = _routing(m, e, k, torch.Generator().manual_seed(4), "cuda")
    fused_experts(x, w13, w2, weights, ids)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_experts(x, w13, w2, weights, ids)
    new_weights, new_ids = _routing(m, e, k, torch.Generator().manual_seed(5), "cuda")
    weights.copy_(new_weights)
    ids.copy_(new_ids)
    graph.replay()
    torch.testing.assert_close(out, fused_experts(x, w13, w2, weights, ids), atol=0, rtol=0)
