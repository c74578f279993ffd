"""Launch configurations for the fused MoE GEMM, stored as JSON data.

A table is keyed by the expert weight shape and dtype of the first projection, `w13` of shape
`[E, N, K]` (N = 2 * intermediate, K = hidden), and by the device:
`configs/fused_moe/E={E},N={N},K={K},dtype={dtype},device={device}.json`, a map from a token
count M (as a string) to a config; a call with M tokens takes the entry whose key is nearest.
Both projections of one `fused_experts` call use the same config (they share the token
alignment, which depends on BLOCK_SIZE_M). `configs/fused_moe/default.json` holds untuned
starting points per dtype, used when no table matches; `benchmarks/tune_fused_moe.py` writes
tuned tables. Keys inside a config follow vLLM/SGLang's names so tables can be compared.
"""

from __future__ import annotations

import functools
import json
import pathlib
from dataclasses import asdict, dataclass
from typing import Optional

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs" / "fused_moe"
DTYPE_NAMES = ("bf16", "fp16", "fp32", "fp8_w8a8")


@dataclass(frozen=True)
class FusedMoEConfig:
    """Tile sizes and launch options of `fused_moe_kernel`."""

    BLOCK_SIZE_M: int
    BLOCK_SIZE_N: int
    BLOCK_SIZE_K: int
    GROUP_SIZE_M: int
    num_warps: int
    num_stages: int

    def to_json(self) -> dict:
        return asdict(self)


def config_file_name(num_experts: int, n: int, k: int, dtype_name: str, device_name: str) -> str:
    """File name of the table for w13 `[num_experts, n, k]` on `device_name` (as torch reports it)."""
    device = device_name.replace(" ", "_").replace("/", "_")
    return f"E={num_experts},N={n},K={k},dtype={dtype_name},device={device}.json"


@functools.lru_cache(maxsize=None)
def _load_table(path: pathlib.Path) -> Optional[dict[int, FusedMoEConfig]]:
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return {int(m): FusedMoEConfig(**cfg) for m, cfg in raw.items()}


@functools.lru_cache(maxsize=None)
def _default_table(dtype_name: str) -> dict[int, FusedMoEConfig]:
    raw = json.loads((CONFIG_DIR / "default.json").read_text())
    return {int(m): FusedMoEConfig(**cfg) for m, cfg in raw[dtype_name].items()}


def get_fused_moe_config(
    num_tokens: int, num_experts: int, n: int, k: int, dtype_name: str, device_name: Optional[str] = None
) -> FusedMoEConfig:
    """The config for `num_tokens` tokens: the tuned table's nearest entry, else the default's."""
    if dtype_name not in DTYPE_NAMES:
        raise ValueError(f"fused MoE config: dtype {dtype_name!r} is not one of {DTYPE_NAMES}")
    table = None
    if device_name is not None:
        table = _load_table(CONFIG_DIR / config_file_name(num_experts, n, k, dtype_name, device_name))
    if table is None:
        table = _default_table(dtype_name)
    nearest = min(table, key=lambda m: (abs(m - num_tokens), m))
    return table[nearest]

