"""Packed token bitmasks: the layout the runtime's sampler and the bitmask kernel consume.

Layout: an int32 array `[batch, ceil(vocab_size / 32)]`; bit `j` (least significant first) of
word `w` in a row is token `32 * w + j`; a set bit means the token is allowed. A freshly allocated
mask is all ones (every token allowed), the value for a request without a constraint.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bitmask_words(vocab_size: int) -> int:
    """Number of int32 words in one mask row for `vocab_size` tokens."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return (vocab_size + 31) // 32


def allocate_bitmask(batch: int, vocab_size: int, backend: str = "numpy") -> Any:
    """An all-allowed mask buffer `[batch, ceil(vocab_size/32)]` of int32.

    backend: "numpy" (np.ndarray) or "torch" (a CPU torch.Tensor; torch is imported lazily).
    """
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    words = bitmask_words(vocab_size)
    if backend == "numpy":
        return np.full((batch, words), -1, dtype=np.int32)
    if backend == "torch":
        import torch

        return torch.full((batch, words), -1, dtype=torch.int32)
    raise ValueError(f"unknown bitmask backend {backend!r}; expected 'numpy' or 'torch'")


def as_numpy_rows(buf: Any) -> np.ndarray:
    """A writable numpy view of a mask buffer (np.ndarray or CPU torch.Tensor), shape checked."""
    if isinstance(buf, np.ndarray):
        arr = buf
    elif hasattr(buf, "numpy") and hasattr(buf, "device"):
        if buf.device.type != "cpu":
            raise ValueError("the bitmask buffer must live on the CPU; copy it to the device afterwards")
        arr = buf.numpy()  # shares memory with the tensor
    else:
        raise TypeError(f"bitmask buffer must be a numpy array or a torch CPU tensor, got {type(buf).__name__}")
    if arr.dtype != np.int32 or arr.ndim != 2:
        raise ValueError(f"bitmask buffer must be int32 [batch, words], got {arr.dtype} with shape {arr.shape}")
    return arr


def pack_bool_mask(allowed: np.ndarray, words: int) -> np.ndarray:
    """Pack a bool array over tokens (length <= 32 * words) into `words` int32 words."""
    padded = np.zeros(words * 32, dtype=bool)
    padded[: allowed.shape[0]] = allowed
    return np.packbits(padded, bitorder="little").view("<i4").astype(np.int32, copy=False)


def bitmask_to_bool(buf: Any, row: int, vocab_size: int) -> np.ndarray:
    """Unpack row `row` of a mask buffer into a bool array of length `vocab_size`."""
    arr = as_numpy_rows(buf)
    if arr.shape[1] < bitmask_words(vocab_size):
        raise ValueError(f"buffer has {arr.shape[1]} words per row, too few for vocab_size {vocab_size}")
    bits = np.unpackbits(np.ascontiguousarray(arr[row]).view(np.uint8), bitorder="little")
    return bits[:vocab_size].astype(bool)
