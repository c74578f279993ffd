"""MoE layer: routing against transformers' routers, the experts against an independent loop,
loading errors, and Mixtral / Qwen3-MoE greedy parity with transformers through the engine."""

from __future__ import annotations

import pytest
import torch

from lmlang.runtime.layers.moe import FusedMoE, MoEBlock, RoutingConfig, TopKRouter

HIDDEN, EXPERTS, TOP_K = 32, 16, 4


def _hf_router(family: str):
    """(transformers router, our RoutingConfig) for one family's routing rule."""
    import transformers as tf

    common = dict(hidden_size=HIDDEN, num_experts_per_tok=TOP_K)
    if family == "mixtral":
        router = tf.models.mixtral.modeling_mixtral.MixtralTopKRouter(tf.MixtralConfig(num_local_experts=EXPERTS, **common))
        return router, RoutingConfig(EXPERTS, TOP_K, norm_topk_prob=True)
    if family in ("qwen3_moe", "qwen3_moe_unnormalized"):
        norm = family == "qwen3_moe"
        config = tf.Qwen3MoeConfig(num_experts=EXPERTS, norm_topk_prob=norm, **common)
        return tf.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeTopKRouter(config), RoutingConfig(EXPERTS, TOP_K, norm_topk_prob=norm)
    if family in ("deepseek_v2", "deepseek_v2_grouped"):
        grouped = family == "deepseek_v2_grouped"
        config = tf.DeepseekV2Config(
            n_routed_experts=EXPERTS, topk_method="group_limited_greedy" if grouped else "greedy", n_group=4,
            topk_group=2, routed_scaling_factor=16.0, **common,
        )
        ours = RoutingConfig(
            EXPERTS, TOP_K, num_groups=4 if grouped else None, topk_groups=2 if grouped else None,
            routed_scaling_factor=16.0, logits_in_fp32=True,
        )
        return tf.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2TopkRouter(config), ours
    config = tf.DeepseekV3Config(n_routed_experts=EXPERTS, n_group=4, topk_group=2, routed_scaling_factor=2.5, **common)
    ours = RoutingConfig(
        EXPERTS, TOP_K, "sigmoid", num_groups=4, topk_groups=2, group_score="top2_sum", norm_topk_prob=True,
        routed_scaling_factor=2.5, correction_bias=True, logits_in_fp32=True,
    )
    return tf.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3TopkRouter(config), ours


@pytest.mark.parametrize(
    "family", ["mixtral", "qwen3_moe", "qwen3_moe_unnormalized", "deepseek_v2", "deepseek_v2_grouped", "deepseek_v3"]
)
def test_routing_matches_transformers(family):
    gen = torch.Generator().manual_seed(1)
    hf_router, cfg = _hf_router(family)
    ours = TopKRouter(HIDDEN, cfg)
    with torch.no_grad():
        hf_router.weight.copy_(torch.randn(EXPERTS, HIDDEN, generator=gen))
        ours.weight.copy_(hf_router.weight)
        if cfg.correction_bias:
            hf_router.e_score_correction_bias.copy_(0.1 * torch.randn(EXPERTS, generator=gen))
            ours.e_score_correction_bias.copy_(hf_router.e_score_correction_bias)
        hidden = torch.randn(64, HIDDEN, generator=gen)
        _, hf_weights, hf_ids = hf_router(hidden)
        weights, ids = ours(hidden)
    hf_ids, order = hf_ids.sort(dim=-1)
    ids, our_order = ids.sort(dim=-1)
    assert torch.equal(ids, hf_ids)
    torch.testing.assert_close(weights.gather(1, our_order), hf_weights.gather(1, order).float())


