"""DeepSeek-V2/V3: greedy parity with transformers through the engine, absorbed == expanded MLA,
the latent pool, and the NextN / MTP weights DeepSeek ships being skipped."""

from __future__ import annotations

import pytest
import torch

from lmlang.runtime.cache.mla_pool import MLAKVCacheSpec, MLAKVPool
from lmlang.runtime.model_loader import load_model
from lmlang.runtime.models.deepseek_v2 import DeepseekV2ForCausalLM
from lmlang.testing import make_tiny_checkpoint
from lmlang.testing.forward import ForwardDriver


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v3"])
def test_greedy_tokens_match_transformers(greedy_parity, arch):
    greedy_parity(arch)


@pytest.fixture(scope="module")
def v3_model(tiny_ckpt):
    model, _ = load_model(tiny_ckpt("deepseek_v3"), dtype=torch.float32)
    return model


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v3"])
def test_absorbed_mla_equals_expanded_for_decode_and_chunked_extend(tiny_ckpt, arch):
    model, config = load_model(tiny_ckpt(arch), dtype=torch.float32)
    driver = ForwardDriver(model, num_seqs=3)
    driver.forward({0: list(range(10, 50)), 1: [7, 8, 9], 2: list(range(100, 117))})  # fill the latent cache
    attn = model.model.layers[1].self_attn
    gen = torch.Generator().manual_seed(0)
    for new_tokens in ({0: [5], 1: [6], 2: [7]}, {0: [5, 6, 7, 8], 2: [9]}):  # a decode batch, then an extend
        batch = driver.batch(new_tokens)
        hidden = torch.randn(batch.num_tokens, config.hidden_size, generator=gen)
        with torch.no_grad():
            absorbed = attn(batch.positions, hidden, batch, absorbed=True)
            expanded = attn(batch.positions, hidden, batch, absorbed=False)
        assert _relative_error(absorbed, expanded) < 1e-5, batch.mode


def test_mla_pool_holds_one_latent_row_per_token_and_layer(v3_model):
    spec = v3_model.kv_cache_spec()
    assert spec == MLAKVCacheSpec(num_layers=2, kv_lora_rank=32, qk_rope_head_dim=16)
    assert (spec.num_kv_heads, spec.head_dim, spec.v_head_dim) == (1, 48, 32)
    pool = spec.make_pool(10, torch.bfloat16, "cpu")
    assert isinstance(pool, MLAKVPool) and len(pool.kv_buffer) == 2
    assert pool.kv_buffer[0].shape == (11, 1, 48)  # slot 0 is the dummy
    assert pool.bytes_per_slot() == 2 * 48 * 2
    latent, rope = torch.randn(2, 32), torch.randn(2, 1, 16)
    pool.store(1, torch.tensor([3, 7]), latent, rope)
    assert torch.equal(pool.kv_buffer[1][[3, 7], 0], torch.cat([latent, rope[:, 0]], -1).bfloat16())
    assert not pool.kv_buffer[0].any() and not pool.kv_buffer[1][0].any()


def test_decode_matches_full_prefill_logits(v3_model):
    prompt = list(range(30, 70))
    full = ForwardDriver(v3_model, num_seqs=1).forward({0: prompt})[0]
    driver = ForwardDriver(v3_model, num_seqs=1)
    steps = [driver.forward({0: prompt[:33]})[0]] + [driver.forward({0: [t]})[0] for t in prompt[33:]]
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-4, rtol=1e-4)


def test_nextn_mtp_layer_weights_are_skipped(tmp_path, v3_model):
    path = make_tiny_checkpoint(tmp_path, "deepseek_v3", mtp_layers=1)
    from safetensors import safe_open

    with safe_open(f"{path}/model.safetensors", "pt") as f:
        names = set(f.keys())
    assert {"model.layers.2.eh_proj.weight", "model.layers.2.shared_head.head.weight",
            "model.layers.2.mlp.experts.7.down_proj.weight"} <= names
    with_mtp, _ = load_model(path, dtype=torch.float32)
    main = dict(v3_model.named_parameters())
    for name, param in with_mtp.named_parameters():
        assert torch.equal(param, main[name]), name


def test_unsupported_v2_topk_method_is_rejected(tiny_ckpt):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_ckpt("deepseek_v2"))
    config.topk_method = "noaux_tc"
    with pytest.raises(ValueError, match="topk_method"):
        DeepseekV2ForCausalLM.routing_config(config)


