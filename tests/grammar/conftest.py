"""Shared fixtures: a small byte-level BPE tokenizer (trained locally) and its TokenizerInfo."""

import pytest

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
