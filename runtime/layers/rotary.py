"""Rotary position embedding, applied by position index (ragged batches need no padding).

`get_rope` builds a `RotaryEmbedding` whose `cos_sin_cache` holds, for every position the
model can see, `cos | sin` of `position * inv_freq` (float32, times the scaling's attention
factor). Applying it gathers rows by `positions`, so any mix of sequences and offsets works.
On CUDA the `lmlang.kernels.rotary` kernel rotates q and k in one launch from the same cache
(attention backends may fuse it into their KV store or decode kernel); kernels and torch code
round as Hugging Face does, every op in the activations' dtype.

Scaling types (`rope_scaling["rope_type"]`, or the legacy key `"type"`):
- default: `inv_freq = base ** (-2i / rotary_dim)`.
- `linear`: inv_freq / factor (position interpolation); the cache covers max_position * factor.
- `dynamic`: NTK-aware base for the whole extended context (max_position * factor), fixed
  once. Hugging Face instead recomputes the base from the current sequence length, which a
  KV cache shared across steps cannot follow; so for sequences longer than max_position the
  two differ (ours is the vLLM/SGLang convention), and below it Hugging Face uses plain rope.
- `llama3`: Llama 3.1 frequency-band rescaling (factor, low/high_freq_factor,
  original_max_position_embeddings).
- `yarn`: NTK-by-parts interpolation plus the attention factor (mscale) on cos/sin;
  DeepSeek's `mscale` / `mscale_all_dim` ratio is supported, as are beta_fast / beta_slow /
  truncate. `yarn_mscale` is public because DeepSeek also scales its softmax with it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from lmlang.runtime.layers.dispatch import use_kernels

RopeScaling = Optional[Mapping[str, Any]]


class RotaryEmbedding(nn.Module):
    """Rotates the first `rotary_dim` features of each head of q and k.

    `is_neox_style=True` pairs feature i with i + rotary_dim/2 (Llama, Qwen);
    `False` pairs 2i with 2i+1 (GPT-J, DeepSeek).
    """

    def __init__(
        self, head_dim: int, rotary_dim: int, inv_freq: torch.Tensor, max_positions: int,
        attention_factor: float, is_neox_style: bool,
    ) -> None:
        super().__init__()
        if rotary_dim > head_dim or rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even and <= head_dim ({head_dim}), got {rotary_dim}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.max_positions = max_positions
        self.is_neox_style = is_neox_style
        t = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
        freqs = t[:, None] * inv_freq.float()[None, :]  # [max_positions, rotary_dim / 2]
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1) * attention_factor
        # kept in float32 whatever the model dtype; cast to the activations' dtype at use
        self.register_buffer("cos_sin_cache", cache, persistent=False)  # [max_positions, rotary_dim]

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [n] int64; q: [n, num_heads, head_dim]; k: [n, num_kv_heads, head_dim]."""
        if use_kernels(q) and q.dtype == k.dtype:
            from lmlang.kernels.rotary import apply_rotary as rotary_kernel

            return rotary_kernel(q, k, positions, self.cos_sin_cache, is_neox=self.is_neox_style)
        cos, sin = self.cos_sin_cache.index_select(0, positions).chunk(2, dim=-1)  # [n, rotary_dim / 2]
        return apply_rotary(q, cos, sin, self.is_neox_style), apply_rotary(k, cos, sin, self.is_neox_style)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, max_positions={self.max_positions}"


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox_style: bool) -> torch.Tensor:
    """The torch rotary op (CPU and compiled paths). x: [n, heads, head_dim]; cos/sin: [n, rotary_dim / 2]."""
    half = cos.shape[-1]
    rot, rest = x[..., : 2 * half], x[..., 2 * half :]
    cos = cos.unsqueeze(1).to(x.dtype)  # [n, 1, rotary_dim / 2]
    sin = sin.unsqueeze(1).to(x.dtype)
    if is_neox_style:
        x1, x2 = rot[..., :half], rot[..., half:]
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    out = torch.cat([o1, o2], dim=-1) if is_neox_style else torch.stack([o1, o2], dim=-1).flatten(-2)
    return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


def _base_inv_freq(base: float, rotary_dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1 * mscale * ln(scale) + 1 (1 for scale <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


# Each returns (inv_freq [rotary_dim / 2] float32, positions the cache must cover, attention factor).
RopeRule = Callable[[float, int, int, Mapping[str, Any]], tuple[torch.Tensor, int, float]]


def _default(base: float, rotary_dim: int, max_position: int, s: Mapping[str, Any]):
    return _base_inv_freq(base, rotary_dim), max_position, 1.0


def _linear(base: float, rotary_dim: int, max_position: int, s: Mapping[str, Any]):
    factor = float(s["factor"])
    return _base_inv_freq(base, rotary_dim) / factor, int(max_position * factor), 1.0


def _dynamic(base: float, rotary_dim: int, max_position: int, s: Mapping[str, Any]):
    factor = float(s["factor"])
    max_len = int(max_position * factor)
    ntk_base = base * ((factor * max_len / max_position) - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))
    return _base_inv_freq(ntk_base, rotary_dim), max_len, 1.0


def _llama3(base: float, rotary_dim: int, max_position: int, s: Mapping[str, Any]):
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    inv_freq = _base_inv_freq(base, rotary_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the low band edge, 1 at the high one
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    is_mid_band = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_mid_band, interpolated, scaled), max_position, 1.0


def _yarn(base: float, rotary_dim: int, max_position: int, s: Mapping[str, Any]):
    original = int(s["original_max_position_embeddings"])
    factor = float(s.get("factor") or max_position / original)
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = s.get("mscale"), s.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        # the dimension whose wavelength makes `num_rotations` turns over the original context
        return rotary_dim * math.log(original / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1 for fast (high-frequency) dims, kept as they were trained
    inv_freq = _base_inv_freq(base, rotary_dim)
    inv_freq = (inv_freq / factor) * (1 - extrapolate) + inv_freq * extrapolate
    return inv_freq, max(max_position, int(original * factor)), float(attention_factor)


ROPE_RULES: dict[str, RopeRule] = {
    "default": _default,
    "linear": _linear,
    "dynamic": _dynamic,
    "llama3": _llama3,
    "yarn": _yarn,
}


def get_rope(
    head_dim: int,
    rotary_dim: int,
    max_position: int,
    base: float,
    rope_scaling: RopeScaling = None,
    is_neox_style: bool = True,
) -> RotaryEmbedding:
    """A rotary embedding for `rope_scaling` (None or a Hugging Face `rope_scaling` dict)."""
    scaling = dict(rope_scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_RULES:
        raise ValueError(f"unsupported rope scaling type {rope_type!r}; supported: {sorted(ROPE_RULES)}")
    inv_freq, max_positions, attention_factor = ROPE_RULES[rope_type](float(base), rotary_dim, max_position, scaling)
    return RotaryEmbedding(head_dim, rotary_dim, inv_freq, max_positions, attention_factor, is_neox_style)


def rope_parameters(config: Any) -> tuple[float, RopeScaling, float]:
    """(base, scaling dict or None, partial_rotary_factor) from a Hugging Face config.

    Reads the transformers 5 layout (`config.rope_parameters` holding `rope_theta`) and the
    older one (`config.rope_theta` + `config.rope_scaling`).
    """
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    base = float(params["rope_theta"])
    partial = float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    return base, (None if rope_type == "default" else params), partial
