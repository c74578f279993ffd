"""GPU acceptance: bf16 engine outputs against transformers on the same GPU.

The bar as the issue states it (SGLang's): prompt and output logprobs within 5e-2 of transformers
in bf16; greedy outputs identical for at least 90% of prompts; where a prompt's output diverges,
the two tokens chosen at the first divergence within 5e-2 in transformers' logprobs (a near tie).
Every case prints those figures.

That bar presumes a trained model: confident next-token distributions and tame activations.
`test_bf16_trained_meets_the_bar` holds the engine to it, as stated, on tiny checkpoints trained
for a few seconds on the GPU (`lmlang.testing.train_tiny_checkpoint`: Python source, logits kept
within about 3.5 of zero), with prompts from held-out source files of the same distribution.

Tiny random checkpoints have neither property. As made (`gain2`: matrices at gain 2) their
attention logits have a standard deviation near 4, so one bf16 rounding anywhere moves logprobs by
tenths; halved (`gain1`) their logits are flat, so the top two tokens are often within one bf16
step of each other and greedy decoding follows the rounding. On both, transformers' own bf16
forward misses its float32 forward as much as we miss it (run on an H200: greedy identical to
float32 for 6/16 prompts, logprob errors up to 0.16 on qwen3-gain2).

So on random checkpoints (`test_bf16_no_worse_than_transformers`, which reaches shapes and value
ranges the trained ones do not) what is asserted is that the engine is no worse than
transformers' bf16, measured against transformers in float32 (TF32 off):
- worst prompt / output logprob errors within 1.5x (+0.02) of transformers-bf16's;
- on `gain1`, every greedy divergence from float32 a near tie (the two tokens within 5e-2 in the
  float32 model's logprobs), and every divergence from transformers-bf16 one too (within 5e-2, or
  the two logits within one bf16 step: transformers' own resolution);
- on `gain2`, divergences from float32 no wider than transformers-bf16's (1.5x + 0.02).
How many prompts stay identical is printed, not asserted: with every divergence a near tie it
counts coin flips (16 prompts; on gain1 qwen2 transformers-bf16 kept 14 identical to float32
where we kept 10, both diverging only at gaps under 0.04).
Tiny checkpoints use head_dim 128, as the 8B benchmarks do.
"""

import math
import random

import pytest
import torch

from lmlang.runtime import Engine

pytestmark = pytest.mark.gpu

LENGTHS = [1, 2, 7, 16, 33, 64, 100, 129, 200, 255, 256, 300, 411, 512, 777, 1000]
NEW_TOKENS = 32
TOL = 5e-2
SHAPE = dict(hidden_size=512, num_attention_heads=4, num_key_value_heads=2, intermediate_size=1024)
TRAINED = dict(SHAPE, head_dim=128, num_hidden_layers=4, steps=400, batch_size=16, seq_len=1024)
MIN_IDENTICAL = math.ceil(0.9 * len(LENGTHS))


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


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """`trained_ckpt(arch)`: a tiny checkpoint (head_dim 128, 4 layers) trained on the GPU."""
    from lmlang.testing import train_tiny_checkpoint

    made: dict = {}

    def get(arch: str) -> str:
        if arch not in made:
            made[arch] = train_tiny_checkpoint(tmp_path_factory.mktemp(f"trained_{arch}"), arch, device="cuda",
                                               **TRAINED)
            torch.cuda.empty_cache()
        return made[arch]

    return get


def held_out_prompts(path: str) -> list:
    """One prompt per LENGTHS entry, each a window of held-out Python source at a seeded offset."""
    from transformers import AutoTokenizer

    from lmlang.testing.train_tiny import python_source_ids

    text = python_source_ids(AutoTokenizer.from_pretrained(path), "held_out", 200_000)
    rng = random.Random(0)
    starts = [rng.randrange(0, len(text) - n) for n in LENGTHS]
    return [text[s : s + n] for s, n in zip(starts, LENGTHS)]