@pytest.mark.gpu
def test_absorbed_decode_on_cuda_uses_the_kernel_and_matches_the_torch_path(tiny_ckpt):
    model, config = load_model(tiny_ckpt("deepseek_v3"), dtype=torch.bfloat16, device="cuda")
    driver = ForwardDriver(model, num_seqs=3)
    driver.forward({0: list(range(10, 250)), 1: [7, 8, 9], 2: list(range(100, 117))})
    attn = model.model.layers[1].self_attn
    batch = driver.batch({0: [5], 1: [6], 2: [7]})
    hidden = torch.randn(3, config.hidden_size, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expanded = attn(batch.positions, hidden, batch, absorbed=False).float()
        absorbed = attn(batch.positions, hidden, batch, absorbed=True).float()
    assert _relative_error(absorbed, expanded) < 2e-2


def test_mla_backend_serves_a_static_kv_layout_for_cuda_graphs(v3_model):
    from lmlang.runtime.attention.mla_backend import MLAAttentionBackend, kv_layout

    driver = ForwardDriver(v3_model, num_seqs=2)
    assert isinstance(driver.backend, MLAAttentionBackend)  # the backend the MLA spec asks for
    driver.forward({0: [1, 2, 3], 1: [4, 5]})
    batch = driver.batch({0: [6], 1: [7]})  # eager plan: the batch's own layout
    assert kv_layout(batch)[0] is batch.kv_indptr
    driver.backend.init_cuda_graph(max_batch_size=4, max_kv_indices=16)
    driver.backend.plan_cuda_graph(batch)
    indptr, indices = kv_layout(batch)
    assert torch.equal(indptr, batch.kv_indptr) and torch.equal(indices[:7], batch.kv_indices)
    driver.advance({0: [6], 1: [7]})
    replay = driver.batch({0: [8], 1: [9]})
    driver.backend.plan_cuda_graph(replay)  # a replay refills the same storage
    assert kv_layout(replay)[0].data_ptr() == indptr.data_ptr() and torch.equal(kv_layout(replay)[0], replay.kv_indptr)
    driver.advance({0: [8], 1: [9]})
    with pytest.raises(ValueError, match="capacity"):
        driver.backend.plan_cuda_graph(driver.batch({0: list(range(20))}))


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", [None, "fp8"])
def test_decode_step_replays_from_a_cuda_graph(tmp_path, quantization):
    # hidden and expert widths of whole 128-blocks: FP8 experts take the fused kernel (its torch
    # fallback for ragged widths syncs with the host and cannot be captured)
    path = make_tiny_checkpoint(tmp_path, "deepseek_v3", hidden_size=128, moe_intermediate_size=128)
    model, _ = load_model(path, dtype=torch.bfloat16, device="cuda", quantization=quantization)
    driver = ForwardDriver(model, num_seqs=2, max_seq_len=64)
    driver.forward({0: list(range(10, 40)), 1: [7, 8, 9]})
    driver.backend.init_cuda_graph(max_batch_size=2, max_kv_indices=128)
    static = driver.batch({0: [5], 1: [6]})
    driver.backend.plan_cuda_graph(static)
    with torch.no_grad():
        for _ in range(2):  # warm-up: compile the kernels outside the capture
            model.compute_logits(model(static))
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model.compute_logits(model(static))
        for step in range(3):
            tokens = {0: [11 + step], 1: [21 + step]}
            eager_batch = driver.batch(tokens)
            expected = model.compute_logits(model(eager_batch))
            for name in ("input_ids", "positions", "out_cache_loc"):
                getattr(static, name).copy_(getattr(eager_batch, name))
            driver.backend.plan_cuda_graph(eager_batch)
            graph.replay()
            torch.testing.assert_close(out, expected, atol=5e-2, rtol=5e-2)
            driver.advance(tokens)


def test_stacked_q_a_and_kv_a_projection_matches_transformers(tmp_path):
    """With q_lora_rank a multiple of 128 (as released: 1536) q_a_proj and kv_a_proj_with_mqa load
    into one stacked projection; the tiny default (48) keeps them apart (see `can_fuse_qkv_a`)."""
    from transformers import AutoModelForCausalLM

    path = make_tiny_checkpoint(tmp_path, "deepseek_v3", q_lora_rank=128)
    model, _ = load_model(path, dtype=torch.float32)
    attn = model.model.layers[0].self_attn
    assert attn.fused_qkv_a and not hasattr(attn, "q_a_proj") and not hasattr(attn, "kv_a_proj_with_mqa")
    prompt = list(range(30, 70))
    logits = ForwardDriver(model, num_seqs=1).forward({0: prompt})[0]
    hf = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        reference = hf(torch.tensor([prompt])).logits[0].float()
    assert _relative_error(logits, reference) < 1e-5
