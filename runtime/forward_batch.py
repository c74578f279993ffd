"""Per-forward state, built by the model runner and passed explicitly through the model.

Token layout: the new tokens of every sequence are concatenated ("ragged") in batch order.
`qo_indptr` delimits each sequence's new tokens; `kv_indptr` / `kv_indices` give, per sequence,
the KV slots of its whole context in position order, the new tokens included (their slots are
`out_cache_loc`). The attention backend writes the new K/V to `out_cache_loc` first, then attends
over `kv_indices`; a new token at position p sees context positions 0..p.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from lmlang.runtime.attention.base import AttentionBackend
    from lmlang.runtime.cache.kv_pool import KVPool


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill (possibly a chunk, possibly over a cached prefix), any lengths
    DECODE = "decode"  # one new token per sequence

    @property
    def is_decode(self) -> bool:
        return self is ForwardMode.DECODE


@dataclass
class ForwardBatch:
    mode: ForwardMode
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    out_cache_loc: torch.Tensor  # [num_tokens] int64, KV slot of each new token
    seq_lens: torch.Tensor  # [batch] int32, context length after this forward
    prefix_lens: torch.Tensor  # [batch] int32, context length before this forward
    qo_indptr: torch.Tensor  # [batch + 1] int32
    kv_indptr: torch.Tensor  # [batch + 1] int32
    kv_indices: torch.Tensor  # [sum(seq_lens)] int64
    seq_lens_cpu: list  # the same lengths as Python ints, for host-side loops and planning
    prefix_lens_cpu: list
    kv_pool: "KVPool"
    attn_backend: "AttentionBackend"
    # [num_tokens, max_context] bool, True = may attend; only for tree verification, else None
    custom_mask: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def extend_lens_cpu(self) -> list:
        return [s - p for s, p in zip(self.seq_lens_cpu, self.prefix_lens_cpu)]
