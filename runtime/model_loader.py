"""Builds a model from a Hugging Face checkpoint directory.

`load_model` reads `config.json` (transformers.AutoConfig), picks the class registered for
`config.architectures[0]`, constructs it directly on `device` in `dtype`, and fills it from
safetensors (`model.safetensors`, or the shards listed by `model.safetensors.index.json`) or,
with `load_format="dummy"`, with seeded random values (same seed, device and dtype -> same
weights; for benchmarks and tests that need a real config's shapes, not its weights).

`model_facts` gives the engine what it needs from the config: context length, eos ids and
vocabulary size.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Union

import torch
from torch import nn

from lmlang.runtime.models.registry import get_model_class

DTypeLike = Union[torch.dtype, str]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOAD_FORMATS = ("auto", "dummy")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DUMMY_WEIGHT_RANGE = 0.02  # dummy weights are uniform in [-r, r]; norm weights are 1


def resolve_dtype(dtype: DTypeLike, config: Any = None) -> torch.dtype:
    """A torch dtype from a dtype or one of "auto", "float32", "bfloat16", "float16".

    "auto" takes the config's `dtype` (`torch_dtype` in older configs) and falls back to
    float32 when the config names none; float64 and other dtypes are rejected.
    """
    if dtype == "auto":
        named = None
        if config is not None:
            named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        dtype = named if named not in (None, "auto") else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; choose one of 'auto', {', '.join(map(repr, _DTYPES))}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"unsupported dtype {dtype}; choose float32, bfloat16 or float16")
    return dtype


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_hf_config(model_path: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path)


def load_model(
    model_path: str,
    *,
    dtype: DTypeLike = "auto",
    device: Union[str, torch.device] = "cpu",
    load_format: str = "auto",
    seed: int = 0,
    quantization: Any = None,
    show_progress: bool = False,
) -> tuple[nn.Module, Any]:
    """Returns `(model, hf_config)`, the model in eval mode on `device`.

    `quantization`: None (load as the checkpoint is; FP8 checkpoints load as FP8) or "fp8"
    (quantize a high-precision checkpoint online); see `lmlang.runtime.quantization`.
    """
    from lmlang.runtime import quantization as quant

    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; choose one of {LOAD_FORMATS}")
    config = load_hf_config(model_path)
    model_class = get_model_class(getattr(config, "architectures", None))
    torch_dtype = resolve_dtype(dtype, config)
    plan = quant.resolve_quantization(config, quantization, load_format)
    with torch.device(device), _default_dtype(torch_dtype):
        model = model_class(config)
        quant.before_loading(model, plan)
    if load_format == "dummy":
        fill_dummy_weights(model, seed)
    else:
        model.load_weights(iterate_safetensors(model_path, show_progress))
    quant.after_loading(model, plan)
    process_weights_after_loading(model)
    return model.eval(), config


@torch.no_grad()
def process_weights_after_loading(model: nn.Module) -> None:
    """Lets modules derive what they need from their final weights (e.g. MLA's absorbed
    matrices): calls `process_weights_after_loading()` on every module that defines it."""
    for module in model.modules():
        hook = getattr(module, "process_weights_after_loading", None)
        if hook is not None:
            hook()


def safetensors_files(model_path: str) -> list[str]:
    """The checkpoint's safetensors files: the index's shards, else the single file."""
    index = os.path.join(model_path, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_path, name) for name in shards]
    single = os.path.join(model_path, SINGLE_FILE)
    if os.path.exists(single):
        return [single]
    raise ValueError(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_path!r} (only safetensors checkpoints load)")


def iterate_safetensors(model_path: str, show_progress: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (checkpoint name, CPU tensor) for every tensor of every safetensors file."""
    from safetensors import safe_open

    files = safetensors_files(model_path)
    if show_progress:
        from tqdm import tqdm

        files = tqdm(files, desc="loading weights", unit="file")
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


@torch.no_grad()
def fill_dummy_weights(model: nn.Module, seed: int) -> None:
    """Seeded random weights: uniform in ±DUMMY_WEIGHT_RANGE, except norm weights set to 1.

    Parameters are filled in name order from one generator on the parameters' device, so
    the result depends only on the seed, the config, the device type and the dtype.
    """
    generators: dict = {}
    for name, param in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            param.fill_(1.0)
            continue
        device = param.device
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        if param.element_size() >= 2:
            param.uniform_(-DUMMY_WEIGHT_RANGE, DUMMY_WEIGHT_RANGE, generator=generators[device])
        else:  # 8-bit parameters (quantized models) cannot be sampled directly
            values = torch.empty(param.shape, dtype=torch.bfloat16, device=device)
            param.copy_(values.uniform_(-DUMMY_WEIGHT_RANGE, DUMMY_WEIGHT_RANGE, generator=generators[device]))


@dataclass(frozen=True)
class ModelFacts:
    """What the engine reads from a checkpoint's config."""

    context_length: int  # max_position_embeddings
    eos_token_ids: tuple  # from config.json and generation_config.json, in that order, deduplicated
    vocab_size: int  # rows of the logits (may exceed the tokenizer's length)


def model_facts(model_path: str, config: Any) -> ModelFacts:
    """Context length, eos token ids and vocab size of a loaded checkpoint's config."""
    eos: list = []
    sources = [getattr(config, "eos_token_id", None)]
    generation_config = os.path.join(model_path, "generation_config.json")
    if os.path.exists(generation_config):
        with open(generation_config) as f:
            sources.append(json.load(f).get("eos_token_id"))
    for ids in sources:
        for token_id in [ids] if isinstance(ids, int) else ids or []:
            if token_id not in eos:
                eos.append(int(token_id))
    return ModelFacts(int(config.max_position_embeddings), tuple(eos), int(config.vocab_size))
