"""Which quantization a model load applies, from the checkpoint's config and the user's request.

Two ways to FP8 (block-wise W8A8, DeepSeek-V3 style, see `fp8_linear.py`):
- the checkpoint is already FP8: its `config.json` has `quantization_config` with
  `quant_method: "fp8"` and `weight_block_size: [bn, bk]`, and every quantized weight comes with
  a float32 `weight_scale_inv` of one value per bn x bk block. The model's linear layers are
  swapped for FP8 ones *before* loading, so the checkpoint tensors load into them directly.
- online (`quantization="fp8"` on a bf16/fp16/fp32 checkpoint): the model loads as usual and
  its linear layers are quantized *after* loading, with 128 x 128 blocks.
Random weights (`load_format="dummy"`) of an FP8 checkpoint's config are drawn in high precision
and quantized online, so their scales are meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

QUANTIZATION_METHODS = ("fp8",)
DEFAULT_BLOCK = (128, 128)


@dataclass(frozen=True)
class Fp8Config:
    """Block-wise FP8: weights in `weight_block_size` (rows x cols) blocks, activations in 1 x cols
    groups. Modules whose qualified name starts with one of `ignored_modules` stay unquantized."""

    weight_block_size: tuple[int, int] = DEFAULT_BLOCK
    ignored_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bn, bk = self.weight_block_size
        if bn < 1 or bk < 16 or bk & (bk - 1):
            raise ValueError(
                f"fp8 weight_block_size {list(self.weight_block_size)}: rows must be >= 1 and columns a power of two >= 16"
            )

    @classmethod
    def from_checkpoint(cls, quantization_config: Mapping[str, Any]) -> "Fp8Config":
        """Reads a Hugging Face `quantization_config` of `quant_method: "fp8"`."""
        block = quantization_config.get("weight_block_size")
        if not block or len(block) != 2:
            raise ValueError(
                "only block-wise FP8 checkpoints load (quantization_config.weight_block_size, e.g. [128, 128]); "
                "this one has none (per-tensor FP8 is not supported)"
            )
        scheme = quantization_config.get("activation_scheme", "dynamic")
        if scheme != "dynamic":
            raise ValueError(f"fp8 activation_scheme {scheme!r} is not supported; only 'dynamic'")
        ignored = quantization_config.get("modules_to_not_convert") or quantization_config.get("ignored_layers") or ()
        return cls((int(block[0]), int(block[1])), tuple(ignored))

    def is_ignored(self, module_name: str) -> bool:
        return any(module_name == p or module_name.startswith(p + ".") for p in self.ignored_modules)


@dataclass(frozen=True)
class QuantizationPlan:
    """What `load_model` does: swap layers before loading (`from_checkpoint`) or quantize after."""

    config: Fp8Config
    from_checkpoint: bool


def stored_quantization_config(hf_config: Any) -> Optional[Mapping[str, Any]]:
    """The checkpoint's own `quantization_config` as a mapping (None when it has none)."""
    stored = getattr(hf_config, "quantization_config", None)
    if stored is not None and not isinstance(stored, Mapping):
        stored = stored.to_dict()
    return stored or None


def checkpoint_block_rows(hf_config: Any) -> Optional[int]:
    """Rows of the weight blocks an FP8 checkpoint stores (`weight_block_size[0]`), None when the
    checkpoint is not block-quantized: the alignment a stacked projection's shards need there."""
    stored = stored_quantization_config(hf_config)
    block = stored.get("weight_block_size") if stored and stored.get("quant_method") == "fp8" else None
    return int(block[0]) if block else None


def resolve_quantization(
    hf_config: Any, requested: Union[None, str, Fp8Config], load_format: str = "auto"
) -> Optional[QuantizationPlan]:
    """The plan for loading `hf_config`'s checkpoint with `requested` quantization (None: as the
    checkpoint is). An `Fp8Config` requests online FP8 with its block size (tests use small blocks)."""
    if requested is not None and not isinstance(requested, Fp8Config) and requested not in QUANTIZATION_METHODS:
        raise ValueError(f"unsupported quantization {requested!r}; supported: {QUANTIZATION_METHODS}")
    stored = stored_quantization_config(hf_config)
    if stored:
        method = stored.get("quant_method")
        if method != "fp8":
            raise ValueError(f"checkpoint quantization {method!r} is not supported; supported: {QUANTIZATION_METHODS}")
        if isinstance(requested, Fp8Config):
            raise ValueError("the checkpoint is already FP8; an online Fp8Config cannot be applied to it")
        return QuantizationPlan(Fp8Config.from_checkpoint(stored), from_checkpoint=load_format != "dummy")
    if requested is None:
        return None
    return QuantizationPlan(requested if isinstance(requested, Fp8Config) else Fp8Config(), from_checkpoint=False)