def test_grouped_routing_only_picks_experts_of_the_best_groups():
    cfg = RoutingConfig(8, 2, num_groups=4, topk_groups=1)
    logits = torch.tensor([[0.0, 5.0, 4.9, 4.8, 4.7, 4.6, 4.5, 0.0]])  # groups: {0,1} {2,3} {4,5} {6,7}
    router = TopKRouter(1, cfg)
    from lmlang.runtime.layers.moe import select_experts

    _, ids = select_experts(logits, cfg)
    assert sorted(ids[0].tolist()) == [0, 1]  # group 0 holds the best expert; 2 and 3 are excluded
    assert router.e_score_correction_bias is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_experts=8, top_k=9), "top_k"),
        (dict(num_experts=8, top_k=2, num_groups=3, topk_groups=1), "n_group"),
        (dict(num_experts=8, top_k=4, num_groups=4, topk_groups=1), "exceeds"),
        (dict(num_experts=8, top_k=2, scoring="tanh"), "scoring"),
    ],
)
def test_routing_config_rejects_inconsistent_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoutingConfig(**kwargs)


def test_experts_match_an_independent_per_expert_loop():
    from lmlang.kernels.fused_moe import ref_fused_experts

    gen = torch.Generator().manual_seed(2)
    experts = FusedMoE(EXPERTS, HIDDEN, 24)
    with torch.no_grad():
        experts.w13_weight.copy_(torch.randn(experts.w13_weight.shape, generator=gen) / HIDDEN**0.5)
        experts.w2_weight.copy_(torch.randn(experts.w2_weight.shape, generator=gen) / 24**0.5)
    hidden = torch.randn(20, HIDDEN, generator=gen)
    weights = torch.rand(20, TOP_K, generator=gen)
    ids = torch.stack([torch.randperm(EXPERTS, generator=gen)[:TOP_K] for _ in range(20)])
    expected = ref_fused_experts(hidden, experts.w13_weight, experts.w2_weight, weights, ids)
    torch.testing.assert_close(experts(hidden, weights, ids), expected, atol=1e-5, rtol=1e-5)


def test_moe_block_adds_shared_experts():
    block = MoEBlock(HIDDEN, 8, RoutingConfig(4, 2), shared_experts=torch.nn.Identity())
    for param in block.parameters():
        torch.nn.init.normal_(param)
    x = torch.randn(3, HIDDEN)
    with torch.no_grad():
        weights, ids = block.gate(x)
        torch.testing.assert_close(block(x), block.experts(x, weights, ids) + x)


def test_expert_weights_load_by_expert_and_projection():
    experts = FusedMoE(4, HIDDEN, 8)
    gate, up, down = torch.randn(8, HIDDEN), torch.randn(8, HIDDEN), torch.randn(HIDDEN, 8)
    experts.weight_loader(experts.w13_weight, gate, (2, "w1"))
    experts.weight_loader(experts.w13_weight, up, (2, "w3"))
    experts.weight_loader(experts.w2_weight, down, (2, "w2"))
    assert torch.equal(experts.w13_weight[2], torch.cat([gate, up])) and torch.equal(experts.w2_weight[2], down)
    with pytest.raises(ValueError, match="out of range"):
        experts.weight_loader(experts.w2_weight, down, (4, "w2"))
    with pytest.raises(ValueError, match="expected"):
        experts.weight_loader(experts.w13_weight, down, (0, "w1"))
    with pytest.raises(ValueError, match="shard"):
        experts.weight_loader(experts.w13_weight, gate, "w1")


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_greedy_tokens_match_transformers(greedy_parity, arch):
    greedy_parity(arch)


@pytest.mark.gpu
def test_experts_on_cuda_match_the_torch_path():
    from lmlang.runtime.layers.moe import ref_experts

    gen = torch.Generator().manual_seed(3)
    experts = FusedMoE(EXPERTS, 256, 128)
    with torch.no_grad():
        for p in (experts.w13_weight, experts.w2_weight):
            p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    hidden, weights = torch.randn(40, 256, generator=gen), torch.rand(40, TOP_K, generator=gen)
    ids = torch.stack([torch.randperm(EXPERTS, generator=gen)[:TOP_K] for _ in range(40)])
    expected = ref_experts(hidden, experts.w13_weight, experts.w2_weight, weights, ids)
    got = experts.to("cuda", torch.bfloat16)(hidden.cuda().bfloat16(), weights.cuda(), ids.cuda()).float().cpu()
    assert ((got - expected).norm() / expected.norm()) < 2e-2
