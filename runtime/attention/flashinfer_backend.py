"""FlashInfer attention: the default backend on CUDA (bf16 / fp16).

The KV pool's per-layer buffers `[num_slots + 1, Hk, D]` are handed to FlashInfer as a paged
cache in NHD layout without copying: with `page_size == 1` every slot is a page (the buffer
viewed as `[num_slots + 1, 1, Hk, D]`, page id = slot, so the dummy slot 0 is page 0); with
`page_size = P > 1` the allocator's page p (slots p*P+1 .. (p+1)*P) is row p of
`buffer[1:].view(-1, P, Hk, D)`, page id = (slot - 1) // P. A sequence's page list is read off
its slots at positions 0, P, 2P, ... (a request's token i sits at offset i % P of its pages).

Per forward, `plan` runs FlashInfer's planner once (on the host lengths; the page indices stay on
the device); each layer then stores its K/V with the `kv_store` kernel and runs the planned
wrapper. Extend batches (prefill chunks over any cached prefix) use
`BatchPrefillWithPagedKVCacheWrapper` with a causal mask aligned to each sequence's end; decode
batches use `BatchDecodeWithPagedKVCacheWrapper` with tensor cores (FlashInfer's "fa2" prefill
kernels, the JIT module prefill already built) at every batch size: on the H200 the CUDA-core
decode kernel was slower even at batch 1 (Llama-8B shape, ctx 1024: 15.9 us per layer against
10 us + a 2.4 us merge). `CUDA_CORE_DECODE_MAX_BATCH` selects the CUDA-core kernel for batches up
to that size, and `LMLANG_FLASHINFER_DECODE=tensor_cores|cuda_cores` forces one kind for every
batch size, for measuring (`decode_uses_tensor_cores`). Batches with a custom mask (draft-tree
verification) run the Triton `tree_attention` kernel.

CUDA graphs: one decode wrapper per captured batch size, all planning into shared static
buffers (indptr, page indices, last-page lengths); see `base.AttentionBackend`.

Overlap scheduling plans step N + 1 while step N may still wait on the GPU. FlashInfer's planner
writes its work partition into a pinned host buffer and copies it to the device asynchronously,
so before planning, the backend waits for the previous plan's copies to have run (an event
recorded after them; they precede that step's kernels in stream order, so this waits at most
until the GPU reaches the previous step, never for it to finish).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from lmlang.runtime.attention.base import AttentionBackend, AttentionSpec, register_backend, rotate_and_store
from lmlang.runtime.forward_batch import ForwardBatch

WORKSPACE_BYTES = 256 << 20  # FlashInfer's float workspace (split-KV partial results)
KERNEL_BACKEND = "fa2"  # shared by prefill and tensor-core decode: one JIT module
CUDA_CORE_DECODE_MAX_BATCH = 0  # decode batches of at most this many sequences skip the tensor cores
TRITON_DECODE_MAX_BATCH = 8  # decode batches of at most this many sequences run the Triton kernel
DECODE_ENV = "LMLANG_FLASHINFER_DECODE"


def decode_uses_tensor_cores(batch_size: int) -> bool:
    """Whether a decode batch of `batch_size` sequences runs FlashInfer's tensor-core decode
    (see the module docstring); `$LMLANG_FLASHINFER_DECODE` overrides the size rule."""
    forced = os.environ.get(DECODE_ENV, "")
    if forced not in ("", "tensor_cores", "cuda_cores"):
        raise ValueError(f"{DECODE_ENV} must be 'tensor_cores' or 'cuda_cores', got {forced!r}")
    if forced:
        return forced == "tensor_cores"
    return batch_size > CUDA_CORE_DECODE_MAX_BATCH


@register_backend("flashinfer")
class FlashInferBackend(AttentionBackend):
    supports_cuda_graph = True

    def __init__(
        self, kv_pool=None, device: torch.device | str = "cuda", spec: Optional[AttentionSpec] = None,
        page_size: int = 1, **_: object,
    ) -> None:
        import flashinfer

        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"the flashinfer attention backend needs a CUDA device, got {device}")
        if spec is not None and spec.v_head_dim != spec.head_dim:
            raise ValueError(
                f"the flashinfer backend needs v_head_dim == head_dim, got {spec.v_head_dim} != {spec.head_dim}; "
                "use attention_backend='triton'"
            )
        self._fi = flashinfer
        self.kv_pool = kv_pool
        self.spec = spec
        self.page_size = page_size
        self.device = device
        self._workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, "NHD", backend=KERNEL_BACKEND)
        self._decode: dict = {}  # use_tensor_cores -> eager decode wrapper (made at first use)
        self._graph_decode: dict = {}  # batch size -> wrapper planning into the static buffers
        self._static: Optional[tuple] = None  # (indptr [max_bs + 1], indices [capacity], last_page_len [max_bs])
        self._paged: dict = {}  # layer id -> (k_cache, v_cache) paged views of the pool's buffers
        self._wrapper = None  # the wrapper `forward` runs; None: tree attention (custom mask)
        self._max_qo_len = 0
        self._plan_copied = torch.cuda.Event()  # recorded after each plan's host-to-device copies
        self._planned = False
        self._small = None  # TritonAttentionBackend serving small decode batches (made at first use)
        self._use_small = False

    # ---- planning ----------------------------------------------------------------------------

    def _page_table(self, batch: ForwardBatch) -> tuple:
        """(page indptr [B + 1] int32 host, page ids [pages] int32 device, last page lengths [B] int32 host)."""
        lens = np.asarray(batch.seq_lens_cpu, dtype=np.int64)
        p = self.page_size
        if p == 1:
            indptr = np.concatenate([[0], np.cumsum(lens)])
            return _host_i32(indptr), batch.kv_indices.to(torch.int32), _host_i32(np.ones_like(lens))
        pages = -(-lens // p)
        indptr = np.concatenate([[0], np.cumsum(pages)])
        kv_starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        # slot of position j * P of each sequence: kv_start + j * P
        first = np.repeat(kv_starts, pages) + (np.arange(indptr[-1]) - np.repeat(indptr[:-1], pages)) * p
        slots = batch.kv_indices[torch.from_numpy(first).to(self.device, non_blocking=True)]
        page_ids = torch.div(slots - 1, p, rounding_mode="floor").clamp_(min=0).to(torch.int32)
        last = lens - (pages - 1) * p
        return _host_i32(indptr), page_ids, _host_i32(last)

    def _before_plan(self) -> None:
        if self._planned:
            self._plan_copied.synchronize()  # the pinned plan buffers may be rewritten now

    def _after_plan(self) -> None:
        self._plan_copied.record()
        self._planned = True

    def _common(self) -> dict:
        spec, dtype = self.spec, self.kv_pool.dtype
        return dict(q_data_type=dtype, kv_data_type=dtype, sm_scale=spec.scaling)

    def _small_backend(self):
        """The Triton backend that runs small decode batches (see the module docstring)."""
        if self._small is None:
            from lmlang.runtime.attention.triton_backend import TritonAttentionBackend

            self._small = TritonAttentionBackend(self.kv_pool, self.device, self.spec)
        return self._small

    @staticmethod
    def _small_decode(batch: ForwardBatch) -> bool:
        return batch.mode.is_decode and batch.custom_mask is None and batch.batch_size <= TRITON_DECODE_MAX_BATCH

    def plan(self, batch: ForwardBatch) -> None:
        self._wrapper = None
        if self.spec is None:
            return  # the model attends without this backend (e.g. MLA)
        spec = self.spec
        self._use_small = self._small_decode(batch)
        if self._use_small:
            self._small_backend().plan(batch)
            return
        if batch.custom_mask is not None:
            self._max_qo_len = max(batch.extend_lens_cpu)
            return
        indptr, page_ids, last = self._page_table(batch)
        self._before_plan()
        if batch.mode.is_decode:
            tensor_cores = decode_uses_tensor_cores(batch.batch_size)
            wrapper = self._decode.get(tensor_cores)
            if wrapper is None:
                wrapper = self._fi.BatchDecodeWithPagedKVCacheWrapper(self._workspace, "NHD",
                                                                      use_tensor_cores=tensor_cores)
                self._decode[tensor_cores] = wrapper
            wrapper.plan(indptr, page_ids, last, spec.num_heads, spec.num_kv_heads, spec.head_dim,
                         self.page_size, **self._common())
            self._wrapper = wrapper
        else:
            qo_indptr = _host_i32(np.concatenate([[0], np.cumsum(batch.extend_lens_cpu)]))
            self._prefill.plan(qo_indptr, indptr, page_ids, last, spec.num_heads, spec.num_kv_heads, spec.head_dim,
                               self.page_size, head_dim_vo=spec.v_head_dim, causal=True, **self._common())
            self._wrapper = self._prefill
        self._after_plan()

    def init_cuda_graph(self, max_batch_size: int, max_kv_indices: int) -> None:
        self._static = (
            torch.zeros(max_batch_size + 1, dtype=torch.int32, device=self.device),
            torch.zeros(max_kv_indices, dtype=torch.int32, device=self.device),
            torch.ones(max_batch_size, dtype=torch.int32, device=self.device),
        )
        self._graph_decode.clear()
        if TRITON_DECODE_MAX_BATCH > 0:
            self._small_backend().init_cuda_graph(min(max_batch_size, TRITON_DECODE_MAX_BATCH), max_kv_indices)

    def plan_cuda_graph(self, batch: ForwardBatch) -> None:
        if self._static is None:
            raise RuntimeError("init_cuda_graph must run before plan_cuda_graph")
        self._use_small = self._small_decode(batch)
        if self._use_small:
            self._small_backend().plan_cuda_graph(batch)
            return
        bs = batch.batch_size
        wrapper = self._graph_decode.get(bs)
        if wrapper is None:
            indptr_buf, indices_buf, last_buf = self._static
            wrapper = self._fi.BatchDecodeWithPagedKVCacheWrapper(
                self._workspace, "NHD", use_cuda_graph=True, use_tensor_cores=decode_uses_tensor_cores(bs),
                paged_kv_indptr_buffer=indptr_buf[: bs + 1], paged_kv_indices_buffer=indices_buf,
                paged_kv_last_page_len_buffer=last_buf[:bs],
            )
            self._graph_decode[bs] = wrapper
        spec = self.spec
        indptr, page_ids, last = self._page_table(batch)
        self._before_plan()
        wrapper.plan(indptr, page_ids, last, spec.num_heads, spec.num_kv_heads, spec.head_dim, self.page_size,
                     **self._common())
        self._after_plan()
        self._wrapper = wrapper

    # ---- per layer ---------------------------------------------------------------------------

    def _paged_cache(self, layer_id: int) -> tuple:
        views = self._paged.get(layer_id)
        if views is None:
            k_buf, v_buf = self.kv_pool.k_buffer[layer_id], self.kv_pool.v_buffer[layer_id]
            if self.page_size == 1:
                views = (k_buf.unsqueeze(1), v_buf.unsqueeze(1))
            else:
                p = self.page_size
                views = (k_buf[1:].view(-1, p, *k_buf.shape[1:]), v_buf[1:].view(-1, p, *v_buf.shape[1:]))
            self._paged[layer_id] = views
        return views

    def forward(self, q, k, v, layer_id: int, scaling: float, batch: ForwardBatch) -> torch.Tensor:
        from lmlang.kernels.kv_store import store_kv

        if self._use_small:
            return self._small.forward(q, k, v, layer_id, scaling, batch)
        pool = self.kv_pool
        store_kv(pool.k_buffer[layer_id], pool.v_buffer[layer_id], batch.out_cache_loc, k, v)
        return self._attend(q, layer_id, scaling, batch)

    def forward_rope(self, q, k, v, layer_id: int, scaling: float, batch: ForwardBatch, rotary, positions):
        if self._use_small:
            return self._small.forward_rope(q, k, v, layer_id, scaling, batch, rotary, positions)
        pool = self.kv_pool
        rotated = rotate_and_store(q, k, v, pool.k_buffer[layer_id], pool.v_buffer[layer_id], batch.out_cache_loc,
                                   rotary, positions)
        if rotated is None:
            return super().forward_rope(q, k, v, layer_id, scaling, batch, rotary, positions)
        return self._attend(rotated, layer_id, scaling, batch)

    def _attend(self, q: torch.Tensor, layer_id: int, scaling: float, batch: ForwardBatch) -> torch.Tensor:
        """Attention of q over the contexts, the new tokens' K/V already in the pool."""
        if self.spec is None:
            raise RuntimeError("the flashinfer backend was built without an AttentionSpec; it cannot attend")
        if scaling != self.spec.scaling:
            raise ValueError(f"layer {layer_id} scales by {scaling}, the plan by {self.spec.scaling}")
        pool = self.kv_pool
        k_buf, v_buf = pool.k_buffer[layer_id], pool.v_buffer[layer_id]
        if self._wrapper is None:
            from lmlang.kernels.tree_attention import tree_attention

            return tree_attention(q.contiguous(), k_buf, v_buf, batch.qo_indptr, batch.kv_indptr, batch.kv_indices,
                                  scaling, batch.custom_mask, max_qo_len=self._max_qo_len)
        return self._wrapper.run(q.contiguous(), self._paged_cache(layer_id))  # [n, Hq, Dv]


def _host_i32(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int32))
