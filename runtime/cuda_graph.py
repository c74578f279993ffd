"""Decode forwards replayed from CUDA graphs, one graph per batch-size bucket.

A decode step of a small batch is a few hundred short kernels; launching them one by one from
Python costs more than running them. `CudaGraphRunner.capture` records the whole decode forward
(model + logits) once per bucket size, largest first, all graphs sharing one memory pool. A decode
batch of n sequences then runs as: build the batch padded to the smallest bucket B >= n (padding
rows write their K/V to the dummy slot 0 and attend to it alone), copy its token ids, positions
and output slots into the static input buffers, let the attention backend plan into its static
metadata buffers (`AttentionBackend.plan_cuda_graph`), replay, and read the first n rows of the
static logits.

What a graph may touch is fixed at capture: the static inputs, the KV pool, the model's weights
and the backend's static buffers. Context lengths change freely between replays; the batch size
is the bucket's; the total number of context slots must fit `kv_capacity` (else the step runs
eagerly). With `torch_compile`, the forward is compiled first (dynamic batch dimension) and the
compiled code is what gets captured.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Callable

import torch

from lmlang.runtime.attention.compiled_op import forward_batch_context
from lmlang.runtime.forward_batch import ForwardBatch, ForwardMode

if TYPE_CHECKING:
    from lmlang.runtime.model_runner import ModelRunner

logger = logging.getLogger(__name__)

_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)
WARMUP_RUNS = 2  # eager runs before each capture: compile kernels (and the torch.compile graph) first


def graph_batch_sizes(max_batch_size: int) -> list:
    """The bucket sizes captured for decode batches of up to `max_batch_size` sequences."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = [b for b in _BUCKETS if b < max_batch_size]
    sizes += list(range(_BUCKETS[-1] + 64, max_batch_size, 64))
    return sizes + [max_batch_size]


class CudaGraphRunner:
    """Captures and replays decode graphs for `batch_sizes` (see the module docstring).

    `forward_fn(batch) -> logits [batch_size, vocab] float32` is the forward to capture.
    Invariant: between `capture` and the end of the runner's life, the static buffers, the KV
    pool and the weights keep their storage (graphs hold raw pointers into them).
    """

    def __init__(self, runner: "ModelRunner", batch_sizes: list, forward_fn: Callable[[ForwardBatch], torch.Tensor],
                 kv_capacity: int) -> None:
        self.runner = runner
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_batch_size = self.batch_sizes[-1]
        self.forward_fn = forward_fn
        self.kv_capacity = kv_capacity
        device = runner.device
        self.input_ids = torch.zeros(self.max_batch_size, dtype=torch.int64, device=device)  # [max_bs]
        self.positions = torch.zeros(self.max_batch_size, dtype=torch.int64, device=device)
        self.out_cache_loc = torch.zeros(self.max_batch_size, dtype=torch.int64, device=device)  # 0 = dummy slot
        self.graphs: dict = {}
        self.outputs: dict = {}  # bucket -> logits [bucket, vocab] in the graph pool
        self.static_batches: dict = {}
        self.pool = None
        self.capture_seconds = 0.0  # capture alone
        self.warmup_seconds = 0.0  # eager warm-up runs (kernel compilation, torch.compile)
        runner.attn_backend.init_cuda_graph(self.max_batch_size, kv_capacity)

    def bucket(self, batch_size: int) -> int:
        """The smallest captured size >= batch_size."""
        return self.batch_sizes[bisect.bisect_left(self.batch_sizes, batch_size)]

    def can_run(self, batch_size: int, num_kv_indices: int) -> bool:
        """Whether a decode batch of this size and total context fits a captured graph."""
        return batch_size <= self.max_batch_size and num_kv_indices + self.max_batch_size <= self.kv_capacity

    def capture(self) -> None:
        backend = self.runner.attn_backend
        stream = torch.cuda.Stream(self.runner.device)
        for bs in reversed(self.batch_sizes):
            dummy = self.runner.builder.build(ForwardMode.DECODE, [], pad_to=bs)  # bs rows of padding
            batch = dataclasses.replace(
                dummy, input_ids=self.input_ids[:bs], positions=self.positions[:bs],
                out_cache_loc=self.out_cache_loc[:bs],
            )
            backend.plan_cuda_graph(batch)
            t0 = time.perf_counter()
            with forward_batch_context(batch):
                for _ in range(WARMUP_RUNS):
                    self.forward_fn(batch)
            torch.cuda.synchronize(self.runner.device)
            t1 = time.perf_counter()
            graph = torch.cuda.CUDAGraph()
            with forward_batch_context(batch), torch.cuda.graph(graph, pool=self.pool, stream=stream):
                out = self.forward_fn(batch)
            torch.cuda.synchronize(self.runner.device)
            self.warmup_seconds += t1 - t0
            self.capture_seconds += time.perf_counter() - t1
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs], self.outputs[bs], self.static_batches[bs] = graph, out, batch
        logger.info("captured %d decode graphs (batch sizes %s) in %.1f s (+%.1f s warm-up)",
                    len(self.graphs), self.batch_sizes, self.capture_seconds, self.warmup_seconds)

    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Runs a decode batch already padded to a bucket size; returns logits [bucket, vocab]
        (graph memory: valid until the next replay)."""
        bs = batch.batch_size
        static = self.static_batches[bs]
        static.input_ids.copy_(batch.input_ids, non_blocking=True)
        static.positions.copy_(batch.positions, non_blocking=True)
        static.out_cache_loc.copy_(batch.out_cache_loc, non_blocking=True)
        self.runner.attn_backend.plan_cuda_graph(batch)
        self.graphs[bs].replay()
        return self.outputs[bs]
