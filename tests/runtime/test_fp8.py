"""FP8 block-wise W8A8: DeepSeek's FP8 checkpoint format loads and generates, online quantization
gives the same model, and the FP8 layers compute what their dequantized weights say."""

from __future__ import annotations

import json

import pytest
import torch

from lmlang.kernels.fp8 import FP8_DTYPE, dequant_weight_block_fp8
from lmlang.runtime import Engine
from lmlang.runtime.layers.linear import Linear, StackedLinear
from lmlang.runtime.layers.moe import TopKRouter
from lmlang.runtime.model_loader import load_model
from lmlang.runtime.quantization import Fp8Config, Fp8FusedMoE, Fp8Linear, resolve_quantization
from lmlang.runtime.quantization.fp8_gemm_plan import (
    CUBLAS_MIN_TOKENS,
    FLASHINFER_MAX_TOKENS,
    FLASHINFER_MIN_TOKENS,
    GEMM_BACKEND_ENV,
    GemmPlan,
    gemm_backend_from_env,
    plan_gemm,
)
from lmlang.runtime.quantization.fp8_linear import fake_quant_activation
from lmlang.testing import make_tiny_checkpoint, make_tiny_fp8_checkpoint
from lmlang.testing.forward import ForwardDriver
from lmlang.testing.parity import parity_prompts

BLOCK = (32, 32)  # the tiny DeepSeek-V3's dims (64, 32, 48, ...) are whole or partial 32-blocks
PROMPTS = {0: list(range(20, 60)), 1: [5, 6, 7], 2: list(range(300, 317))}


@pytest.fixture(scope="module")
def fp8_path(tmp_path_factory):
    return make_tiny_fp8_checkpoint(tmp_path_factory.mktemp("fp8_v3"), "deepseek_v3", block_size=BLOCK)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat(ForwardDriver(model, num_seqs=3).forward(PROMPTS))


def test_checkpoint_is_written_in_deepseek_fp8_format(fp8_path, tiny_ckpt):
    from safetensors.torch import load_file

    with open(f"{fp8_path}/config.json") as f:
        qcfg = json.load(f)["quantization_config"]
    assert qcfg == {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [32, 32]}
    fp8, original = load_file(f"{fp8_path}/model.safetensors"), load_file(f"{tiny_ckpt('deepseek_v3')}/model.safetensors")
    name = "model.layers.1.self_attn.q_b_proj.weight"  # [4 * 32, 48]
    assert fp8[name].dtype == FP8_DTYPE and fp8[name + "_scale_inv"].shape == (4, 2)
    restored = dequant_weight_block_fp8(fp8[name], fp8[name + "_scale_inv"], BLOCK)
    assert ((restored - original[name]).norm() / original[name].norm()) < 0.05
    assert fp8["model.layers.1.mlp.experts.3.up_proj.weight"].dtype == FP8_DTYPE
    for kept in ("model.layers.1.mlp.gate.weight", "model.embed_tokens.weight", "lm_head.weight",
                 "model.layers.1.mlp.gate.e_score_correction_bias", "model.norm.weight"):
        assert fp8[kept].dtype == torch.float32 and kept + "_scale_inv" not in fp8


