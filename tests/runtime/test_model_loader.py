"""load_model: safetensors (single and sharded), dummy weights, dtypes, config facts, errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lmlang.runtime.model_loader import iterate_safetensors, load_model, model_facts, resolve_dtype
from lmlang.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def llama_path(tiny_ckpt):
    return tiny_ckpt("llama")  # seed 0


def _state(model: torch.nn.Module) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_sharded_checkpoint_loads_the_same_weights(llama_path, tmp_path):
    sharded = make_tiny_checkpoint(tmp_path, "llama", seed=0, max_shard_size="40KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    assert not os.path.exists(os.path.join(sharded, "model.safetensors"))
    single, _ = load_model(llama_path, dtype=torch.float32)
    split, _ = load_model(sharded, dtype=torch.float32)
    a, b = _state(single), _state(split)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_dummy_weights_are_seeded_and_shaped_like_the_config(llama_path):
    real, _ = load_model(llama_path, dtype=torch.float32)
    first, _ = load_model(llama_path, dtype=torch.float32, load_format="dummy", seed=7)
    again, _ = load_model(llama_path, dtype=torch.float32, load_format="dummy", seed=7)
    other, _ = load_model(llama_path, dtype=torch.float32, load_format="dummy", seed=8)
    a, b, c = _state(first), _state(again), _state(other)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in _state(real).items()}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.qkv_proj.weight"], c["model.layers.0.self_attn.qkv_proj.weight"])
    logits = first.compute_logits(torch.randn(3, first.config.hidden_size))
    assert logits.shape == (3, 512) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_bfloat16_load_keeps_float32_logits(llama_path):
    model, _ = load_model(llama_path, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    hidden = torch.randn(2, model.config.hidden_size, dtype=torch.bfloat16)
    assert model.compute_logits(hidden).dtype == torch.float32
    reference, _ = load_model(llama_path, dtype=torch.float32)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.float(), q, atol=0, rtol=2**-8, msg=name)


def test_resolve_dtype():
    class Config:
        dtype = "bfloat16"

    assert resolve_dtype("auto", Config()) is torch.bfloat16
    assert resolve_dtype("auto", None) is torch.float32
    assert resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="unsupported dtype"):
        resolve_dtype(torch.float64)


def test_model_facts(llama_path):
    _, config = load_model(llama_path, dtype=torch.float32, load_format="dummy")
    facts = model_facts(llama_path, config)
    assert facts.context_length == 2048
    assert facts.eos_token_ids == (2, 0)  # config's <|im_end|>, then generation_config's <|endoftext|>
    assert facts.vocab_size == 512


def test_unsupported_architecture_is_a_clear_error(llama_path, tmp_path):
    with open(os.path.join(llama_path, "config.json")) as f:
        config = json.load(f)
    config["architectures"] = ["FancyNewForCausalLM"]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="unsupported model architecture 'FancyNewForCausalLM'.*LlamaForCausalLM"):
        load_model(str(tmp_path), dtype=torch.float32)


def test_missing_or_unknown_checkpoint_tensors_are_errors(llama_path):
    model, _ = load_model(llama_path, dtype=torch.float32, load_format="dummy")
    weights = list(iterate_safetensors(llama_path))
    without_v = [(n, t) for n, t in weights if n != "model.layers.1.self_attn.v_proj.weight"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.qkv_proj\.weight\['v'\]"):
        model.load_weights(without_v)
    with pytest.raises(ValueError, match="'model.layers.0.extra.weight' matches no parameter"):
        model.load_weights(weights + [("model.layers.0.extra.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="checkpoint tensor has shape"):
        model.load_weights([("model.norm.weight", torch.zeros(3))])


def test_missing_checkpoint_files_and_bad_load_format(tmp_path, llama_path):
    with pytest.raises(ValueError, match="load_format"):
        load_model(llama_path, dtype=torch.float32, load_format="pt")
    for name in ("config.json", "generation_config.json"):
        with open(os.path.join(llama_path, name)) as src, open(tmp_path / name, "w") as dst:
            dst.write(src.read())
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_model(str(tmp_path), dtype=torch.float32)
