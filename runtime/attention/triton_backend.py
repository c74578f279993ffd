"""Attention through lmlang's own Triton kernels: the CUDA fallback, and the custom-mask path.

Every forward stores K/V with the `kv_store` kernel. Decode batches (one new token per sequence,
no custom mask) run `decode_attention` (split-K over the context, one program per KV head so a
GQA group reads each K/V row once); everything else, prefill chunks over a cached prefix and
draft-tree verification with `batch.custom_mask`, runs `tree_attention`. Both read context slots
straight from `kv_indices`, so any `page_size` works. The kernels also run on CPU through
Triton's interpreter (slowly: for tests).

Decode splits each context into `num_kv_splits` ranges, chosen from the batch size alone (so a
captured graph keeps its grid): enough (sequence, KV head, split) programs to fill the GPU twice
over, at most `max_kv_splits` (32); large batches need no split. Batch 1 walks its splits in
32-token tiles (`decode_config`). Measured on the H200, Llama-8B shape, in a graph of 32 layers
(`benchmarks/kernels.py --only decode_attention_small`, 21:20Z): batch 1 ctx 1k 7.3 us per
layer (64-token tiles and 16 splits: 8.0; FlashInfer with its rotary + store: 12.1); batch 8 ctx
4k 41 us (FlashInfer 44).

Decode is one launch per layer: the split merge runs inside the kernel (on a counters buffer
this backend owns), and with `forward_rope` on CUDA the kernel also rotates q and the new k and
stores the new token's k / v (`decode_attention(..., counters=, new_kv=, rope=)`).

CUDA graphs: decode reads `kv_indptr` / `kv_indices` from static buffers filled by
`plan_cuda_graph`; the decode grid depends only on the batch size.
"""

from __future__ import annotations

from typing import Optional

import torch

from lmlang.kernels.decode_attention import DecodeAttentionConfig, decode_attention
from lmlang.kernels.launch import next_power_of_2
from lmlang.kernels.kv_store import store_kv
from lmlang.kernels.tree_attention import tree_attention
from lmlang.runtime.attention.base import AttentionBackend, AttentionSpec, register_backend, rotate_and_store
from lmlang.runtime.forward_batch import ForwardBatch
from lmlang.runtime.layers.dispatch import use_kernels


MAX_DECODE_SPLITS = 32
_BATCH1_CONFIG = DecodeAttentionConfig(block_n=32)
_DEFAULT_CONFIG = DecodeAttentionConfig()


def decode_config(batch_size: int) -> DecodeAttentionConfig:
    """The decode kernel's tiling for a batch of `batch_size` sequences (see the module docstring)."""
    return _BATCH1_CONFIG if batch_size == 1 else _DEFAULT_CONFIG