def test_fp8_checkpoint_loads_fp8_layers_equal_to_online_quantization(fp8_path, tiny_ckpt):
    loaded, _ = load_model(fp8_path, dtype=torch.float32)
    modules = list(loaded.modules())
    assert not any(isinstance(m, Linear) for m in modules)
    assert sum(isinstance(m, Fp8FusedMoE) for m in modules) == 1
    assert sum(isinstance(m, Fp8Linear) for m in modules) == 2 * 5 + 2 + 2  # attention x2, dense + shared MLPs
    assert isinstance(loaded.model.layers[1].mlp.gate, TopKRouter)
    online, _ = load_model(tiny_ckpt("deepseek_v3"), dtype=torch.float32, quantization=Fp8Config(BLOCK))
    full, _ = load_model(tiny_ckpt("deepseek_v3"), dtype=torch.float32)
    torch.testing.assert_close(_logits(loaded), _logits(online), atol=1e-5, rtol=1e-5)
    # every FP8 weight holds its own projection (tiny random models amplify W8A8 noise too much to
    # compare logits with the float32 model; the layers are compared one by one below)
    full_modules = dict(full.named_modules())
    for name, module in loaded.named_modules():
        if isinstance(module, Fp8Linear):
            dense, original = module.dequantized_weight(), full_modules[name].weight
        elif isinstance(module, Fp8FusedMoE):
            dense = torch.stack([dequant_weight_block_fp8(w, s, BLOCK) for w, s in
                                 zip(module.w13_weight, module.w13_weight_scale_inv)])
            original = full_modules[name].w13_weight
        else:
            continue
        assert ((dense - original).norm() / original.norm()) < 0.05, name


def test_fp8_checkpoint_generates_like_online_quantization_through_the_engine(tmp_path_factory, kv_accounting):
    # 128 x 128 blocks (the default of quantization="fp8") over dims of 64 and 128: ragged k blocks
    # are zero-padded, and the 128-wide gate/up shards start on block rows, so both paths agree exactly
    dims = {"moe_intermediate_size": 128, "intermediate_size": 128}
    fp8 = make_tiny_fp8_checkpoint(tmp_path_factory.mktemp("fp8_128"), "deepseek_v3", **dims)
    plain = make_tiny_checkpoint(tmp_path_factory.mktemp("plain_128"), "deepseek_v3", **dims)
    prompts = parity_prompts(512, (1, 9, 20, 40))
    params = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    outputs = []
    for path, quantization in ((fp8, None), (plain, "fp8")):
        with Engine(path, dtype="float32", chunked_prefill_size=16, quantization=quantization) as engine:
            outputs.append([r["output_ids"] for r in engine.generate(input_ids=prompts, sampling_params=params)])
            assert kv_accounting(engine)["kv_in_use"] == 0
    assert outputs[0] == outputs[1]
    assert all(len(ids) == 16 for ids in outputs[0])


def test_sharded_fp8_checkpoint_without_q_lora_loads(tmp_path, tiny_ckpt):
    path = make_tiny_fp8_checkpoint(tmp_path, "deepseek_v2", block_size=(16, 16), max_shard_size="200KB")
    with open(f"{path}/model.safetensors.index.json") as f:
        assert "model.layers.1.self_attn.q_proj.weight_scale_inv" in json.load(f)["weight_map"]
    model, _ = load_model(path, dtype=torch.float32)
    # q_proj (4 x 32 rows) and kv_a_proj_with_mqa load into the stacked projection, block row aligned
    assert isinstance(model.model.layers[1].self_attn.fused_qkv_a_proj_with_mqa, Fp8Linear)
    assert torch.isfinite(_logits(model)).all()


def test_fp8_linear_equals_dequantized_matmul_with_padded_k_and_shards():
    gen = torch.Generator().manual_seed(0)
    stacked = StackedLinear(40, {"a": 32, "b": 16}, bias=True)  # K = 40: padded to 64
    with torch.no_grad():
        for p in stacked.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    layer = Fp8Linear.quantize(stacked, BLOCK)
    assert layer.weight.shape == (48, 64) and layer.split_sizes == [32, 16]
    x = torch.randn(5, 40, generator=gen)
    expected = fake_quant_activation(torch.nn.functional.pad(x, (0, 24)), 32)[:, :40] @ layer.dequantized_weight().t()
    torch.testing.assert_close(layer(x), expected + stacked.bias, atol=1e-4, rtol=1e-4)
    assert ((layer(x) - stacked(x)).norm() / stacked(x).norm()) < 0.05


