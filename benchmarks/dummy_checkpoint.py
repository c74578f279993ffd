"""A checkpoint directory with a real model's config and no weights, for `load_format="dummy"`.

    python benchmarks/dummy_checkpoint.py benchmarks/configs/llama31_8b.json /tmp/llama31_8b

writes `config.json` (the given Hugging Face config, unchanged) and the test tokenizer
(`lmlang.testing.make_tokenizer`, 512 tokens). The model's vocabulary stays the config's: token ids
past the tokenizer's are valid model inputs and outputs (they detokenize to nothing), which is
all a benchmark with random weights needs. Load it with
`Engine(path, load_format="dummy", dtype="bfloat16", device="cuda")`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib


def make_dummy_checkpoint(config_json: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Writes `config.json` and a tokenizer into `out_dir` (created if needed); returns its path."""
    from lmlang.testing import make_tokenizer

    config = json.loads(pathlib.Path(config_json).read_text())
    if "architectures" not in config or "vocab_size" not in config:
        raise ValueError(f"{config_json} is not a Hugging Face model config (no architectures / vocab_size)")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    make_tokenizer(out)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a Hugging Face config.json")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    print(make_dummy_checkpoint(args.config, args.out_dir))


if __name__ == "__main__":
    main()
