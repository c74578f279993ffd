"""The per-request interface the runtime drives: `CompiledGrammar` and `GrammarMatcher`.

A `CompiledGrammar` is immutable and shared: it holds everything that depends only on the
constraint and the tokenizer (automata, per-state token masks, cached lazily and thread-safe to
read). Each request gets its own `GrammarMatcher` from `CompiledGrammar.matcher()`; a matcher is
cheap to create and to `fork()`, and is used by one thread at a time.

Decode loop, one step per generated token::

    m.fill_bitmask(buf, row)          # buf: int32 [batch, ceil(V/32)], see grammar/bitmask.py
    ... sample token t under the mask ...
    assert m.accept(t)                # advances; False (state unchanged) if t was not allowed
    if m.is_done(): finish the request

Invariants every implementation keeps:
- Exactness: after `fill_bitmask`, token t's bit is set iff the bytes accepted so far followed
  by t's bytes can still be completed to a string of the language (for CFGs: under the greedy
  lexer, see grammar/cfg.py). Special tokens are never allowed except the eos tokens, which are
  allowed iff `can_terminate()`. Token ids >= the tokenizer's length (padding columns of a wider
  logits matrix) are never allowed.
- `accept(t)` returns True iff t's bit would be set; on False nothing changes.
- Accepting an eos token terminates the matcher (`is_done()`); after that every accept is False.
- `rollback(k)` undoes the last k successful `accept*` calls (a terminating eos counts as one);
  `fork()` returns an independent matcher at the same state (history included).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .tokenizer_info import TokenizerInfo


class GrammarMatcher(ABC):
    """The state of one constrained generation (see the module docstring for the invariants)."""

    @property
    @abstractmethod
    def tokenizer_info(self) -> TokenizerInfo:
        """The tokenizer this matcher's masks are for."""

    @abstractmethod
    def fill_bitmask(self, buf: Any, row: int = 0) -> None:
        """Write the allowed-token mask for the current state into `buf[row]`.

        buf: int32 np.ndarray or CPU torch.Tensor `[batch, ceil(vocab_size/32)]` (see
        `allocate_bitmask`); bit j of word w = token 32*w+j. Every word of the row is written.
        After termination the row allows nothing but the eos tokens.
        """

    @abstractmethod
    def accept(self, token_id: int) -> bool:
        """Advance by one token. False (state unchanged) if the token is not allowed now."""

    @abstractmethod
    def accept_bytes(self, data: bytes) -> bool:
        """Advance by raw bytes (e.g. jump-forward text). False (state unchanged) if not allowed.

        Counts as one step for `rollback`. Empty input is accepted and still counts as a step.
        """

    def accept_text(self, text: str) -> bool:
        """`accept_bytes(text.encode("utf-8"))`."""
        return self.accept_bytes(text.encode("utf-8"))

    @abstractmethod
    def rollback(self, num_steps: int = 1) -> None:
        """Undo the last `num_steps` successful accept calls; ValueError if there are fewer."""

    @abstractmethod
    def fork(self) -> "GrammarMatcher":
        """An independent copy at the same state (advancing one never affects the other)."""

    @abstractmethod
    def can_terminate(self) -> bool:
        """True iff the text accepted so far is a complete string of the language (eos allowed)."""

    @abstractmethod
    def is_done(self) -> bool:
        """True after an eos was accepted, or when no further byte is possible (the language
        admits nothing longer); the runtime then ends the request."""

    @abstractmethod
    def forced_text(self) -> str:
        """The longest text every continuation must start with from here (jump-forward).

        Empty if the next byte is not determined or the matcher can terminate here. Only whole
        UTF-8 characters are returned. Does not advance the matcher (call `accept_text`).
        """

    @property
    @abstractmethod
    def num_steps(self) -> int:
        """How many accept calls can be rolled back (the length of the history)."""


class HistoryMatcher(GrammarMatcher):
    """Shared by the concrete matchers: a compiled grammar, a terminated flag and an undo history.

    Subclasses set `_compiled`, `_terminated` and `_history`, and give `_current_mask()` (the
    packed mask of the current state without the eos bits), `_push()` and `accept_bytes`.
    """

    _compiled: Any
    _terminated: bool
    _history: list

    @property
    def tokenizer_info(self) -> TokenizerInfo:
        return self._compiled.tokenizer_info

    @property
    def num_steps(self) -> int:
        return len(self._history)

    @abstractmethod
    def _current_mask(self) -> Any:
        """The current state's allowed-token words (eos excluded)."""

    @abstractmethod
    def _push(self) -> None:
        """Records the current state on the history (one step for `rollback`)."""

    def accept(self, token_id: int) -> bool:
        info = self._compiled.tokenizer_info
        if self._terminated or not 0 <= token_id < info.vocab_size:
            return False
        if token_id in info.eos_token_ids:
            if not self.can_terminate():
                return False
            self._push()
            self._terminated = True
            return True
        data = info.token_bytes[token_id]
        return data is not None and self.accept_bytes(data)

    def fill_bitmask(self, buf: Any, row: int = 0) -> None:
        from .bitmask import as_numpy_rows

        rows = as_numpy_rows(buf)
        info = self._compiled.tokenizer_info
        if self._terminated:
            rows[row] = info.eos_bits
            return
        rows[row] = self._current_mask()
        if self.can_terminate():
            rows[row] |= info.eos_bits


class CompiledGrammar(ABC):
    """A constraint compiled for one tokenizer; immutable, shared across requests and threads."""

    kind: str  # "regex" | "grammar" | "json_schema"
    source: str  # the constraint as given (a JSON schema is stored as canonical JSON text)

    @property
    @abstractmethod
    def tokenizer_info(self) -> TokenizerInfo:
        """The tokenizer the masks are computed for."""

    @abstractmethod
    def matcher(self) -> GrammarMatcher:
        """A fresh matcher at the start state."""
