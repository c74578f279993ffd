"""Acceptance: greedy tokens and logprobs equal transformers' in float32, batched with chunked prefill."""

import random

import pytest
import torch

from lmlang.runtime import Engine

LENGTHS = [1, 7, 16, 33, 64, 129, 200, 300]
NEW_TOKENS = 32


def _prompts(vocab: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in LENGTHS]


def _hf_reference(path: str, prompts: list) -> list:
    """(greedy output ids, output logprobs, prompt logprobs) per prompt from transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            gen = model.generate(x, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=0)
            new = gen.sequences[0, len(ids):].tolist()
            out_lp = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(gen.scores, new)]
            logits = model(x).logits[0].float()
            prompt_lp = torch.log_softmax(logits[:-1], -1).gather(1, x[0, 1:, None])[:, 0].tolist()
            out.append((new, out_lp, prompt_lp))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_greedy_and_logprobs_match_transformers(tiny_ckpt, kv_accounting, arch):
    path = tiny_ckpt(arch)
    prompts = _prompts(512)
    ref = _hf_reference(path, prompts)
    with Engine(path, dtype="float32", chunked_prefill_size=16) as engine:
        results = engine.generate(
            input_ids=prompts,
            sampling_params={"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True},
            return_logprob=True,
            logprob_start_len=0,
        )
        for res, (ids, out_lp, prompt_lp), prompt in zip(results, ref, prompts):
            assert res["output_ids"] == ids, f"prompt of {len(prompt)} tokens diverged"
            got_out = [lp for lp, _ in res["meta_info"]["output_token_logprobs"]]
            assert max(abs(a - b) for a, b in zip(got_out, out_lp)) < 1e-4
            got_in = res["meta_info"]["input_token_logprobs"]
            assert len(got_in) == len(prompt) and got_in[0][0] is None
            if prompt_lp:
                assert max(abs(a[0] - b) for a, b in zip(got_in[1:], prompt_lp)) < 1e-4
        stats = kv_accounting(engine)
        assert stats["kv_in_use"] == 0
