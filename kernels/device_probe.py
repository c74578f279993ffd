"""One-time device probes of the optional GEMM implementations (cuBLASLt, FlashInfer), cached.

An implementation a peer library provides is used only where a tiny run of it on the device
matched our reference; the answer is cached per (device, probe problem), so a model's many
layers probe once. A probe synchronizes the host, so it must not run during CUDA-graph capture.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)

ProbeKey = tuple[torch.device, int, int]  # (device, probe N, probe K)


def cached_probe(results: dict[ProbeKey, Optional[str]], key: ProbeKey, probe: Callable[..., Optional[str]],
                 what: str) -> Optional[str]:
    """`probe(*key)` (None: it works, else why not) the first time `key` is asked, its cached answer
    after. During CUDA-graph capture an unprobed key answers why it cannot be probed (not cached)."""
    if key not in results:
        if torch.cuda.is_current_stream_capturing():
            return f"cannot probe {what} during CUDA graph capture (probe at load time, before capturing)"
        with torch.cuda.device(key[0]):
            results[key] = probe(*key)
        if results[key] is not None:
            logger.info("%s not used on %s (probe N=%d, K=%d): %s", what, *key, results[key])
    return results[key]


def sm90_device(device: torch.device, what: str) -> tuple[torch.device, Optional[str]]:
    """(device, with its index filled in, and None) for an SM90 CUDA device, else (device, why
    `what` cannot run there)."""
    if device.type != "cuda":
        return device, f"device {device} is not CUDA"
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return device, f"{what} runs on SM90 only, this GPU is SM{major}{minor}"
    return device, None
