"""Checkpoint names -> model parameters, as data.

A model lists `StackedParam` rows for projections it fuses: a checkpoint name containing
`checkpoint_part` is renamed with `param_part` and loaded into shard `shard_id` of the fused
parameter. Names containing any of `ignored` are skipped (e.g. `rotary_emb.inv_freq` buffers
that old checkpoints saved, or `lm_head.weight` of a tied model). Every other name must be a
parameter of the model, and every parameter must be loaded (a stacked one in each of its
`shard_ids`): both mistakes raise ValueError,
so a mapping bug cannot leave uninitialised weights behind silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

import torch
from torch import nn

from lmlang.runtime.layers.linear import default_weight_loader


@dataclass(frozen=True)
class StackedParam:
    checkpoint_part: str  # e.g. ".q_proj."
    param_part: str  # e.g. ".qkv_proj."
    shard_id: Hashable  # e.g. "q"


def load_weights_by_table(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked: Sequence[StackedParam] = (),
    ignored: Sequence[str] = (),
) -> None:
    """Loads `weights` into `model` through each parameter's `weight_loader` hook."""
    params = dict(model.named_parameters())
    loaded: set = set()
    with torch.no_grad():
        for name, tensor in weights:
            if any(part in name for part in ignored):
                continue
            shard_id = None
            for row in stacked:
                if row.checkpoint_part in name:
                    name, shard_id = name.replace(row.checkpoint_part, row.param_part), row.shard_id
                    break
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} matches no parameter of {type(model).__name__}")
            param = params[name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            loader(param, tensor, shard_id)
            loaded.add((name, shard_id))
    missing = sorted(
        f"{name}[{shard!r}]" if shard is not None else name
        for name, param in params.items()
        for shard in getattr(param, "shard_ids", (None,))
        if (name, shard) not in loaded
    )
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(
            f"checkpoint has no weights for {len(missing)} parameters (or shards) of {type(model).__name__}: {shown}"
        )
