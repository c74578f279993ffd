"""Engine options shared by `lmlang run --model` and `lmlang serve`, and loading with progress.

The options are a table mapped onto `lmlang.runtime.config.EngineConfig` fields; an option not
given on the command line is not passed, so the engine's own default applies.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any, Iterator

# (flag, EngineConfig field, type, help); choices come from the runtime's config constants
_OPTIONS = (
    ("--device", "device", str, "cpu or cuda (default: cpu)"),
    ("--dtype", "dtype", str, "weight and activation dtype (default: auto = the checkpoint's)"),
    ("--tokenizer-path", "tokenizer_path", str, "tokenizer directory if not the model's"),
    ("--context-length", "context_length", int, "override the model's context length"),
    ("--prefix-cache", "prefix_cache", str, "prefix cache kind (default: radix)"),
    ("--page-size", "page_size", int, "KV cache page size in tokens (default: 1)"),
    ("--max-total-tokens", "max_total_tokens", int, "KV cache size in tokens (default: from free GPU memory; 32768 on CPU)"),
    ("--max-running-requests", "max_running_requests", int, "most requests decoded together (default: 128)"),
    ("--chunked-prefill-size", "chunked_prefill_size", int,
     "most prompt tokens per prefill step (default: 2048)"),
    ("--schedule-policy", "schedule_policy", str, "order of waiting requests (default: fcfs)"),
    ("--mem-fraction-static", "mem_fraction_static", float, "GPU memory share for weights + KV (default: 0.85)"),
    ("--attention-backend", "attention_backend", str, "attention kernels (default: flashinfer on CUDA, torch on CPU)"),
    ("--load-format", "load_format", str, "auto (read weights) or dummy (random weights, for benchmarks)"),
    ("--seed", "seed", int, "random seed (default: 0)"),
)
_CHOICES = {"device": "DEVICES", "dtype": "DTYPES", "prefix_cache": "PREFIX_CACHES",
            "schedule_policy": "SCHEDULE_POLICIES", "load_format": "LOAD_FORMATS"}
_FLAGS = (
    ("--torch-compile", "torch_compile", True, "compile the model forward with torch.compile"),
    ("--disable-cuda-graph", "cuda_graph", False, "do not replay decode steps as CUDA graphs"),
)


def add_engine_options(parser: argparse.ArgumentParser, title: str) -> None:
    from lmlang.runtime import config

    group = parser.add_argument_group(title)
    for flag, dest, kind, text in _OPTIONS:
        choices = getattr(config, _CHOICES[dest]) if dest in _CHOICES else None
        metavar = None if choices else flag.lstrip("-").upper().replace("-", "_")
        group.add_argument(flag, dest=f"engine_{dest}", type=kind, choices=choices, default=None, metavar=metavar,
                           help=text)
    for flag, dest, value, text in _FLAGS:
        group.add_argument(flag, dest=f"engine_{dest}", action="store_const", const=value, default=None, help=text)


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The engine options given on the command line, as `Engine(...)` keyword arguments."""
    out = {}
    for name, value in vars(args).items():
        if name.startswith("engine_") and value is not None:
            out[name.removeprefix("engine_")] = value
    return out


def load_engine(model_path: str, kwargs: dict) -> Any:
    """`lmlang.runtime.Engine(model_path, **kwargs)`, showing what loads and for how long."""
    from lmlang.runtime import Engine

    with loading(model_path):
        return Engine(model_path, **with_progress(kwargs))


def with_progress(kwargs: dict) -> dict:
    """Engine arguments plus a weight-loading progress bar when stderr is a terminal."""
    return {"show_progress": sys.stderr.isatty(), **kwargs}


@contextlib.contextmanager
def loading(model_path: str) -> Iterator[None]:
    """Says what is being loaded, then how long it took (the engine core draws the progress bar)."""
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"no such model directory: {model_path} (give a Hugging Face checkpoint directory)")
    files = sorted(f for f in os.listdir(model_path) if f.endswith(".safetensors"))
    size = sum(os.path.getsize(os.path.join(model_path, f)) for f in files)
    print(f"lmlang: loading {model_path} ({len(files)} weight file(s), {size / 2**20:.1f} MiB)", file=sys.stderr,
          flush=True)
    start = time.perf_counter()
    yield
    print(f"lmlang: model ready in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
