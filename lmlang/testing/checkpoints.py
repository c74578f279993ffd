"""Tiny Hugging Face checkpoints made on the fly, for tests (no model hub).

`make_tiny_checkpoint(path, arch)` writes, into one directory, the test tokenizer
(`make_tokenizer`) and a randomly initialised transformers model of family `arch` saved with
`save_pretrained` (config.json, generation_config.json, safetensors). Rows of `TINY_ARCHS`
say which transformers classes build each family and its default tiny shape; a new family is
a new row.

Conventions:
- `vocab_size` = the tokenizer's length exactly (512): no padding rows, so every logit is a
  real token. Override `vocab_size` to test padded vocabularies.
- bos = pad = `<|endoftext|>` (id 0); config `eos_token_id` = `<|im_end|>` (id 2), and
  generation_config.json lists both `<|im_end|>` and `<|endoftext|>` as eos (as Qwen does).
- Weights come from one `torch.Generator` seeded with `seed`, filled in parameter-name order:
  matrices normal with std MATRIX_GAIN / sqrt(fan_in) (well above Hugging Face's 0.02, so that
  greedy text is varied rather than one repeated token),
  norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2). Same seed -> byte-identical safetensors.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

from lmlang.testing.tokenizer import BOS_TOKEN, EOS_TOKEN, ENDOFTEXT, PAD_TOKEN, make_tokenizer

MATRIX_GAIN = 2.0
_TINY_SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
}


@dataclass(frozen=True)
class TinyArch:
    config_class: str  # name in the `transformers` namespace
    model_class: str
    config: Mapping[str, Any] = field(default_factory=dict)  # defaults, before the caller's overrides


TINY_ARCHS: dict[str, TinyArch] = {
    "llama": TinyArch("LlamaConfig", "LlamaForCausalLM", _TINY_SHAPE),
    "mistral": TinyArch("MistralConfig", "MistralForCausalLM", {**_TINY_SHAPE, "sliding_window": None}),
    "qwen2": TinyArch("Qwen2Config", "Qwen2ForCausalLM", {**_TINY_SHAPE, "tie_word_embeddings": True}),
    # head_dim differs from hidden_size / num_attention_heads (16), as in released Qwen3 models
    "qwen3": TinyArch("Qwen3Config", "Qwen3ForCausalLM", {**_TINY_SHAPE, "head_dim": 32}),
}


def make_tiny_checkpoint(
    path: str | os.PathLike,
    arch: str,
    seed: int = 0,
    *,
    max_shard_size: Optional[str] = None,
    **config_overrides: Any,
) -> str:
    """Writes a tiny `arch` checkpoint and its tokenizer to directory `path`; returns `path`.

    `config_overrides` replace config fields (e.g. `num_hidden_layers=1`,
    `rope_scaling={...}`, `tie_word_embeddings=True`). `max_shard_size` (e.g. "20KB")
    writes a sharded checkpoint with a `model.safetensors.index.json`.
    """
    import torch
    import transformers
    from transformers import AutoTokenizer

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(TINY_ARCHS)}")
    row = TINY_ARCHS[arch]
    path = make_tokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer.convert_tokens_to_ids
    config = getattr(transformers, row.config_class)(
        **{
            **row.config,
            "vocab_size": len(tokenizer),
            "bos_token_id": ids(BOS_TOKEN),
            "eos_token_id": ids(EOS_TOKEN),
            "pad_token_id": ids(PAD_TOKEN),
            **config_overrides,
        }
    )
    with torch.random.fork_rng(devices=[]):  # HF's own init draws from the global RNG; leave it as it was
        model = getattr(transformers, row.model_class)(config)
    _init_weights(model, seed)
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = [ids(EOS_TOKEN), ids(ENDOFTEXT)]
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    with _progress_bars_off():
        model.save_pretrained(path, **kwargs)
    return path


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _init_weights(model: Any, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim >= 2:
                param.copy_(noise * MATRIX_GAIN / param.shape[-1] ** 0.5)
            elif "norm" in name:
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
