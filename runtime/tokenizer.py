"""Tokenizer loading and incremental detokenization (front end side)."""

from __future__ import annotations

from typing import Any, Sequence


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class IncrementalDetokenizer:
    """Decodes a growing token list into text pieces without re-emitting or splitting characters.

    Text is produced only up to the last complete character (a byte-level token may end inside
    a UTF-8 sequence). `hold_back` keeps the longest tail that is a prefix of a stop string, so a
    stream never shows text that the final, stop-trimmed answer drops.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.stop_strings = list(stop_strings)
        self.ids: list = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # decoded so far (complete characters)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def add(self, new_ids: Sequence[int]) -> None:
        self.ids.extend(new_ids)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)

    def visible_text(self) -> str:
        """The text safe to stream: without a tail that could still become a stop string."""
        text = self.text
        for s in self.stop_strings:
            idx = text.find(s)
            if idx >= 0:
                text = text[:idx]
        hold = 0
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return text[: len(text) - hold] if hold else text

    def final_text(self, matched_stop: Any = None) -> str:
        """The whole output decoded at once, cut at the matched stop string."""
        text = self._decode(self.ids)
        if isinstance(matched_stop, str):
            idx = text.find(matched_stop)
            if idx >= 0:
                text = text[:idx]
        return text
