"""The attention backend of MLA models: owns the per-forward KV layout and the decode kernel plan.

MLA layers (`runtime/layers/mla.py`) do their own attention math over the latent pool
(`runtime/attention/mla.py`); this backend serves them two things:

- the context layout `kv_indptr` / `kv_indices` (`kv_layout`). In eager mode `plan` takes the
  batch's own tensors; for CUDA graphs `init_cuda_graph` allocates static copies once and
  `plan_cuda_graph` refills them before the capture and before every replay.
- absorbed decode (`decode`). On CUDA with `flashinfer` installed it runs FlashInfer's MLA kernel
  (`flashinfer_mla.py`), planned once per batch; otherwise (CPU excepted: layers take the torch
  path there) the Triton split-K kernel `lmlang.kernels.mla_decode` over the layout above. The
  Triton kernel also serves the batches where it is the faster one (`triton_decode_faster`: up to
  `TRITON_DECODE_MAX_BATCH` requests of at most `TRITON_DECODE_MAX_HEADS` heads), which then
  skip FlashInfer's plan.

A FlashInfer plan needs the layers' head count and softmax scale, which the backend is not given
at construction: the first layer call of a decode batch records them (`MLADecodeShape`) and
plans; from then on `plan` / `plan_cuda_graph` plan up front. The CUDA-graph runner warms every
batch size up eagerly before capturing it, so that first plan never falls inside a capture (if
it would, `decode` raises). A layer whose shape differs from the recorded one runs the Triton
kernel, as does any layer FlashInfer does not serve (`flashinfer_serves`: latent widths other
than DeepSeek's 512 + 64, or 32-bit floats). The MHA entry point `forward` is not served: a
model with `Attention` layers needs an MHA backend.
"""

from __future__ import annotations

from typing import Optional

import torch

from lmlang.runtime.attention.base import AttentionBackend, register_backend
from lmlang.runtime.attention.flashinfer_mla import FlashInferMLADecode, MLADecodeShape, flashinfer_available
from lmlang.runtime.forward_batch import ForwardBatch

DECODE_KERNELS = ("auto", "flashinfer", "triton")
FLASHINFER_DIMS = (512, 64)  # (kv_lora_rank, rope dim) FlashInfer's MLA kernels are built for (DeepSeek's)
# where the Triton kernel beat FlashInfer's on the H200 (ctx 4k, per layer, graph-replayed; 16x128
# tiles, 32 splits): 16 heads at batch 1 / 2 / 4: 11.2 / 12.8 / 15.7 us vs 17.9 / 18.8 / 19.4; batch 8
# (earlier tiling 27.8 vs 22.5) and 128 heads at every batch: FlashInfer
TRITON_DECODE_MAX_BATCH = 4
TRITON_DECODE_MAX_HEADS = 16


def triton_decode_faster(batch_size: int, num_heads: int) -> bool:
    """Whether the Triton MLA decode kernel beats FlashInfer's for this batch (see the constants)."""
    return batch_size <= TRITON_DECODE_MAX_BATCH and num_heads <= TRITON_DECODE_MAX_HEADS


def flashinfer_serves(q_latent: torch.Tensor, q_rope: torch.Tensor) -> bool:
    """Whether FlashInfer's MLA kernel takes these queries: 16-bit, DeepSeek's latent widths."""
    dims = (q_latent.shape[2], q_rope.shape[2])
    return q_latent.dtype in (torch.bfloat16, torch.float16) and dims == FLASHINFER_DIMS