def test_fp8_checkpoint_errors_are_clear():
    layer = Fp8Linear(64, 48, False, BLOCK, {"a": 16, "b": 32})
    with pytest.raises(ValueError, match="expected a"):
        layer.weight_loader(layer.weight, torch.zeros(16, 64), "a")
    with pytest.raises(ValueError, match="block"):
        layer.weight_loader(layer.weight_scale_inv, torch.ones(1, 2), "b")  # shard b starts at row 16
    with pytest.raises(ValueError, match="shape"):
        layer.weight_loader(layer.weight, torch.zeros(8, 64, dtype=FP8_DTYPE), "a")


class _Config:
    def __init__(self, quantization_config=None):
        if quantization_config is not None:
            self.quantization_config = quantization_config


def test_resolve_quantization():
    fp8_ckpt = _Config({"quant_method": "fp8", "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]})
    plan = resolve_quantization(fp8_ckpt, None)
    assert plan.from_checkpoint and plan.config == Fp8Config((128, 128), ("lm_head",))
    assert not resolve_quantization(fp8_ckpt, None, load_format="dummy").from_checkpoint  # drawn, then quantized
    assert resolve_quantization(_Config(), None) is None
    assert resolve_quantization(_Config(), "fp8") == resolve_quantization(_Config(), Fp8Config())
    with pytest.raises(ValueError, match="unsupported quantization"):
        resolve_quantization(_Config(), "awq")
    with pytest.raises(ValueError, match="'gptq' is not supported"):
        resolve_quantization(_Config({"quant_method": "gptq"}), None)
    with pytest.raises(ValueError, match="per-tensor"):
        resolve_quantization(_Config({"quant_method": "fp8"}), None)


def test_ignored_modules_stay_in_high_precision(tiny_ckpt):
    model, _ = load_model(
        tiny_ckpt("deepseek_v3"), dtype=torch.float32, quantization=Fp8Config(BLOCK, ("model.layers.0",))
    )
    assert isinstance(model.model.layers[0].self_attn.kv_b_proj, Linear)
    assert isinstance(model.model.layers[1].self_attn.kv_b_proj, Fp8Linear)


@pytest.mark.gpu
def test_fp8_layers_on_cuda_match_their_torch_path():
    from lmlang.runtime.layers.moe import FusedMoE
    from lmlang.runtime.quantization.fp8_moe import ref_fp8_experts

    gen = torch.Generator().manual_seed(0)
    linear = Linear(512, 384)
    experts = FusedMoE(8, 256, 384)
    with torch.no_grad():
        for p in (linear.weight, experts.w13_weight, experts.w2_weight):
            p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    x = torch.randn(33, 512, generator=gen)
    layer = Fp8Linear.quantize(linear, (128, 128))
    cuda_layer = Fp8Linear.quantize(linear.cuda(), (128, 128))
    expected = layer(x)
    torch.testing.assert_close(cuda_layer(x.cuda()).cpu(), expected, atol=2e-2 * expected.abs().max().item(), rtol=0)
    moe = Fp8FusedMoE.quantize(experts, (128, 128))
    hidden, weights = torch.randn(17, 256, generator=gen), torch.rand(17, 2, generator=gen)
    ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(17)])
    expected = ref_fp8_experts(hidden, moe.w13_weight, moe.w13_weight_scale_inv, moe.w2_weight,
                               moe.w2_weight_scale_inv, weights, ids, moe.block)
    got = moe.cuda()(hidden.cuda(), weights.cuda(), ids.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=2e-2 * expected.abs().max().item(), rtol=0)


def test_fp8_gemm_backend_is_validated_and_cpu_layers_keep_the_reference(monkeypatch):
    layer = Fp8Linear.quantize(Linear(64, 32), BLOCK)
    with pytest.raises(ValueError, match="backend"):
        layer.process_weights_after_loading("cutlass")
    monkeypatch.setenv(GEMM_BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match=GEMM_BACKEND_ENV):
        layer.process_weights_after_loading()
    for backend in ("cublas", "flashinfer"):
        monkeypatch.setenv(GEMM_BACKEND_ENV, backend)
        assert gemm_backend_from_env() == backend
        layer.process_weights_after_loading()  # CPU: nothing to lay out, the torch reference runs
        assert layer.weight_scale_cublas is None and layer.gemm_plan == GemmPlan()
    assert "weight_scale_cublas" not in layer.state_dict()
    monkeypatch.setenv(GEMM_BACKEND_ENV, "")
    assert gemm_backend_from_env() == "auto"


