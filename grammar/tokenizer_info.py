"""`TokenizerInfo`: the byte string of every token of a vocabulary, for grammar matching.

Grammar matching works on bytes: a token is allowed iff its bytes extend the output legally.
Decoding conventions handled by `from_huggingface`:
- byte-level BPE (GPT-2, Llama 3, Qwen): every token character maps back to one byte through the
  GPT-2 byte<->unicode table;
- SentencePiece (Llama 2, Mistral): `▁` is a space, `<0xAB>` byte-fallback tokens are one byte;
- added tokens that are not special: their text as UTF-8.
Special tokens (bos, eos, pad, chat markers) have no grammar text: they are never allowed by a
mask, except the eos tokens when the grammar can end.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any, Sequence

import numpy as np

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def gpt2_unicode_to_bytes() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode table (printable stand-ins for all 256 bytes)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    byte_values = printable[:]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(byte_values, chars)}


class TokenizerInfo:
    """Byte strings of a vocabulary plus which ids are special and which end a generation.

    token_bytes[i]: the bytes token i contributes to the text, or None for a special token
    (and for ids beyond the tokenizer, up to `vocab_size`).
    vocab_size: the width of the model's logits (may exceed the tokenizer's length); masks have
    ceil(vocab_size / 32) words.
    eos_token_ids: tokens that end a generation; allowed only where the grammar can end.
    """

    def __init__(self, token_bytes: Sequence[bytes | None], eos_token_ids: Sequence[int], vocab_size: int | None = None):
        vocab_size = len(token_bytes) if vocab_size is None else vocab_size
        if vocab_size < len(token_bytes):
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(token_bytes)} tokens")
        for e in eos_token_ids:
            if not 0 <= e < vocab_size:
                raise ValueError(f"eos token id {e} is outside the vocabulary [0, {vocab_size})")
        self.token_bytes: list[bytes | None] = list(token_bytes) + [None] * (vocab_size - len(token_bytes))
        self.vocab_size = vocab_size
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(set(int(e) for e in eos_token_ids)))

    @property
    def num_words(self) -> int:
        """int32 words per mask row."""
        return (self.vocab_size + 31) // 32

    @cached_property
    def trie(self):
        """The token trie (grammar/token_trie.py), built on first use."""
        from .token_trie import TokenTrie

        return TokenTrie(self.token_bytes)

    @cached_property
    def eos_bits(self) -> np.ndarray:
        """int32 [num_words] with only the eos tokens' bits set."""
        from .bitmask import pack_bool_mask

        allowed = np.zeros(self.vocab_size, dtype=bool)
        allowed[list(self.eos_token_ids)] = True
        return pack_bool_mask(allowed, self.num_words)

    def decode(self, token_ids: Sequence[int]) -> bytes:
        """The bytes of a token sequence (special tokens contribute nothing)."""
        return b"".join(self.token_bytes[t] or b"" for t in token_ids)

    @classmethod
    def from_huggingface(
        cls, tokenizer: Any, vocab_size: int | None = None, eos_token_ids: Sequence[int] | None = None
    ) -> "TokenizerInfo":
        """Build from a transformers tokenizer (fast or slow) or a `tokenizers.Tokenizer`.

        vocab_size: the model's logits width (default: the tokenizer's length).
        eos_token_ids: override the tokenizer's eos token (e.g. from generation_config.json).
        """
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None and hasattr(tokenizer, "get_vocab") and hasattr(tokenizer, "to_str"):
            backend = tokenizer  # a raw tokenizers.Tokenizer
        vocab: dict[str, int] = tokenizer.get_vocab()
        n = max(vocab.values()) + 1 if vocab else 0
        byte_level, byte_fallback = _decoder_style(backend, vocab)
        special, added_text = _special_and_added(tokenizer, backend)
        to_byte = gpt2_unicode_to_bytes()
        token_bytes: list[bytes | None] = [None] * n
        for text, idx in vocab.items():
            if idx in special:
                continue
            if idx in added_text:
                token_bytes[idx] = added_text[idx].encode("utf-8")
            elif byte_fallback and _BYTE_FALLBACK.match(text):
                token_bytes[idx] = bytes([int(text[3:5], 16)])
            elif byte_level and all(c in to_byte for c in text):
                token_bytes[idx] = bytes(to_byte[c] for c in text)
            else:
                token_bytes[idx] = text.replace("\u2581", " ").encode("utf-8")
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return cls(token_bytes, eos_token_ids, vocab_size=max(vocab_size or n, n))


def _decoder_style(backend: Any, vocab: dict[str, int]) -> tuple[bool, bool]:
    """(byte_level, byte_fallback) from the tokenizer's decoder/model config."""
    if backend is not None:
        config = json.loads(backend.to_str())
        decoder = json.dumps(config.get("decoder"))
        model = config.get("model") or {}
        byte_level = '"ByteLevel"' in decoder
        byte_fallback = bool(model.get("byte_fallback")) or '"ByteFallback"' in decoder
        return byte_level, byte_fallback
    # A slow tokenizer without a backend: SentencePiece if it uses the ▁ marker.
    sentencepiece = any("\u2581" in t for t in list(vocab)[:2000])
    return not sentencepiece, sentencepiece


def _special_and_added(tokenizer: Any, backend: Any) -> tuple[set[int], dict[int, str]]:
    """Ids of special tokens, and the literal text of non-special added tokens."""
    special: set[int] = set(getattr(tokenizer, "all_special_ids", []) or [])
    added_text: dict[int, str] = {}
    if backend is not None:
        for idx, tok in backend.get_added_tokens_decoder().items():
            if tok.special:
                special.add(idx)
            else:
                added_text[idx] = tok.content
    return special, added_text
