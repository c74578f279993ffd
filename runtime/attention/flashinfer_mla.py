"""FlashInfer's MLA decode kernel over the latent pool, planned once per batch.

`flashinfer.mla.BatchMLAPagedAttentionWrapper` attends absorbed queries (`q_nope` [B, H, R],
`q_pe` [B, H, P]) over a paged latent cache given as two tensors, ckv [pages, page_size, R] and
kpe [pages, page_size, P]. The pool's per-layer buffer `[num_slots + 1, 1, R + P]` is handed over
without copying: page size 1, page id = slot, and ckv / kpe are the two column ranges of the same
rows (strided views; the kernel takes page and row strides).

Per forward, `plan` runs FlashInfer's host-side scheduler once (host lengths; the slot indices
stay on the device as int32), and every MLA layer then calls `run`. The plan depends on the head
count, ranks and softmax scale (`MLADecodeShape`), which only the layers know; the MLA backend
learns it from the first layer call (see `mla_backend.py`).

CUDA graphs: one wrapper per captured batch size (`use_cuda_graph=True`), each planning into
slices of shared static buffers (qo / kv indptr, slot indices, context lengths) and into its own
integer workspace, so that a captured `run` reads only fixed addresses and the grid depends on
the head count alone. Planning again before every replay refreshes those buffers.

The planner writes its work partition into a pinned host buffer and copies it to the device
asynchronously; before planning a wrapper again, we wait for the event recorded after its last
plan, so that the host buffer is not rewritten while that copy is pending (with overlap
scheduling, step N + 1 is planned while step N may still be queued).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

WORKSPACE_BYTES = 128 << 20  # float workspace for split-KV partial outputs (FlashInfer's recommendation)


@dataclass(frozen=True)
class MLADecodeShape:
    """What a FlashInfer MLA plan fixes: heads, latent rank R, rope dim P, softmax scale, dtype."""

    num_heads: int
    kv_lora_rank: int
    rope_dim: int
    sm_scale: float
    dtype: torch.dtype


def flashinfer_available() -> bool:
    """Whether `flashinfer` imports (it is an optional dependency, CUDA only)."""
    try:
        import flashinfer.mla  # noqa: F401
    except ImportError:
        return False
    return True


class FlashInferMLADecode:
    """Plans and runs FlashInfer's batched MLA decode; eager and CUDA-graph wrappers.

    Invariant: `run` uses the wrapper of the latest `plan` / `plan_cuda_graph`; a captured `run`
    must have been planned by `plan_cuda_graph` for the same batch size.
    """

    def __init__(self, device: torch.device, kernel_backend: str = "auto") -> None:
        import flashinfer.mla

        self._mla = flashinfer.mla
        self.device = device
        self.kernel_backend = kernel_backend  # "auto" (fa3 on Hopper), "fa2" or "fa3"
        self._workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self._eager = self._mla.BatchMLAPagedAttentionWrapper(self._workspace, backend=kernel_backend)
        self._graph: dict = {}  # batch size -> wrapper planning into the static buffers
        self._static: Optional[tuple] = None  # (qo_indptr, kv_indptr, kv_indices, kv_lens) int32
        self._wrapper = None  # the wrapper `run` uses
        self._copied: dict = {}  # wrapper id -> event recorded after its last plan

    def plan(self, seq_lens: Sequence[int], kv_indices: torch.Tensor, shape: MLADecodeShape) -> None:
        """Plans a decode batch with these context lengths over `kv_indices` [sum(seq_lens)] slots."""
        self._plan(self._eager, seq_lens, kv_indices.to(torch.int32), shape)

    def init_cuda_graph(self, max_batch_size: int, max_kv_indices: int) -> None:
        """Allocates the static buffers captured decode graphs read (see the module docstring)."""
        def ints(n: int) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.int32, device=self.device)

        self._static = (ints(max_batch_size + 1), ints(max_batch_size + 1), ints(max_kv_indices), ints(max_batch_size))
        self._graph.clear()

    def plan_cuda_graph(self, seq_lens: Sequence[int], kv_indices: torch.Tensor, shape: MLADecodeShape) -> None:
        """Plans a decode batch of a captured size into the static buffers."""
        if self._static is None:
            raise RuntimeError("init_cuda_graph must run before plan_cuda_graph")
        bs = len(seq_lens)
        qo_indptr, kv_indptr, indices, kv_lens = self._static
        if bs + 1 > qo_indptr.shape[0] or kv_indices.shape[0] > indices.shape[0]:
            raise ValueError(f"batch of {bs} sequences / {kv_indices.shape[0]} context slots exceeds the captured capacity")
        wrapper = self._graph.get(bs)
        if wrapper is None:
            wrapper = self._mla.BatchMLAPagedAttentionWrapper(
                self._workspace, use_cuda_graph=True, qo_indptr=qo_indptr[: bs + 1], kv_indptr=kv_indptr[: bs + 1],
                kv_indices=indices, kv_len_arr=kv_lens[:bs], backend=self.kernel_backend,
            )
            self._graph[bs] = wrapper
        self._plan(wrapper, seq_lens, kv_indices, shape)  # the wrapper copies (and narrows) the indices

    def _plan(self, wrapper, seq_lens: Sequence[int], kv_indices: torch.Tensor, shape: MLADecodeShape) -> None:
        lens = np.asarray(seq_lens, dtype=np.int32)
        qo_indptr = torch.arange(len(lens) + 1, dtype=torch.int32)  # one query row per sequence
        kv_indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
        copied = self._copied.get(id(wrapper))
        if copied is not None:
            copied.synchronize()  # its pinned plan buffer may be rewritten now
        wrapper.plan(
            qo_indptr, kv_indptr, kv_indices, torch.from_numpy(lens), shape.num_heads, shape.kv_lora_rank,
            shape.rope_dim, 1, False, shape.sm_scale, shape.dtype, shape.dtype,
        )
        event = self._copied.setdefault(id(wrapper), torch.cuda.Event())
        event.record()
        self._wrapper = wrapper

    def run(
        self,
        q_latent: torch.Tensor,  # [B, H, R]
        q_rope: torch.Tensor,  # [B, H, P]
        kv_buffer: torch.Tensor,  # [slots, 1, R + P]
    ) -> torch.Tensor:  # [B, H, R]
        """Attention of the planned batch over one layer's latent buffer."""
        if self._wrapper is None:
            raise RuntimeError("FlashInferMLADecode.run before plan")
        rank = q_latent.shape[2]
        return self._wrapper.run(q_latent, q_rope, kv_buffer[:, :, :rank], kv_buffer[:, :, rank:])
