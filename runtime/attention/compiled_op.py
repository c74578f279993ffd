"""Attention as one opaque torch op, so that `torch.compile` traces a whole model forward.

An attention backend's `forward` does host-side work and calls foreign kernels (FlashInfer's
through its own FFI) that torch's compiler cannot trace. Under compilation the `Attention` layer
calls `torch.ops.lmlang.attention(q, k, v, layer_id, scaling)` instead: a custom op the compiler
keeps as one call, which at run time hands the arguments to the backend of the batch being run.
That batch is set by `forward_batch_context` around the model call (the model runner does this
for every forward). The op also stores K/V into the pool, a side effect on buffers that are not
its inputs; nothing else in a forward reads them, so the compiler may not reorder anything that
matters.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from lmlang.runtime.forward_batch import ForwardBatch

_current: list = [None]  # the ForwardBatch being run, one per process (the engine core runs one forward at a time)


@contextlib.contextmanager
def forward_batch_context(batch: ForwardBatch) -> Iterator[None]:
    """Makes `batch` the one `attention_op` attends for, for the duration of the block."""
    previous: Optional[ForwardBatch] = _current[0]
    _current[0] = batch
    try:
        yield
    finally:
        _current[0] = previous


@torch.library.custom_op("lmlang::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, scaling: float) -> torch.Tensor:
    """`batch.attn_backend.forward(q, k, v, layer_id, scaling, batch)` for the current batch."""
    batch = _current[0]
    if batch is None:
        raise RuntimeError("lmlang::attention ran outside forward_batch_context")
    return batch.attn_backend.forward(q, k, v, layer_id, scaling, batch)


@attention_op.register_fake
def _attention_fake(q, k, v, layer_id, scaling):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])  # [n, num_heads, v_head_dim]
