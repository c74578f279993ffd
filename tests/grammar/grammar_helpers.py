"""Test helpers: random constrained generation and mask reading."""

from __future__ import annotations

import random

import numpy as np

from lmlang.grammar import allocate_bitmask, bitmask_to_bool


def allowed_tokens(matcher, vocab_size: int) -> np.ndarray:
    buf = allocate_bitmask(1, vocab_size)
    matcher.fill_bitmask(buf, 0)
    return bitmask_to_bool(buf, 0, vocab_size)


def random_generation(matcher, info, rng: random.Random, max_tokens: int = 40, stop_bias: float = 0.3):
    """Sample uniformly among allowed tokens (taking eos with probability `stop_bias` when allowed)
    until eos or `max_tokens`; returns (text bytes, token ids, terminated)."""
    out, tokens = b"", []
    for _ in range(max_tokens):
        allowed = allowed_tokens(matcher, info.vocab_size)
        eos = [e for e in info.eos_token_ids if allowed[e]]
        if eos and (rng.random() < stop_bias or allowed.sum() == len(eos)):
            assert matcher.accept(eos[0])
            return out, tokens, True
        choices = [t for t in np.nonzero(allowed)[0].tolist() if t not in info.eos_token_ids]
        if not choices:
            return out, tokens, False
        t = rng.choice(choices)
        assert matcher.accept(t), f"token {t} was in the mask but not accepted"
        tokens.append(t)
        out += info.token_bytes[t]
    return out, tokens, False