def bf16_step(x: float) -> float:
    """The gap between a bf16 number of magnitude |x| and the next one."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - 7) if x else 0.0


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
            raw = torch.stack([s[0].float() for s in gen.scores]).cpu()
            logits = model(x).logits[0].float()
            prompt_lp = torch.log_softmax(logits[:-1], -1).gather(1, x[0, 1:, None])[:, 0].tolist()
            out.append(dict(ids=gen.sequences[0, len(ids):].tolist(), steps=torch.log_softmax(raw, -1), raw=raw,
                            prompt_lp=prompt_lp))
    del model
    torch.cuda.empty_cache()
    return out


def compare(got: list, ref: list) -> dict:
    """The bar's figures for outputs `got` (same layout as `ref`) against reference `ref`."""
    identical, worst_prompt, worst_out, gaps, not_ties = 0, 0.0, 0.0, [], 0
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
            a, b = r["raw"][same, r["ids"][same]].item(), r["raw"][same, g["ids"][same]].item()
            gaps.append(round(abs(a - b), 4))  # = the logprob gap: one normalizer
            not_ties += not (abs(a - b) < TOL or abs(a - b) <= bf16_step(max(abs(a), abs(b))))
    return dict(identical=identical, worst_prompt_lp=round(worst_prompt, 4), worst_output_lp=round(worst_out, 4),
                divergence_gaps=gaps, not_ties=not_ties)


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


TRAINED_CONFIGS = [
    pytest.param("llama", {}, id="trained-llama-flashinfer-graphs"),
    pytest.param("qwen2", {}, id="trained-qwen2-flashinfer-graphs"),
    pytest.param("qwen3", {}, id="trained-qwen3-flashinfer-graphs"),
    pytest.param("llama", {"page_size": 16, "chunked_prefill_size": 256}, id="trained-llama-flashinfer-page16"),
    pytest.param("llama", {"attention_backend": "triton"}, id="trained-llama-triton-graphs"),
]


@pytest.mark.parametrize("arch,engine_args", TRAINED_CONFIGS)
def test_bf16_trained_meets_the_bar(trained_ckpt, arch, engine_args):
    path = trained_ckpt(arch)
    prompts = held_out_prompts(path)
    ref = hf_reference(path, prompts, torch.bfloat16)
    got = compare(engine_outputs(path, prompts, engine_args), ref)
    widest = max(got["divergence_gaps"], default=0.0)
    print(f"trained {arch} {engine_args}: identical {got['identical']}/{len(prompts)}, "
          f"max prompt-logprob diff {got['worst_prompt_lp']}, max output-logprob diff {got['worst_output_lp']}, "
          f"widest divergence gap {widest} {got['divergence_gaps']}")
    assert got["worst_prompt_lp"] <= TOL, got
    assert got["worst_output_lp"] <= TOL, got
    assert got["identical"] >= MIN_IDENTICAL, got
    assert widest <= TOL, got


CONFIGS = [
    pytest.param("llama", {}, 1, id="gain1-llama-flashinfer-graphs"),
    pytest.param("qwen2", {}, 1, id="gain1-qwen2-flashinfer-graphs"),
    pytest.param("qwen3", {}, 1, id="gain1-qwen3-flashinfer-graphs"),
    pytest.param("llama", {"page_size": 16, "chunked_prefill_size": 256}, 1, id="gain1-llama-flashinfer-page16"),
    pytest.param("llama", {"attention_backend": "triton"}, 1, id="gain1-llama-triton-graphs"),
    pytest.param("llama", {}, 2, id="gain2-llama-flashinfer-graphs"),
    pytest.param("qwen3", {}, 2, id="gain2-qwen3-flashinfer-graphs"),
]


@pytest.mark.parametrize("arch,engine_args,gain", CONFIGS)
def test_bf16_no_worse_than_transformers(gpu_ckpt, arch, engine_args, gain):
    path = gpu_ckpt(arch, gain)
    prompts = _prompts(512)
    assert not torch.backends.cuda.matmul.allow_tf32  # float32 means float32 here
    truth = hf_reference(path, prompts, torch.float32)
    hf_bf16 = hf_reference(path, prompts, torch.bfloat16)
    theirs = compare(as_outputs(hf_bf16), truth)
    outputs = engine_outputs(path, prompts, engine_args)
    ours = compare(outputs, truth)
    bar = compare(outputs, hf_bf16)
    print(f"gain{gain} {arch} {engine_args}:\n  the bar, vs transformers-bf16: {bar}\n"
          f"  vs float32 transformers: ours {ours}\n  vs float32 transformers: transformers-bf16 {theirs}")
    for key in ("worst_prompt_lp", "worst_output_lp"):
        assert ours[key] <= 1.5 * theirs[key] + 0.02, key
    if gain == 1:  # tame activations: every divergence is a near tie
        assert all(gap < TOL for gap in ours["divergence_gaps"]), ours["divergence_gaps"]
        assert bar["not_ties"] == 0
    else:
        assert max(ours["divergence_gaps"], default=0) <= 1.5 * max(theirs["divergence_gaps"], default=0) + 0.02
