"""Final hidden states -> float32 logits over the model's vocabulary."""

from __future__ import annotations

import torch

from lmlang.runtime.layers.linear import linear
from lmlang.runtime.layers.vocab import LMHead


def compute_logits(hidden: torch.Tensor, lm_head: LMHead) -> torch.Tensor:
    """hidden: [n, hidden_size] -> logits [n, vocab_size] float32.

    The matmul runs in the model's dtype (as Hugging Face does) and is then widened, so that
    sampling, softmax and logprobs downstream always see float32.
    """
    return linear(hidden, lm_head.weight).float()
