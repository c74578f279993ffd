"""The two-launch MoE router: `fused_topk` against `select_experts` for every routing family,
`router_logits` against `F.linear`, and (GPU) both at real model shapes and inside a CUDA graph."""

import pytest
import torch
import torch.nn.functional as F

from lmlang.kernels.moe_routing import (
    ROUTER_LOGITS_MAX_TOKENS,
    fused_topk,
    fused_topk_unsupported,
    ref_fused_topk,
    ref_router_logits,
    router_logits,
)
from lmlang.runtime.layers.moe import RoutingConfig, TopKRouter

V2_LITE = RoutingConfig(64, 6, logits_in_fp32=True)
V2 = RoutingConfig(
    160, 6, num_groups=8, topk_groups=3, group_score="max", routed_scaling_factor=16.0, logits_in_fp32=True
)
V3 = RoutingConfig(
    256, 8, "sigmoid", num_groups=8, topk_groups=4, group_score="top2_sum", norm_topk_prob=True,
    routed_scaling_factor=2.5, correction_bias=True, logits_in_fp32=True,
)
MIXTRAL = RoutingConfig(8, 2, norm_topk_prob=True)
QWEN3 = RoutingConfig(128, 8, norm_topk_prob=True)

CPU_CONFIGS = [
    pytest.param(V2_LITE, id="softmax"),
    pytest.param(RoutingConfig(20, 3, routed_scaling_factor=1.5), id="softmax-scaled-ragged-e"),
    pytest.param(MIXTRAL, id="softmax-norm"),
    pytest.param(RoutingConfig(32, 4, num_groups=4, topk_groups=2, group_score="max", routed_scaling_factor=16.0),
                 id="softmax-groups-max"),
    pytest.param(RoutingConfig(60, 5, num_groups=10, topk_groups=3, group_score="max", norm_topk_prob=True),
                 id="softmax-groups-max-ragged"),
    pytest.param(RoutingConfig(64, 8, "sigmoid", num_groups=8, topk_groups=4, group_score="top2_sum",
                               norm_topk_prob=True, routed_scaling_factor=2.5, correction_bias=True),
                 id="sigmoid-bias-top2"),
    pytest.param(RoutingConfig(60, 4, "sigmoid", num_groups=10, topk_groups=3, group_score="top2_sum",
                               correction_bias=True), id="sigmoid-bias-top2-ragged-no-norm"),
    pytest.param(RoutingConfig(24, 3, "sigmoid", norm_topk_prob=True), id="sigmoid-norm"),
]


def _routing_inputs(n: int, cfg: RoutingConfig, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, cfg.num_experts, generator=g)
    bias = 0.1 * torch.randn(cfg.num_experts, generator=g) if cfg.correction_bias else None
    return logits.to(device), (bias.to(device) if bias is not None else None)


def _assert_same_routing(weights, ids, ref_weights, ref_ids, rtol: float) -> None:
    """Same experts per token (as sets) and the same weight for each expert."""
    assert ids.shape == ref_ids.shape and weights.shape == ref_weights.shape
    assert weights.dtype == torch.float32
    ids, order = ids.long().cpu().sort(dim=-1)
    ref_ids, ref_order = ref_ids.long().cpu().sort(dim=-1)
    assert torch.equal(ids, ref_ids)
    weights, ref_weights = weights.cpu().gather(1, order), ref_weights.cpu().gather(1, ref_order)
    torch.testing.assert_close(weights, ref_weights, rtol=rtol, atol=0)


@pytest.mark.parametrize("cfg", CPU_CONFIGS)
@pytest.mark.parametrize("n", [1, 3, 9])
def test_fused_topk_matches_select_experts(cfg, n):
    logits, bias = _routing_inputs(n, cfg, "cpu", seed=n + cfg.num_experts)
    weights, ids = fused_topk(logits, cfg, bias)
    assert ids.dtype == torch.int32
    _assert_same_routing(weights, ids, *ref_fused_topk(logits, cfg, bias), rtol=1e-6)


