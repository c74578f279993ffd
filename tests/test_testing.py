"""lmlang.testing: the local BPE tokenizer and tiny checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmlang.testing import make_tiny_checkpoint, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer(tmp_path_factory.mktemp("tok")))


def test_tokenizer_round_trips_any_text(tokenizer):
    assert tokenizer.is_fast and len(tokenizer) == 512
    for text in ["Hello world!", '{"name": "Alice", "score": 12.5, "ok": true}', "ünïcödé 日本語 🙂\n\tend  "]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode("The answer is")) < len("The answer is")  # merges were learned


def test_tokenizer_special_tokens_and_chat_template(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|endoftext|>", "<|im_end|>", "<|endoftext|>")
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=True)  # nothing added
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with_reply = messages + [{"role": "assistant", "content": "Hello."}]
    assert tokenizer.apply_chat_template(with_reply, tokenize=False).endswith("<|im_start|>assistant\nHello.<|im_end|>\n")
    ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2  # special tokens are single tokens in text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_make_tokenizer_is_deterministic(tmp_path):
    from lmlang.testing.tokenizer import _trained_tokenizer_json

    with open(os.path.join(make_tokenizer(tmp_path / "a", vocab_size=300), "tokenizer.json")) as f:
        saved = f.read()
    assert saved == _trained_tokenizer_json.__wrapped__(300)  # trained again, past the in-process cache
    with pytest.raises(ValueError, match="vocab_size must exceed 259"):
        make_tokenizer(tmp_path / "c", vocab_size=100)


def test_tiny_checkpoint_is_deterministic_per_seed(tmp_path):
    def weights(name, seed):
        path = make_tiny_checkpoint(tmp_path / name, "qwen3", seed=seed, num_hidden_layers=1)
        with open(os.path.join(path, "model.safetensors"), "rb") as f:
            return f.read()

    assert weights("a", 0) == weights("b", 0)
    assert weights("a", 0) != weights("c", 1)


def test_tiny_checkpoint_config_matches_tokenizer_and_overrides(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    path = make_tiny_checkpoint(tmp_path, "llama", num_hidden_layers=1, tie_word_embeddings=True)
    config, tok = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.tie_word_embeddings, config.hidden_size) == (1, True, 64)
    assert config.vocab_size == len(tok)
    assert (config.bos_token_id, config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    with open(os.path.join(path, "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == [2, 0]
    with pytest.raises(ValueError, match="unknown arch 'gpt2'"):
        make_tiny_checkpoint(tmp_path / "x", "gpt2")


def test_importing_lmlang_testing_is_cheap():
    code = "import sys, lmlang.testing\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


TINY_TRAIN = dict(steps=60, batch_size=8, seq_len=64, lr=1e-2, hidden_size=64, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, intermediate_size=128, num_hidden_layers=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from lmlang.testing import train_tiny_checkpoint

    return train_tiny_checkpoint(tmp_path_factory.mktemp("trained"), "llama", **TINY_TRAIN)


def _loss_and_max_logit(model, ids):
    """Mean next-token loss over windows of 64 tokens (the training length), and the largest |logit|."""
    import torch

    with torch.no_grad():
        x = torch.tensor(ids).view(-1, 64)
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        return loss.item(), logits.abs().max().item()


def test_trained_checkpoint_learns_the_text_and_keeps_logits_bounded(trained):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lmlang.testing.train_tiny import python_source_ids

    tok = AutoTokenizer.from_pretrained(trained)
    held_out = python_source_ids(tok, "held_out", 1024)
    assert len(held_out) == 1024 and held_out != python_source_ids(tok, "train", 1024)
    model = AutoModelForCausalLM.from_pretrained(trained).eval()
    assert model.config.head_dim == 32 and model.config.num_hidden_layers == 1
    torch.manual_seed(0)
    untrained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(trained)).eval()
    # text it never saw, from the same distribution, is far better predicted than by chance (ln 512 = 6.24)
    loss, max_logit = _loss_and_max_logit(model, held_out)
    assert loss < _loss_and_max_logit(untrained, held_out)[0] - 1.5
    assert max_logit < 7.0  # the bound is 3.5; 60 steps enforce it only roughly


def test_trained_checkpoint_is_deterministic_and_checks_arguments(trained, tmp_path):
    from lmlang.testing import train_tiny_checkpoint
    from lmlang.testing.train_tiny import python_source_ids

    again = train_tiny_checkpoint(tmp_path / "again", "llama", **TINY_TRAIN)
    with open(os.path.join(trained, "model.safetensors"), "rb") as a, open(os.path.join(again, "model.safetensors"), "rb") as b:
        assert a.read() == b.read()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_tiny_checkpoint(tmp_path / "x", "llama", steps=0)
    with pytest.raises(ValueError, match="split must be"):
        python_source_ids(None, "test", 10)
