"""Tiny checkpoints in DeepSeek's FP8 block format, for tests (no model hub).

`make_tiny_fp8_checkpoint(path, arch)` writes `make_tiny_checkpoint(path, arch)` and then
rewrites its safetensors the way DeepSeek-V3's FP8 release stores weights: every projection
weight (2-D `*.weight` of attention, dense MLP, shared and routed experts) becomes
float8_e4m3fn plus a float32 `*.weight_scale_inv` with one value per `block_size` block
(real weight ~= fp8 * scale_inv); embeddings, the LM head, norms and MoE router weights stay as
they were. `config.json` gains `quantization_config` = {"quant_method": "fp8",
"activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [bn, bk]}. Dimensions need
not be multiples of the block (edge blocks are partial, as `quant_weight_block_fp8` makes them),
but loading stacked projections (gate/up) needs each shard to start on a block row.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

_UNQUANTIZED = ("embed_tokens.", "lm_head.", "norm.", "shared_head.head.", "mlp.gate.weight", "block_sparse_moe.gate.")


def is_fp8_weight(name: str, ndim: int) -> bool:
    """Whether DeepSeek's FP8 format stores checkpoint tensor `name` in FP8."""
    return ndim == 2 and name.endswith(".weight") and not any(part in name for part in _UNQUANTIZED)


def make_tiny_fp8_checkpoint(
    path: str | os.PathLike,
    arch: str = "deepseek_v3",
    seed: int = 0,
    *,
    block_size: tuple[int, int] = (128, 128),
    max_shard_size: Optional[str] = None,
    **config_overrides: Any,
) -> str:
    """Writes a tiny `arch` checkpoint in DeepSeek's FP8 block format to `path`; returns `path`.

    The high-precision weights are exactly those of `make_tiny_checkpoint(path, arch, seed,
    **config_overrides)`, so the two checkpoints can be compared.
    """
    from safetensors.torch import load_file, save_file

    from lmlang.kernels.fp8 import quant_weight_block_fp8
    from lmlang.testing.checkpoints import make_tiny_checkpoint
    from lmlang.runtime.model_loader import safetensors_files, INDEX_FILE

    path = make_tiny_checkpoint(path, arch, seed, max_shard_size=max_shard_size, **config_overrides)
    block = (int(block_size[0]), int(block_size[1]))
    renamed: dict = {}  # new tensor name -> file, for a sharded index
    for file in safetensors_files(path):
        tensors = load_file(file)
        out = {}
        for name, tensor in tensors.items():
            if is_fp8_weight(name, tensor.ndim):
                out[name], out[name + "_scale_inv"] = quant_weight_block_fp8(tensor, block)
                renamed[name + "_scale_inv"] = os.path.basename(file)
            else:
                out[name] = tensor
        save_file({k: v.contiguous() for k, v in out.items()}, file, metadata={"format": "pt"})
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            data = json.load(f)
        data["weight_map"].update(renamed)
        with open(index, "w") as f:
            json.dump(data, f, indent=2)
    config_file = os.path.join(path, "config.json")
    with open(config_file) as f:
        config = json.load(f)
    config["quantization_config"] = {
        "quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": list(block),
    }
    with open(config_file, "w") as f:
        json.dump(config, f, indent=2)
    return path
