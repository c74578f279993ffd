"""A deterministic 32k byte-level BPE tokenizer for benchmarks, trained here (no model hub).

Trained with `tokenizers` on the Python standard library's own .py sources (files sorted by
path, the first CORPUS_BYTES bytes), so it has merges for code, punctuation and JSON-like text.
Saved as a Hugging Face `tokenizer.json` + `tokenizer_config.json` under
`$LMLANG_BENCH_TOKENIZER_DIR` or `~/.cache/lmlang/bench_tokenizer` (the path is printed).

    python benchmarks/bench_tokenizer.py          # build if missing, print the path
    from benchmarks.bench_tokenizer import bench_tokenizer_dir
"""

from __future__ import annotations

import json
import os
import pathlib
import sysconfig

VOCAB_SIZE = 32768
CORPUS_BYTES = 24 * 1024 * 1024
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|endoftext|>"


def default_dir() -> pathlib.Path:
    env = os.environ.get("LMLANG_BENCH_TOKENIZER_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "lmlang" / "bench_tokenizer"


def _corpus() -> list[str]:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    texts, total = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= CORPUS_BYTES:
            break
    return texts


def build(path: pathlib.Path) -> None:
    """Train and save the tokenizer into `path`."""
    from lmlang.testing.tokenizer import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(_corpus(), VOCAB_SIZE, SPECIAL_TOKENS)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "model_max_length": 8192,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def bench_tokenizer_dir(path: pathlib.Path | None = None) -> pathlib.Path:
    """The tokenizer directory, built on first use."""
    path = path or default_dir()
    if not (path / "tokenizer.json").exists():
        build(path)
    return path


if __name__ == "__main__":
    print(bench_tokenizer_dir())
