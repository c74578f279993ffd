"""The two ceilings every GPU benchmark here reports against, measured in the same run.

- copy bandwidth: a 1 GiB device-to-device copy, counting bytes read plus bytes written (GB/s);
- bf16 matmul rate: an 8192 x 8192 x 8192 product of random bf16 matrices through torch (TFLOP/s).
Both are medians of `triton.testing.do_bench`. `run_info` gives the date, device and commit a
figure is filed with in BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import subprocess
import sys
import tempfile

import torch
from triton.testing import do_bench


def _copy_GBps(rep_ms: int) -> float:
    n = 1 << 30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), rep=rep_ms, return_mode="median")
    return 2 * n / ms / 1e6


def _bf16_mm_TFLOPs(rep_ms: int) -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, rep=rep_ms, return_mode="median")
    return 2 * 8192**3 / ms / 1e9


def measure_limits(rep_ms: int = 200) -> dict:
    """{"copy_GBps": ..., "bf16_mm_TFLOPs": ...} of the current CUDA device, measured now."""
    limits = {"copy_GBps": _copy_GBps(rep_ms), "bf16_mm_TFLOPs": _bf16_mm_TFLOPs(rep_ms)}
    torch.cuda.empty_cache()
    return limits


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=pathlib.Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_info() -> dict:
    """Date (UTC), device name, torch version and the repository's commit (`LMLANG_COMMIT` when
    set: a copy of the tree without its .git, as on a lent GPU machine, cannot ask git)."""
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name(), torch=torch.__version__,
                commit=os.environ.get("LMLANG_COMMIT") or _git_commit())


def print_limits(limits: dict, info: dict) -> None:
    print(f"# {info['date']}  {info['device']}  commit {info['commit']}  torch {info['torch']}")
    print(f"# measured limits: copy {limits['copy_GBps']:,.0f} GB/s (read + write), "
          f"bf16 matmul {limits['bf16_mm_TFLOPs']:,.0f} TFLOP/s", flush=True)


def start_dummy_model_run(script: str, config_json: str) -> tuple[dict, dict, str]:
    """The common start of a GPU benchmark on a model with random weights: exits when there is no
    CUDA device, measures and prints the limits, writes a dummy checkpoint of `config_json` to a
    temporary directory. Returns (limits, run info, checkpoint path)."""
    if not torch.cuda.is_available():
        sys.exit(f"{script} needs a CUDA device")
    from dummy_checkpoint import make_dummy_checkpoint  # a sibling script, on sys.path when run from here

    limits, info = measure_limits(), run_info()
    print_limits(limits, info)
    return limits, info, make_dummy_checkpoint(config_json, tempfile.mkdtemp(prefix="lmlang-dummy-"))
