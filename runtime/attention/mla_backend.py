"""The attention backend of MLA models: owns the per-forward KV layout, CUDA-graph safe.

MLA layers (`runtime/layers/mla.py`) do their own attention math over the latent pool
(`runtime/attention/mla.py`), so this backend's only job is the context layout they read:
`kv_indptr` / `kv_indices`. In eager mode `plan` takes the batch's own tensors. For CUDA graphs,
`init_cuda_graph` allocates static copies once and `plan_cuda_graph` refills them before the
capture and before every replay, so a captured decode step (whose MLA decode kernel reads these
pointers) sees each replay's contexts. The MHA entry point `forward` is not served: a model with
`Attention` layers needs an MHA backend.
"""

from __future__ import annotations

from typing import Optional

import torch

from lmlang.runtime.attention.base import AttentionBackend, register_backend
from lmlang.runtime.forward_batch import ForwardBatch


@register_backend("mla")
class MLAAttentionBackend(AttentionBackend):
    supports_cuda_graph = True

    def __init__(self, device: Optional[torch.device | str] = None, **_: object) -> None:
        self.device = torch.device(device) if device is not None else None
        self.kv_indptr: Optional[torch.Tensor] = None  # [batch + 1] int32
        self.kv_indices: Optional[torch.Tensor] = None  # [>= kv_indptr[-1]] slots
        self._static_indptr: Optional[torch.Tensor] = None
        self._static_indices: Optional[torch.Tensor] = None

    def plan(self, batch: ForwardBatch) -> None:
        self.kv_indptr, self.kv_indices = batch.kv_indptr, batch.kv_indices

    def init_cuda_graph(self, max_batch_size: int, max_kv_indices: int) -> None:
        device = self.device or torch.device("cuda")
        self._static_indptr = torch.zeros(max_batch_size + 1, dtype=torch.int32, device=device)
        self._static_indices = torch.zeros(max_kv_indices, dtype=torch.int64, device=device)  # 0 = dummy slot

    def plan_cuda_graph(self, batch: ForwardBatch) -> None:
        if self._static_indptr is None:
            raise RuntimeError("plan_cuda_graph before init_cuda_graph")
        n, total = batch.batch_size, batch.kv_indices.shape[0]
        if n + 1 > self._static_indptr.shape[0] or total > self._static_indices.shape[0]:
            raise ValueError(f"batch of {n} sequences / {total} context slots exceeds the captured capacity")
        self._static_indptr[: n + 1].copy_(batch.kv_indptr, non_blocking=True)
        self._static_indices[:total].copy_(batch.kv_indices, non_blocking=True)
        self.kv_indptr, self.kv_indices = self._static_indptr[: n + 1], self._static_indices

    def forward(self, q, k, v, layer_id: int, scaling: float, batch: ForwardBatch) -> torch.Tensor:
        raise ValueError("the 'mla' attention backend serves MLA layers only; use an MHA backend for this model")


def kv_layout(batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_indptr, kv_indices) an MLA layer attends over: the MLA backend's when it planned the
    batch (static buffers under CUDA graphs), else the batch's own (any other backend, eager)."""
    backend = batch.attn_backend
    if isinstance(backend, MLAAttentionBackend) and backend.kv_indptr is not None:
        return backend.kv_indptr, backend.kv_indices
    return batch.kv_indptr, batch.kv_indices