def test_fused_topk_reads_low_precision_logits():
    """bf16 logits (the router of a bf16 model) are widened as select_experts widens them; the
    values are distinct in bf16, so no tie decides the choice."""
    cfg = RoutingConfig(16, 4, num_groups=4, topk_groups=2, norm_topk_prob=True)
    g = torch.Generator().manual_seed(5)
    logits = torch.stack([torch.randperm(16, generator=g) for _ in range(2)]).float().mul(0.25).bfloat16()
    _assert_same_routing(*fused_topk(logits, cfg), *ref_fused_topk(logits, cfg), rtol=1e-6)


def test_grouped_topk_keeps_only_the_best_groups():
    """A strong expert outside the kept groups loses: group 0 ({0, 1}) wins on its best expert."""
    cfg = RoutingConfig(8, 2, num_groups=4, topk_groups=1)
    _, ids = fused_topk(torch.tensor([[0.0, 5.0, 4.9, 4.8, 4.7, 4.6, 4.5, 0.0]]), cfg)
    assert sorted(ids[0].tolist()) == [0, 1]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy, in the interpreter
def test_fused_topk_keeps_ids_in_range_for_nan_logits():
    """NaN logits (a diverged model) must not produce ids the expert GEMMs would read out of bounds."""
    cfg = RoutingConfig(20, 3, num_groups=4, topk_groups=2)
    _, ids = fused_topk(torch.full((2, 20), float("nan")), cfg)
    assert ((ids >= 0) & (ids < 20)).all()


def test_fused_topk_rejects_bad_inputs():
    logits, bias = _routing_inputs(2, V3, "cpu", seed=0)
    with pytest.raises(ValueError, match=r"\[n, 256\]"):
        fused_topk(logits[:, :128], V3, bias)
    with pytest.raises(ValueError, match="correction_bias"):
        fused_topk(logits, V3, bias[:10])
    with pytest.raises(ValueError, match="correction_bias"):
        fused_topk(logits, V3, bias.double())
    with pytest.raises(ValueError, match="dtype"):
        fused_topk(logits.double(), V3, bias)
    with pytest.raises(ValueError, match="unsupported"):
        fused_topk(torch.randn(1, 1024), RoutingConfig(1024, 8))
    assert fused_topk_unsupported(RoutingConfig(8, 1, num_groups=8, topk_groups=2, group_score="top2_sum")) is not None
    assert fused_topk_unsupported(V3) is None


def _logits_inputs(n: int, e: int, h: int, dtype: torch.dtype, weight_dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device, dtype)
    weight = (torch.randn(e, h, generator=g) * h**-0.5).to(device, weight_dtype)
    return hidden, weight


