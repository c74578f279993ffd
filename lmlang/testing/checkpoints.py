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
  norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2); then the row's `random_buffers` (saved
  buffers such as DeepSeek-V3's `e_score_correction_bias`), N(0, 0.1^2), in name order.
  Same seed -> byte-identical safetensors.
- MoE rows use few experts (8, top-2) and DeepSeek rows one dense layer then MoE layers, so
  every code path of the family runs in a 2-layer model. `mtp_layers=k` (DeepSeek rows) appends
  k NextN / MTP layers the way DeepSeek ships them: `model.layers.{num_hidden_layers + i}.` with a
  full decoder layer plus `embed_tokens`, `enorm`, `hnorm`, `eh_proj`, `shared_head.norm` and
  `shared_head.head` (config `num_nextn_predict_layers = k`).
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
    random_buffers: tuple = ()  # suffixes of saved buffers to randomise (they are not parameters)
    supports_mtp: bool = False  # DeepSeek: may append NextN / MTP layers (`mtp_layers`)


_TINY_MLA = {  # DeepSeek-V2/V3: MLA with latent 32, rope 16; 8 experts top-2; layer 0 dense, layer 1 MoE
    **_TINY_SHAPE,
    # = num_attention_heads: transformers' DeepseekV3Config defaults it to 128 and its attention
    # divides the head count by it (MLA has no grouped KV heads)
    "num_key_value_heads": 4,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 16,
    "v_head_dim": 16,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "first_k_dense_replace": 1,
    "n_group": 4,
    "topk_group": 2,
}


TINY_ARCHS: dict[str, TinyArch] = {
    "llama": TinyArch("LlamaConfig", "LlamaForCausalLM", _TINY_SHAPE),
    "mistral": TinyArch("MistralConfig", "MistralForCausalLM", {**_TINY_SHAPE, "sliding_window": None}),
    "qwen2": TinyArch("Qwen2Config", "Qwen2ForCausalLM", {**_TINY_SHAPE, "tie_word_embeddings": True}),
    # head_dim differs from hidden_size / num_attention_heads (16), as in released Qwen3 models
    "qwen3": TinyArch("Qwen3Config", "Qwen3ForCausalLM", {**_TINY_SHAPE, "head_dim": 32}),
    "mixtral": TinyArch(
        "MixtralConfig", "MixtralForCausalLM",
        {**_TINY_SHAPE, "sliding_window": None, "num_local_experts": 8, "num_experts_per_tok": 2},
    ),
    # layer 0 dense (mlp_only_layers), layer 1 sparse
    "qwen3_moe": TinyArch(
        "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
        {
            **_TINY_SHAPE, "head_dim": 32, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "norm_topk_prob": True, "mlp_only_layers": [0],
        },
    ),
    # no q_lora_rank (V2-Lite's layout), group-limited softmax routing, YaRN rope
    "deepseek_v2": TinyArch(
        "DeepseekV2Config", "DeepseekV2ForCausalLM",
        {
            **_TINY_MLA, "q_lora_rank": None, "n_shared_experts": 2, "topk_method": "group_limited_greedy",
            "routed_scaling_factor": 2.0, "norm_topk_prob": False,
            "rope_scaling": {
                "rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 64,
                "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1,
            },
        },
        supports_mtp=True,
    ),
    # q_lora_rank 48, sigmoid routing with a correction bias, grouped top-2-sum, YaRN rope
    "deepseek_v3": TinyArch(
        "DeepseekV3Config", "DeepseekV3ForCausalLM",
        {
            **_TINY_MLA, "q_lora_rank": 48, "n_shared_experts": 1, "routed_scaling_factor": 2.5,
            "norm_topk_prob": True,
            "rope_scaling": {
                "rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 64,
                "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1,
            },
        },
        random_buffers=("e_score_correction_bias",),
        supports_mtp=True,
    ),
}


def make_tiny_checkpoint(
    path: str | os.PathLike,
    arch: str,
    seed: int = 0,
    *,
    max_shard_size: Optional[str] = None,
    mtp_layers: int = 0,
    **config_overrides: Any,
) -> str:
    """Writes a tiny `arch` checkpoint and its tokenizer to directory `path`; returns `path`.

    `config_overrides` replace config fields (e.g. `num_hidden_layers=1`,
    `rope_scaling={...}`, `tie_word_embeddings=True`). `max_shard_size` (e.g. "20KB")
    writes a sharded checkpoint with a `model.safetensors.index.json`. `mtp_layers` (DeepSeek
    archs, single-file checkpoints) appends NextN / MTP layer weights (see the module docstring).
    """
    import torch
    import transformers
    from transformers import AutoTokenizer

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(TINY_ARCHS)}")
    row = TINY_ARCHS[arch]
    if mtp_layers and not row.supports_mtp:
        raise ValueError(f"arch {arch!r} has no NextN / MTP layers; mtp_layers needs a DeepSeek arch")
    if mtp_layers and max_shard_size:
        raise ValueError("mtp_layers is only supported for single-file checkpoints (no max_shard_size)")
    if row.supports_mtp:
        config_overrides = {"num_nextn_predict_layers": mtp_layers, **config_overrides}
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
    generator = _init_weights(model, seed, row.random_buffers)
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = [ids(EOS_TOKEN), ids(ENDOFTEXT)]
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    with _progress_bars_off():
        model.save_pretrained(path, **kwargs)
    if mtp_layers:
        _append_mtp_layers(path, config, mtp_layers, generator)
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


def _random_value(name: str, shape: tuple, generator: Any) -> Any:
    import torch

    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if len(shape) >= 2:
        return noise * MATRIX_GAIN / shape[-1] ** 0.5
    return 1 + 0.1 * noise if "norm" in name else 0.1 * noise


def _init_weights(model: Any, seed: int, random_buffers: tuple = ()) -> Any:
    """Fills parameters, then the named buffers; returns the generator (for further draws)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            param.copy_(_random_value(name, tuple(param.shape), generator))
        for name, buffer in sorted(model.named_buffers()):
            if name.endswith(random_buffers) and random_buffers:
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator, dtype=torch.float32))
    return generator


def _append_mtp_layers(path: str, config: Any, count: int, generator: Any) -> None:
    """Adds `count` NextN / MTP layers, shaped like the last decoder layer, to model.safetensors."""
    from safetensors.torch import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    last = f"model.layers.{config.num_hidden_layers - 1}."
    hidden, vocab = config.hidden_size, config.vocab_size
    extras = {
        "embed_tokens.weight": (vocab, hidden),
        "enorm.weight": (hidden,),
        "hnorm.weight": (hidden,),
        "eh_proj.weight": (hidden, 2 * hidden),
        "shared_head.norm.weight": (hidden,),
        "shared_head.head.weight": (vocab, hidden),
    }
    for k in range(count):
        prefix = f"model.layers.{config.num_hidden_layers + k}."
        shapes = {prefix + n[len(last):]: tuple(t.shape) for n, t in tensors.items() if n.startswith(last)}
        shapes.update({prefix + n: shape for n, shape in extras.items()})
        for name in sorted(shapes):
            tensors[name] = _random_value(name, shapes[name], generator).to(tensors[last + "input_layernorm.weight"].dtype)
    save_file(tensors, file, metadata={"format": "pt"})