def test_gemm_plan_picks_a_backend_per_token_count_and_probes_only_what_it_may_use():
    probed = []

    def reasons(**unavailable):
        def reason(name):
            probed.append(name)
            return unavailable.get(name)
        return reason

    def picks(plan):
        ms = (FLASHINFER_MIN_TOKENS, CUBLAS_MIN_TOKENS - 1, CUBLAS_MIN_TOKENS, FLASHINFER_MAX_TOKENS,
              FLASHINFER_MAX_TOKENS + 1)
        return [plan.gemm_for(m) for m in ms]

    assert FLASHINFER_MIN_TOKENS < CUBLAS_MIN_TOKENS <= FLASHINFER_MAX_TOKENS  # the order the picks below assume
    assert picks(plan_gemm("auto", reasons())) == ["flashinfer", "flashinfer", "flashinfer", "flashinfer", "cublas"]
    assert sorted(probed) == ["cublas", "flashinfer"]
    assert picks(plan_gemm("auto", reasons(flashinfer="no SM90"))) == ["triton", "triton", "cublas", "cublas", "cublas"]
    assert picks(plan_gemm("auto", reasons(cublas="old torch"))) == ["flashinfer", "flashinfer", "flashinfer",
                                                                    "flashinfer", "triton"]
    assert picks(plan_gemm("auto", reasons(cublas="no", flashinfer="no"))) == ["triton"] * 5
    assert plan_gemm("auto", reasons()).cublas_min_tokens == CUBLAS_MIN_TOKENS
    probed.clear()
    assert picks(plan_gemm("triton", reasons())) == ["triton"] * 5 and probed == []
    assert picks(plan_gemm("cublas", reasons())) == ["cublas"] * 5 and probed == ["cublas"]
    probed.clear()
    flashinfer = plan_gemm("flashinfer", reasons())
    assert picks(flashinfer) == ["flashinfer"] * 5 and flashinfer.gemm_for(1 << 20) == "flashinfer"
    assert probed == ["flashinfer"]
    with pytest.raises(ValueError, match=r"'flashinfer' cannot run the \[576, 2048\] weight here: not SM90"):
        plan_gemm("flashinfer", reasons(flashinfer="not SM90"), weight="the [576, 2048] weight")
    with pytest.raises(ValueError, match="'cublas' cannot run"):
        plan_gemm("cublas", reasons(cublas="old torch"))
    with pytest.raises(ValueError, match="must be one of"):
        plan_gemm("cutlass", reasons())


def _bf16_cuda_layer(seed: int = 0) -> tuple[Fp8Linear, torch.Tensor]:
    """A [2112, 1400] FP8 layer with bias (K padded to 1408: 11 k blocks; N = 16.5 weight blocks)
    and x of 2 x 150 tokens, bf16 on CUDA."""
    gen = torch.Generator().manual_seed(seed)
    linear = Linear(1400, 2112, bias=True)
    with torch.no_grad():
        for p in linear.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    layer = Fp8Linear.quantize(linear.to("cuda", torch.bfloat16), (128, 128))
    return layer, torch.randn(2, 150, 1400, generator=gen).to("cuda", torch.bfloat16)


def _assert_graph_replays_like_eager(layer: Fp8Linear, x: torch.Tensor) -> None:
    graph, static_x = torch.cuda.CUDAGraph(), x.clone()
    layer(static_x)  # warm up (and compile) outside the capture, as the CUDA-graph runner does
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        static_y = layer(static_x)
    static_x.copy_(x.flip(-2))
    graph.replay()
    eager = layer(x.flip(-2))
    torch.testing.assert_close(static_y.float(), eager.float(), atol=1e-2 * eager.abs().max().item(), rtol=0)


