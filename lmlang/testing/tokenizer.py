"""A small byte-level BPE tokenizer with a ChatML chat template, trained locally.

`make_tokenizer(path)` trains on `corpus.corpus_lines()` with the `tokenizers` library and saves
a directory that `transformers.AutoTokenizer.from_pretrained(path)` loads as a fast tokenizer.
Every byte is in the base alphabet, so any text round-trips. Special tokens take the first ids:

    0 <|endoftext|>  bos and pad; also an eos for plain-text generation
    1 <|im_start|>
    2 <|im_end|>      eos (the end of a chat turn)

No token is added automatically on encode (like GPT-2 and Qwen).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterable, Sequence

from lmlang.testing.corpus import corpus_lines

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
BOS_TOKEN = ENDOFTEXT
PAD_TOKEN = ENDOFTEXT
EOS_TOKEN = IM_END
MODEL_MAX_LENGTH = 2048

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unsupported chat role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def train_byte_level_bpe(lines: Iterable[str], vocab_size: int, special_tokens: Sequence[str]) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `lines` (deterministic for the same input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    return train_byte_level_bpe(corpus_lines(), vocab_size, SPECIAL_TOKENS).to_str()


def make_tokenizer(path: str | os.PathLike, vocab_size: int = 512) -> str:
    """Writes the test tokenizer to directory `path` (created if needed); returns `path`.

    `vocab_size` counts the 3 special tokens and the 256 byte tokens, so it must be > 259;
    the result has exactly `vocab_size` tokens unless the corpus runs out of merges first.
    Deterministic: the same `vocab_size` gives the same files everywhere. The files are
    written directly (`tokenizer.json`, and `tokenizer_config.json` holding the special tokens
    and `chat_template`) so that every transformers version reads them the same way.
    """
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS) + 256} (specials + bytes), got {vocab_size}")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(_trained_tokenizer_json(vocab_size))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "additional_special_tokens": [IM_START, IM_END],
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return path