@pytest.mark.parametrize("n,e,h", [(1, 6, 80), (3, 5, 64), (4, 3, 1100), (ROUTER_LOGITS_MAX_TOKENS, 3, 48)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_router_logits_with_float32_weight(n, e, h, dtype):
    """DeepSeek's router: a float32 weight, hidden states in any dtype, float32 logits."""
    hidden, weight = _logits_inputs(n, e, h, dtype, torch.float32, "cpu", seed=n * h)
    out = router_logits(hidden, weight)
    assert out.dtype == torch.float32 and out.shape == (n, e)
    torch.testing.assert_close(out, F.linear(hidden.float(), weight.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,h", [(1, 96), (5, 40)])
def test_router_logits_with_model_dtype_weight_rounds_like_f_linear(n, h):
    """A bf16 weight: float32 sums rounded to bf16 (within one bf16 step of F.linear in bf16)."""
    hidden, weight = _logits_inputs(n, 7, h, torch.bfloat16, torch.bfloat16, "cpu", seed=h)
    out = router_logits(hidden, weight)
    exact = F.linear(hidden.float(), weight.float())
    assert out.dtype == torch.float32 and torch.equal(out, out.bfloat16().float())  # bf16 values
    torch.testing.assert_close(out, exact, rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(out, ref_router_logits(hidden, weight), rtol=2**-7, atol=1e-6)


def test_router_logits_above_the_kernel_limit_runs_f_linear():
    hidden, weight = _logits_inputs(ROUTER_LOGITS_MAX_TOKENS + 1, 4, 32, torch.bfloat16, torch.float32, "cpu", seed=1)
    assert torch.equal(router_logits(hidden, weight), ref_router_logits(hidden, weight))


def test_router_logits_rejects_bad_inputs():
    hidden, weight = _logits_inputs(2, 4, 32, torch.bfloat16, torch.float32, "cpu", seed=2)
    with pytest.raises(ValueError, match=r"\[E, H\]"):
        router_logits(hidden, weight[:, :16])
    with pytest.raises(ValueError, match="weight must be float32"):
        router_logits(hidden, weight.half())
    with pytest.raises(ValueError, match="hidden dtype"):
        router_logits(hidden.to(torch.int32), weight)
    with pytest.raises(ValueError, match="contiguous"):
        router_logits(torch.randn(32, 2).t(), weight)


# ---- GPU: real shapes, CUDA graphs, the router module ---------------------------------------

# (routing, hidden size, router weight dtype)
GPU_MODELS = [
    pytest.param(V2_LITE, 2048, torch.float32, id="v2-lite"),
    pytest.param(V2, 5120, torch.float32, id="v2"),
    pytest.param(V3, 7168, torch.float32, id="v3"),
    pytest.param(MIXTRAL, 4096, torch.bfloat16, id="mixtral"),
    pytest.param(QWEN3, 2048, torch.bfloat16, id="qwen3-moe"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("cfg,h,weight_dtype", GPU_MODELS)
@pytest.mark.parametrize("n", [1, 4, 16, 300])
def test_routing_on_cuda_at_model_shapes(cfg, h, weight_dtype, n):
    logits, bias = _routing_inputs(n, cfg, "cuda", seed=n)
    # tl.exp / tl.sigmoid are within a few float32 ulps of torch's
    _assert_same_routing(*fused_topk(logits, cfg, bias), *ref_fused_topk(logits, cfg, bias), rtol=1e-5)
    hidden, weight = _logits_inputs(n, cfg.num_experts, h, torch.bfloat16, weight_dtype, "cuda", seed=n)
    out = router_logits(hidden, weight)
    if weight_dtype == torch.float32:
        torch.testing.assert_close(out, F.linear(hidden.float(), weight), rtol=1e-5, atol=5e-5)
    else:
        torch.testing.assert_close(out, ref_router_logits(hidden, weight), rtol=2**-7, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg,h,weight_dtype", [GPU_MODELS[0], GPU_MODELS[2]])
def test_router_kernels_replay_in_a_cuda_graph(cfg, h, weight_dtype):
    hidden, weight = _logits_inputs(4, cfg.num_experts, h, torch.bfloat16, weight_dtype, "cuda", seed=3)
    bias = (0.1 * torch.randn(cfg.num_experts, device="cuda")) if cfg.correction_bias else None

    def route():
        return fused_topk(router_logits(hidden, weight), cfg, bias)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        route()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        weights, ids = route()
    for seed in (4, 5):
        hidden.copy_(torch.randn(hidden.shape, generator=torch.Generator().manual_seed(seed)).to(hidden))
        graph.replay()
        torch.cuda.synchronize()
        ref_logits = ref_router_logits(hidden, weight)
        _assert_same_routing(weights.clone(), ids.clone(), *ref_fused_topk(ref_logits, cfg, bias), rtol=1e-4)


@pytest.mark.gpu
def test_router_module_on_cuda_matches_its_cpu_path():
    """TopKRouter on CUDA (the two kernels) and on CPU (torch) route DeepSeek-V3 tokens alike."""
    router = TopKRouter(7168, V3)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape) * 7168**-0.5)
        router.e_score_correction_bias.copy_(0.1 * torch.randn(256))
        hidden = torch.randn(8, 7168).bfloat16()
        ref_weights, ref_ids = router(hidden)
        weights, ids = router.cuda()(hidden.cuda())
    assert ids.dtype == torch.int32 and ref_ids.dtype == torch.int64
    _assert_same_routing(weights, ids, ref_weights, ref_ids, rtol=1e-4)