@pytest.mark.gpu
def test_fp8_linear_cublas_backend_matches_triton_and_captures_in_a_cuda_graph():
    from lmlang.kernels.fp8_cublas import cublas_block_fp8_unsupported_reason

    reason = cublas_block_fp8_unsupported_reason("cuda", 2112, 1408)
    if reason is not None:
        pytest.skip(f"cuBLAS block FP8: {reason}")
    layer, x = _bf16_cuda_layer()
    small = x[:1, :3]
    layer.process_weights_after_loading("triton")
    triton_out, triton_small = layer(x), layer(small)
    layer.process_weights_after_loading("cublas")
    assert layer.weight_scale_cublas is not None and layer.gemm_plan == GemmPlan(cublas_min_tokens=1)
    for got, expected in ((layer(x), triton_out), (layer(small), triton_small)):
        scale = expected.abs().max().item()
        torch.testing.assert_close(got.float(), expected.float(), atol=2e-2 * scale, rtol=0)
    _assert_graph_replays_like_eager(layer, x)


@pytest.mark.gpu
def test_fp8_linear_auto_runs_flashinfer_in_its_token_range_and_captures_in_a_cuda_graph():
    from lmlang.kernels.fp8_flashinfer import flashinfer_block_fp8_unsupported_reason, fp8_block_gemm_flashinfer

    reason = flashinfer_block_fp8_unsupported_reason("cuda", 2112, 1408)
    if reason is not None:
        pytest.skip(f"FlashInfer block FP8: {reason}")
    layer, x = _bf16_cuda_layer(seed=1)
    small = x[:1, :3]
    layer.process_weights_after_loading("triton")
    triton_out, triton_small = layer(x), layer(small)
    layer.process_weights_after_loading("auto")
    assert layer.gemm_plan.gemm_for(FLASHINFER_MIN_TOKENS) == "flashinfer"
    assert layer.gemm_plan.gemm_for(FLASHINFER_MAX_TOKENS) == "flashinfer"
    out = layer(x)  # 300 tokens: FlashInfer's range
    x_padded = torch.nn.functional.pad(x.reshape(300, 1400), (0, 8))
    direct = fp8_block_gemm_flashinfer(x_padded, layer.weight, layer.weight_scale_inv) + layer.bias
    assert torch.equal(out.reshape(300, 2112), direct)
    scale = triton_out.abs().max().item()
    torch.testing.assert_close(out.float(), triton_out.float(), atol=2e-2 * scale, rtol=0)
    small_scale = triton_small.abs().max().item()
    torch.testing.assert_close(layer(small).float(), triton_small.float(), atol=2e-2 * small_scale, rtol=0)  # 3 tokens
    _assert_graph_replays_like_eager(layer, x[:, :20])  # 40 tokens
    layer.process_weights_after_loading("flashinfer")  # forced: every token count, down to 1
    got = layer(small)
    torch.testing.assert_close(got.float(), triton_small.float(), atol=2e-2 * small_scale, rtol=0)
    _assert_graph_replays_like_eager(layer, small)


def _w8a16_table(tmp_path, monkeypatch, entries: dict) -> None:
    from lmlang.kernels import gemv_fp8 as gemv_fp8_mod
    from lmlang.kernels.gemv import table_key

    table = {"device": "test", "shapes": {table_key(n, k, dtype): per_m for (n, k, dtype), per_m in entries.items()}}
    path = tmp_path / "gemv_fp8.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(gemv_fp8_mod.CONFIG_ENV, str(path))
    gemv_fp8_mod.gemv_fp8_config.cache_clear()


