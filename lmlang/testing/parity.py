"""Reference outputs from transformers, for parity tests of the runtime against it (CPU, float32).

    prompts = parity_prompts(vocab_size=512)            # 8 prompts, 1..300 tokens, ids >= 3
    tokens = hf_greedy_tokens(path, prompts, 32)       # greedy continuations, eos ignored
"""

from __future__ import annotations

import random
from typing import Sequence

PROMPT_LENGTHS = (1, 7, 16, 33, 64, 129, 200, 300)


def parity_prompts(vocab_size: int, lengths: Sequence[int] = PROMPT_LENGTHS, seed: int = 0) -> list:
    """Random prompts of the given lengths over ids [3, vocab_size) (no special tokens)."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in lengths]


def hf_greedy_tokens(path: str, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list:
    """Each prompt's greedy continuation of exactly `max_new_tokens` tokens from transformers, in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    out = []
    with torch.no_grad():
        for ids in prompts:
            gen = model.generate(
                torch.tensor([list(ids)]), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=0,
            )
            out.append(gen[0, len(ids):].tolist())
    return out
