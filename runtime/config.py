"""Engine arguments: one frozen dataclass, validated once, shared by front end and engine core."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

PREFIX_CACHES = ("radix", "block", "none")
SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight")
DEVICES = ("cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOAD_FORMATS = ("auto", "dummy")
QUANTIZATIONS = (None, "fp8")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine core needs to start.

    `max_total_tokens` is the size of the KV slot pool (None: derived from free device memory
    on CUDA, 32768 on CPU). `chunked_prefill_size` caps the new tokens of one prefill forward.
    `max_running_requests` caps the decode batch. Priority: a larger `priority` value is more
    urgent; waiting requests are ordered by priority first, then by `schedule_policy`.
    """

    model_path: str
    tokenizer_path: Optional[str] = None
    device: str = "cpu"
    dtype: str = "auto"
    prefix_cache: str = "radix"
    page_size: int = 1
    chunked_prefill_size: int = 2048
    max_total_tokens: Optional[int] = None
    max_running_requests: int = 128
    schedule_policy: str = "fcfs"
    load_format: str = "auto"
    seed: int = 0
    context_length: Optional[int] = None
    attention_backend: Optional[str] = None  # None: flashinfer on CUDA when available, torch on CPU
    mem_fraction_static: float = 0.85
    # in-batch prefix sharing: a waiting request sharing at least this many uncached tokens with
    # one being prefilled waits one round and then reuses that prefill from the cache
    min_shared_prefix: int = 16
    cuda_graph: bool = True
    cuda_graph_max_batch: int = 256
    torch_compile: bool = False
    # decode step N + 1 is launched before step N's tokens reach the host; None: on for CUDA
    overlap_schedule: Optional[bool] = None
    quantization: Optional[str] = None
    # torch threads in the engine core on CPU (None: half the cores, at most 8); more threads
    # than free cores make every small op wait on OpenMP barriers
    cpu_threads: Optional[int] = None
    log_level: str = "warning"
    show_progress: bool = False  # a progress bar over the weight files while the model loads

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise ValueError(f"{name} {what}, got {getattr(self, name)!r}")

        need(self.device in DEVICES, "device", f"must be one of {DEVICES}")
        need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}")
        need(self.prefix_cache in PREFIX_CACHES, "prefix_cache", f"must be one of {PREFIX_CACHES}")
        need(self.schedule_policy in SCHEDULE_POLICIES, "schedule_policy", f"must be one of {SCHEDULE_POLICIES}")
        need(self.load_format in LOAD_FORMATS, "load_format", f"must be one of {LOAD_FORMATS}")
        need(isinstance(self.page_size, int) and self.page_size >= 1, "page_size", "must be an int >= 1")
        need(self.chunked_prefill_size >= 1, "chunked_prefill_size", "must be >= 1")
        need(self.max_total_tokens is None or self.max_total_tokens >= 16, "max_total_tokens", "must be >= 16")
        need(self.max_running_requests >= 1, "max_running_requests", "must be >= 1")
        need(0 < self.mem_fraction_static < 1, "mem_fraction_static", "must be in (0, 1)")
        need(self.quantization in QUANTIZATIONS, "quantization", "must be None or 'fp8'")

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    @property
    def num_cpu_threads(self) -> int:
        import os

        return self.cpu_threads or max(1, min(8, (os.cpu_count() or 2) // 2))

    @property
    def tokenizer(self) -> str:
        return self.tokenizer_path or self.model_path