@register_backend("mla")
class MLAAttentionBackend(AttentionBackend):
    supports_cuda_graph = True

    def __init__(
        self, device: Optional[torch.device | str] = None, decode_kernel: str = "auto",
        flashinfer_backend: str = "auto", **_: object,
    ) -> None:
        """`decode_kernel`: 'flashinfer', 'triton', or 'auto' (FlashInfer on CUDA when it imports).
        `flashinfer_backend`: FlashInfer's MLA implementation ('auto', 'fa2', 'fa3')."""
        if decode_kernel not in DECODE_KERNELS:
            raise ValueError(f"decode_kernel must be one of {DECODE_KERNELS}, got {decode_kernel!r}")
        self.device = torch.device(device) if device is not None else None
        self.decode_kernel = decode_kernel
        self.kv_indptr: Optional[torch.Tensor] = None  # [batch + 1] int32
        self.kv_indices: Optional[torch.Tensor] = None  # [>= kv_indptr[-1]] slots
        self._static_indptr: Optional[torch.Tensor] = None
        self._static_indices: Optional[torch.Tensor] = None
        on_cuda = self.device is not None and self.device.type == "cuda"
        if decode_kernel == "flashinfer" and not (on_cuda and flashinfer_available()):
            raise ValueError("decode_kernel='flashinfer' needs a CUDA device and the flashinfer package")
        use_fi = decode_kernel == "flashinfer" or (decode_kernel == "auto" and on_cuda and flashinfer_available())
        self.flashinfer = FlashInferMLADecode(self.device, flashinfer_backend) if use_fi else None
        self.shape: Optional[MLADecodeShape] = None  # recorded from the first decode layer call
        self._pending: Optional[tuple[ForwardBatch, bool]] = None  # (batch, for a graph) awaiting the shape
        self._fi_planned = False  # FlashInfer is planned for the current batch

    # ---- planning ----------------------------------------------------------------------------

    def plan(self, batch: ForwardBatch) -> None:
        self.kv_indptr, self.kv_indices = batch.kv_indptr, batch.kv_indices
        self._plan_flashinfer(batch, graph=False)

    def init_cuda_graph(self, max_batch_size: int, max_kv_indices: int) -> None:
        device = self.device or torch.device("cuda")
        self._static_indptr = torch.zeros(max_batch_size + 1, dtype=torch.int32, device=device)
        self._static_indices = torch.zeros(max_kv_indices, dtype=torch.int64, device=device)  # 0 = dummy slot
        if self.flashinfer is not None:
            self.flashinfer.init_cuda_graph(max_batch_size, max_kv_indices)

    def plan_cuda_graph(self, batch: ForwardBatch) -> None:
        if self._static_indptr is None:
            raise RuntimeError("plan_cuda_graph before init_cuda_graph")
        n, total = batch.batch_size, batch.kv_indices.shape[0]
        if n + 1 > self._static_indptr.shape[0] or total > self._static_indices.shape[0]:
            raise ValueError(f"batch of {n} sequences / {total} context slots exceeds the captured capacity")
        self._static_indptr[: n + 1].copy_(batch.kv_indptr, non_blocking=True)
        self._static_indices[:total].copy_(batch.kv_indices, non_blocking=True)
        self.kv_indptr, self.kv_indices = self._static_indptr[: n + 1], self._static_indices
        self._plan_flashinfer(batch, graph=True)

    def _plan_flashinfer(self, batch: ForwardBatch, graph: bool) -> None:
        self._fi_planned, self._pending = False, None
        if self.flashinfer is None or not batch.mode.is_decode or batch.custom_mask is not None:
            return
        if self.shape is None:
            self._pending = (batch, graph)  # planned at the first layer call
            return
        if self._prefers_triton(batch.batch_size, self.shape.num_heads):
            return
        plan = self.flashinfer.plan_cuda_graph if graph else self.flashinfer.plan
        plan(batch.seq_lens_cpu, batch.kv_indices, self.shape)
        self._fi_planned = True

    def _prefers_triton(self, batch_size: int, num_heads: int) -> bool:
        return self.decode_kernel == "auto" and triton_decode_faster(batch_size, num_heads)

    # ---- per layer ---------------------------------------------------------------------------

    def decode(
        self,
        q_latent: torch.Tensor,  # [B, H, R]
        q_rope: torch.Tensor,  # [B, H, P]
        kv_buffer: torch.Tensor,  # [slots, 1, R + P]
        scaling: float,
        batch: ForwardBatch,
    ) -> torch.Tensor:  # [B, H, R]
        """Absorbed decode attention of the planned batch over one layer's latent buffer."""
        prefers_triton = self._prefers_triton(q_latent.shape[0], q_latent.shape[1])
        if self.flashinfer is not None and flashinfer_serves(q_latent, q_rope) and not prefers_triton:
            shape = MLADecodeShape(q_latent.shape[1], q_latent.shape[2], q_rope.shape[2], scaling, q_latent.dtype)
            if self.shape is None:
                self.shape = shape
            if self._pending is not None and shape == self.shape:
                if torch.cuda.is_current_stream_capturing():
                    raise RuntimeError("the MLA backend's first FlashInfer plan fell inside a CUDA graph capture; "
                                       "run the batch once eagerly before capturing it")
                pending_batch, graph = self._pending
                self._plan_flashinfer(pending_batch, graph)
            if self._fi_planned and shape == self.shape:
                return self.flashinfer.run(q_latent, q_rope, kv_buffer)
        from lmlang.kernels.mla_decode import mla_decode

        kv_indptr, kv_indices = kv_layout(batch)
        return mla_decode(q_latent, q_rope, kv_buffer, kv_indptr, kv_indices, scaling)

    def forward(self, q, k, v, layer_id: int, scaling: float, batch: ForwardBatch) -> torch.Tensor:
        raise ValueError("the 'mla' attention backend serves MLA layers only; use an MHA backend for this model")


def kv_layout(batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_indptr, kv_indices) an MLA layer attends over: the MLA backend's when it planned the
    batch (static buffers under CUDA graphs), else the batch's own (any other backend, eager)."""
    backend = batch.attn_backend
    if isinstance(backend, MLAAttentionBackend) and backend.kv_indptr is not None:
        return backend.kv_indptr, backend.kv_indices
    return batch.kv_indptr, batch.kv_indices
