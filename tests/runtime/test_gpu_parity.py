"""GPU acceptance: bf16 engine outputs against transformers on the same GPU.

The bar (SGLang's): prompt and output logprobs within 5e-2 of transformers in bf16; greedy outputs
identical for at least 90% of prompts, and where a prompt's output diverges, the two tokens chosen
at the first divergence within 5e-2 of each other in transformers' logprobs (a near tie).

That bar presumes a well-conditioned model. The standard tiny checkpoints (`make_tiny_checkpoint`,
matrices at gain 2 so that greedy text varies) are not: their attention logits have a standard
deviation near 4, so one bf16 rounding anywhere moves logprobs by tenths, and transformers' own
bf16 forward misses its float32 forward by about as much as we do. So:
- `gain1` checkpoints (every matrix of the tiny checkpoint halved) are held to the bar as stated;
- `gain2` checkpoints (as made) are held to "no worse than transformers' bf16": against the float32
  forward of transformers (TF32 off), our worst prompt / output logprob errors must stay within
  1.5x (+0.02) of transformers-bf16's, and our greedy outputs must match float32's for at least as
  many prompts, less two.
Every case prints its figures. Tiny checkpoints use head_dim 128, as the 8B benchmarks do.
"""

import random

import pytest
import torch

from lmlang.runtime import Engine

pytestmark = pytest.mark.gpu

LENGTHS = [1, 2, 7, 16, 33, 64, 100, 129, 200, 255, 256, 300, 411, 512, 777, 1000]
NEW_TOKENS = 32
TOL = 5e-2
SHAPE = dict(hidden_size=512, num_attention_heads=4, num_key_value_heads=2, intermediate_size=1024)


@pytest.fixture(scope="module")
def gpu_ckpt(tmp_path_factory):
    """`gpu_ckpt(arch, gain)`: a tiny checkpoint with head_dim 128; gain 1 halves every matrix."""
    from safetensors.torch import load_file, save_file

    from lmlang.testing import make_tiny_checkpoint

    made: dict = {}

    def get(arch: str, gain: int) -> str:
        if (arch, gain) not in made:
            extra = {"head_dim": 128} if arch == "qwen3" else {}
            path = make_tiny_checkpoint(tmp_path_factory.mktemp(f"gpu_{arch}_{gain}"), arch, **SHAPE, **extra)
            if gain == 1:
                weights = load_file(f"{path}/model.safetensors")
                save_file({k: v * 0.5 if v.dim() == 2 else v for k, v in weights.items()},
                          f"{path}/model.safetensors", metadata={"format": "pt"})
            made[arch, gain] = path
        return made[arch, gain]

    return get


def _prompts(vocab: int) -> list:
    rng = random.Random(0)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in LENGTHS]


def hf_reference(path: str, prompts: list, dtype: torch.dtype) -> list:
    """Per prompt from transformers on the GPU: greedy ids, per-step log-softmax rows
    [NEW_TOKENS, vocab], prompt logprobs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).cuda().eval()
    model.generation_config.eos_token_id = None
    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids], device="cuda")
            gen = model.generate(x, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=0)
            steps = torch.log_softmax(torch.stack([s[0].float() for s in gen.scores]), -1).cpu()
            logits = model(x).logits[0].float()
            prompt_lp = torch.log_softmax(logits[:-1], -1).gather(1, x[0, 1:, None])[:, 0].tolist()
            out.append(dict(ids=gen.sequences[0, len(ids):].tolist(), steps=steps, prompt_lp=prompt_lp))
    del model
    torch.cuda.empty_cache()
    return out


def compare(got: list, ref: list) -> dict:
    """The bar's figures for outputs `got` (same layout as `ref`) against reference `ref`."""
    identical, worst_prompt, worst_out, gaps = 0, 0.0, 0.0, []
    for g, r in zip(got, ref):
        if r["prompt_lp"]:
            worst_prompt = max(worst_prompt, max(abs(a - b) for a, b in zip(g["prompt_lp"], r["prompt_lp"])))
        same = 0
        while same < NEW_TOKENS and g["ids"][same] == r["ids"][same]:
            same += 1
        for j in range(min(same + 1, NEW_TOKENS)):  # the divergence step's context is still shared
            worst_out = max(worst_out, abs(g["out_lp"][j] - r["steps"][j, g["ids"][j]].item()))
        if same == NEW_TOKENS:
            identical += 1
        else:
            gaps.append(round(abs(r["steps"][same, r["ids"][same]].item() - r["steps"][same, g["ids"][same]].item()), 4))
    return dict(identical=identical, worst_prompt_lp=round(worst_prompt, 4), worst_output_lp=round(worst_out, 4),
                divergence_gaps=gaps)


