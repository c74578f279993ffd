"""Test utilities: tiny checkpoints and tokenizers made on the fly (no model hub).

    make_tokenizer(path, vocab_size=512) -> str
    make_tiny_checkpoint(path, arch, seed=0, *, max_shard_size=None, mtp_layers=0, **config_overrides) -> str
    make_tiny_fp8_checkpoint(path, arch="deepseek_v3", seed=0, *, block_size=(128, 128), ...) -> str
    train_tiny_checkpoint(path, arch, steps=300, device="cpu", *, seed=0, ...) -> str  (trained on Python source)

Submodules (imported explicitly): `lmlang.testing.fp8` (the FP8 checkpoint writer),
`lmlang.testing.forward` (`ForwardDriver`: run a runtime model on hand-built batches),
`lmlang.testing.parity` (transformers' greedy reference), `lmlang.testing.train_tiny` (trained
tiny checkpoints and their Python-source text). All are imported lazily; they import torch / transformers / tokenizers only when called.
`import lmlang` never imports this package.
"""

from typing import Any

__all__ = ["make_tokenizer", "make_tiny_checkpoint", "make_tiny_fp8_checkpoint", "train_tiny_checkpoint", "TINY_ARCHS"]


def __getattr__(name: str) -> Any:
    if name == "make_tokenizer":
        from lmlang.testing.tokenizer import make_tokenizer

        return make_tokenizer
    if name == "make_tiny_fp8_checkpoint":
        from lmlang.testing.fp8 import make_tiny_fp8_checkpoint

        return make_tiny_fp8_checkpoint
    if name == "train_tiny_checkpoint":
        from lmlang.testing.train_tiny import train_tiny_checkpoint

        return train_tiny_checkpoint
    if name in ("make_tiny_checkpoint", "TINY_ARCHS"):
        from lmlang.testing import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'lmlang.testing' has no attribute {name!r}")