def test_small_batch_w8a16_path_is_chosen_only_where_the_table_has_a_fitting_entry(tmp_path, monkeypatch):
    from lmlang.kernels.gemv import GemvConfig
    from lmlang.kernels.gemv_fp8 import gemv_fp8_config
    from lmlang.runtime.quantization.fp8_linear import w8a16_config

    fma, wide = GemvConfig(block_n=8, block_k=64), GemvConfig(block_n=64, block_k=64)
    _w8a16_table(tmp_path, monkeypatch, {
        (48, 64, torch.bfloat16): {"2": fma.to_json(), "8": None},
        (32, 64, torch.bfloat16): {"1": wide.to_json()},  # strips of 64 rows: do not fit 32-row blocks
    })
    try:
        assert w8a16_config(1, 48, 64, torch.bfloat16, BLOCK, "any") == fma
        assert w8a16_config(2, 48, 64, torch.bfloat16, BLOCK, "any") == fma
        assert w8a16_config(3, 48, 64, torch.bfloat16, BLOCK, "any") is None  # W8A8 won at the next tuned M
        assert w8a16_config(9, 48, 64, torch.bfloat16, BLOCK, "any") is None  # past decode sizes
        assert w8a16_config(1, 48, 64, torch.float32, BLOCK, "any") is None  # no fp32 x
        assert w8a16_config(1, 48, 128, torch.bfloat16, BLOCK, "any") is None  # untuned shape
        assert w8a16_config(1, 32, 64, torch.bfloat16, BLOCK, "any") is None  # entry does not fit the block
        assert w8a16_config(1, 32, 64, torch.bfloat16, (64, 64), "any") == wide
        # CPU layers keep the torch reference of W8A8 whatever the table says
        gen = torch.Generator().manual_seed(1)
        linear = Linear(40, 48, bias=True)
        with torch.no_grad():
            for p in linear.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        layer = Fp8Linear.quantize(linear.to(torch.bfloat16), BLOCK)
        x = torch.randn(1, 40, generator=gen).to(torch.bfloat16)
        x_q = fake_quant_activation(torch.nn.functional.pad(x, (0, 24)), 32).float()[:, :40]
        expected = (x_q @ layer.dequantized_weight().float().t() + linear.bias.float()).to(torch.bfloat16)
        torch.testing.assert_close(layer(x), expected, atol=2e-2, rtol=2e-2)
    finally:
        gemv_fp8_config.cache_clear()


@pytest.mark.gpu
def test_fp8_linear_runs_w8a16_at_small_batch_on_gpu_and_captures_in_a_cuda_graph(tmp_path, monkeypatch):
    from lmlang.kernels.gemv import GemvConfig
    from lmlang.kernels.gemv_fp8 import gemv_fp8_config, ref_gemv_fp8

    gen = torch.Generator().manual_seed(0)
    linear = Linear(1400, 2112, bias=True)  # K padded to 1408
    with torch.no_grad():
        for p in linear.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    layer = Fp8Linear.quantize(linear.to("cuda", torch.bfloat16), (128, 128))
    layer.process_weights_after_loading("auto")
    x = torch.randn(3, 1400, generator=gen).to("cuda", torch.bfloat16)
    w8a8 = layer(x)
    config = GemvConfig(block_n=16, block_k=256, split_k=2, num_warps=8)
    _w8a16_table(tmp_path, monkeypatch, {(2112, 1408, torch.bfloat16): {"4": config.to_json()}})
    try:
        y = layer(x)
        expected = ref_gemv_fp8(torch.nn.functional.pad(x, (0, 8)), layer.weight, layer.weight_scale_inv,
                                (128, 128), layer.bias)
        scale = expected.abs().max().item()
        torch.testing.assert_close(y.float(), expected.float(), atol=1e-2 * scale, rtol=0)
        assert (y - expected).float().norm() < (w8a8 - expected).float().norm()  # no activation rounding
        assert torch.equal(layer(x[None])[0], y)  # leading dims are flattened
        graph, static_x = torch.cuda.CUDAGraph(), x.clone()
        layer(static_x)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            static_y = layer(static_x)
        static_x.copy_(x.flip(0))
        graph.replay()
        assert torch.equal(static_y, layer(x.flip(0)))
    finally:
        gemv_fp8_config.cache_clear()