def as_outputs(ref: list) -> list:
    """A reference's own outputs in the layout `compare` reads for `got`."""
    return [dict(ids=r["ids"], prompt_lp=r["prompt_lp"],
                 out_lp=[r["steps"][j, t].item() for j, t in enumerate(r["ids"])]) for r in ref]


def engine_outputs(path: str, prompts: list, engine_args: dict) -> list:
    args = dict(device="cuda", dtype="bfloat16", chunked_prefill_size=128, max_total_tokens=65536) | engine_args
    with Engine(path, **args) as engine:
        results = engine.generate(
            input_ids=prompts,
            sampling_params={"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True},
            return_logprob=True,
            logprob_start_len=0,
        )
        stats = engine.stats()
        assert stats["kv_free"] + stats["kv_cached"] + stats["kv_in_use"] == stats["kv_total"]
        assert stats["kv_in_use"] == 0
    return [dict(ids=r["output_ids"], prompt_lp=[lp for lp, _ in r["meta_info"]["input_token_logprobs"][1:]],
                 out_lp=[lp for lp, _ in r["meta_info"]["output_token_logprobs"]]) for r in results]


CONFIGS = [
    pytest.param("llama", {}, id="llama-flashinfer-graphs"),
    pytest.param("qwen2", {}, id="qwen2-flashinfer-graphs"),
    pytest.param("qwen3", {}, id="qwen3-flashinfer-graphs"),
    pytest.param("llama", {"page_size": 16, "chunked_prefill_size": 256}, id="llama-flashinfer-page16"),
    pytest.param("llama", {"attention_backend": "triton"}, id="llama-triton-graphs"),
]


@pytest.mark.parametrize("arch,engine_args", CONFIGS)
def test_bf16_matches_transformers_gain1(gpu_ckpt, arch, engine_args):
    path = gpu_ckpt(arch, 1)
    prompts = _prompts(512)
    ref = hf_reference(path, prompts, torch.bfloat16)
    got = compare(engine_outputs(path, prompts, engine_args), ref)
    print(f"gain1 {arch} {engine_args}: {got}")
    assert got["worst_prompt_lp"] < TOL and got["worst_output_lp"] < TOL
    assert got["identical"] >= 0.9 * len(prompts)
    assert all(gap < TOL for gap in got["divergence_gaps"])


@pytest.mark.parametrize("arch,engine_args", [CONFIGS[0], CONFIGS[2]])
def test_bf16_no_worse_than_transformers_gain2(gpu_ckpt, arch, engine_args):
    path = gpu_ckpt(arch, 2)
    prompts = _prompts(512)
    assert not torch.backends.cuda.matmul.allow_tf32  # float32 means float32 here
    truth = hf_reference(path, prompts, torch.float32)
    hf_bf16 = hf_reference(path, prompts, torch.bfloat16)
    theirs = compare(as_outputs(hf_bf16), truth)
    outputs = engine_outputs(path, prompts, engine_args)
    ours = compare(outputs, truth)
    print(f"gain2 {arch} {engine_args}: vs float32 transformers: ours {ours}; transformers-bf16 {theirs}")
    print(f"gain2 {arch}: the bar vs transformers-bf16: {compare(outputs, hf_bf16)}")
    for key in ("worst_prompt_lp", "worst_output_lp"):
        assert ours[key] <= 1.5 * theirs[key] + 0.02, key
    assert ours["identical"] >= theirs["identical"] - 2
