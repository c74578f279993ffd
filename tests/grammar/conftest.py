"""Shared fixtures: a small byte-level BPE tokenizer (trained locally) and its TokenizerInfo, and
helpers for constrained generation (`gen` fixture: `gen.allowed_tokens`, `gen.random_generation`)."""

import random
import types

import numpy as np
import pytest

from lmlang.grammar import allocate_bitmask, bitmask_to_bool

EOS_ID = 2  # <|im_end|> in lmlang.testing's tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from lmlang.testing.tokenizer import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("grammar_tok"), vocab_size=1024)


@pytest.fixture(scope="session")
def raw_tokenizer(tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(f"{tokenizer_dir}/tokenizer.json")


@pytest.fixture(scope="session")
def info(raw_tokenizer):
    """The vocabulary as a grammar sees it; logits are wider than the tokenizer (1030 > 1024)."""
    from lmlang.grammar import TokenizerInfo

    return TokenizerInfo.from_huggingface(raw_tokenizer, vocab_size=1030, eos_token_ids=[EOS_ID])


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


@pytest.fixture(scope="session")
def gen():
    return types.SimpleNamespace(allowed_tokens=allowed_tokens, random_generation=random_generation)