@register_backend("triton")
class TritonAttentionBackend(AttentionBackend):
    supports_cuda_graph = True

    def __init__(
        self, kv_pool=None, device: torch.device | str = "cpu", spec: Optional[AttentionSpec] = None,
        max_kv_splits: int = MAX_DECODE_SPLITS, **_: object,
    ) -> None:
        self.kv_pool = kv_pool
        self.device = torch.device(device)
        self.max_kv_splits = max_kv_splits
        # programs that fill the GPU twice over (on CPU, the interpreter: a few)
        self._target_programs = (
            2 * torch.cuda.get_device_properties(self.device).multi_processor_count if self.device.type == "cuda" else 8
        )
        self._static: Optional[tuple] = None  # (kv_indptr [max_bs + 1] int32, kv_indices [capacity] int64)
        self._decode = False
        self._kv_indptr: Optional[torch.Tensor] = None  # what decode reads: the batch's or the static buffers
        self._kv_indices: Optional[torch.Tensor] = None
        self._max_qo_len = 0
        self._num_kv_splits = max_kv_splits
        self._config = _DEFAULT_CONFIG
        self._counters = torch.zeros(0, dtype=torch.int32, device=self.device)  # per (sequence, KV head), kept 0

    def num_kv_splits(self, batch_size: int, num_kv_heads: int) -> int:
        """Context splits for a decode batch: ceil(target programs / (B x KV heads)), in [1, max],
        with B the batch size rounded up to a power of two. Every power of two is a CUDA-graph
        bucket, so a batch and the bucket it is padded to get the same splits: a step computes the
        same numbers replayed or eager."""
        rounded = next_power_of_2(batch_size)
        return max(1, min(self.max_kv_splits, -(-self._target_programs // max(rounded * num_kv_heads, 1))))

    def _reserve_counters(self, batch_size: int) -> None:
        """Grows the split-merge counters to cover `batch_size` sequences (never during a capture:
        `init_cuda_graph` reserves the largest graph batch up front)."""
        need = batch_size * self._num_kv_heads()
        if self._counters.numel() < need:
            self._counters = torch.zeros(need, dtype=torch.int32, device=self.device)

    def _num_kv_heads(self) -> int:
        return self.kv_pool.num_kv_heads if hasattr(self.kv_pool, "num_kv_heads") else 1

    def plan(self, batch: ForwardBatch) -> None:
        self._decode = batch.mode.is_decode and batch.custom_mask is None
        if self._decode:
            self._reserve_counters(batch.batch_size)
        self._kv_indptr, self._kv_indices = batch.kv_indptr, batch.kv_indices
        self._max_qo_len = 1 if self._decode else max(batch.extend_lens_cpu, default=0)
        self._choose_tiling(batch.batch_size)

    def init_cuda_graph(self, max_batch_size: int, max_kv_indices: int) -> None:
        self._static = (
            torch.zeros(max_batch_size + 1, dtype=torch.int32, device=self.device),
            torch.zeros(max_kv_indices, dtype=torch.int64, device=self.device),
        )
        self._reserve_counters(max_batch_size)

    def plan_cuda_graph(self, batch: ForwardBatch) -> None:
        if self._static is None:
            raise RuntimeError("init_cuda_graph must run before plan_cuda_graph")
        indptr_buf, indices_buf = self._static
        bs, n = batch.batch_size, batch.kv_indices.shape[0]
        if n > indices_buf.shape[0]:
            raise ValueError(f"decode batch holds {n} context slots; the graph buffers hold {indices_buf.shape[0]}")
        indptr_buf[: bs + 1].copy_(batch.kv_indptr, non_blocking=True)
        indices_buf[:n].copy_(batch.kv_indices, non_blocking=True)
        self._decode = True
        self._kv_indptr, self._kv_indices = indptr_buf[: bs + 1], indices_buf
        self._max_qo_len = 1
        self._choose_tiling(bs)

    def _choose_tiling(self, batch_size: int) -> None:
        """The decode kernel's split count and tiling for this batch size."""
        self._num_kv_splits = self.num_kv_splits(batch_size, self._num_kv_heads())
        self._config = decode_config(batch_size)

    def forward(self, q, k, v, layer_id: int, scaling: float, batch: ForwardBatch) -> torch.Tensor:
        pool = self.kv_pool
        store_kv(pool.k_buffer[layer_id], pool.v_buffer[layer_id], batch.out_cache_loc, k, v)
        return self._attend(q, layer_id, scaling, batch)

    def forward_rope(self, q, k, v, layer_id: int, scaling: float, batch: ForwardBatch, rotary, positions):
        pool = self.kv_pool
        k_buf, v_buf = pool.k_buffer[layer_id], pool.v_buffer[layer_id]
        if self._decode and use_kernels(q) and q.dtype == k.dtype == v.dtype == k_buf.dtype:
            return decode_attention(q, k_buf, v_buf, self._kv_indptr, self._kv_indices, scaling, self._num_kv_splits,
                                    counters=self._counters, new_kv=(k, v, batch.out_cache_loc),
                                    rope=(positions, rotary.cos_sin_cache, rotary.is_neox_style), config=self._config)
        rotated = rotate_and_store(q, k, v, k_buf, v_buf, batch.out_cache_loc, rotary, positions)
        if rotated is None:
            return super().forward_rope(q, k, v, layer_id, scaling, batch, rotary, positions)
        return self._attend(rotated, layer_id, scaling, batch)

    def _attend(self, q: torch.Tensor, layer_id: int, scaling: float, batch: ForwardBatch) -> torch.Tensor:
        """Attention of q over the contexts, the new tokens' K/V already in the pool."""
        pool = self.kv_pool
        k_buf, v_buf = pool.k_buffer[layer_id], pool.v_buffer[layer_id]
        q = q.contiguous()
        if self._decode:
            return decode_attention(q, k_buf, v_buf, self._kv_indptr, self._kv_indices, scaling, self._num_kv_splits,
                                    counters=self._counters, config=self._config)
        return tree_attention(q, k_buf, v_buf, batch.qo_indptr, batch.kv_indptr, batch.kv_indices, scaling,
                              batch.custom_mask, max_qo_len=self._max_qo_len)
