"""Regex constraints: `CompiledRegex` (per-DFA-state token masks, cached) and `RegexMatcher`.

The mask of a DFA state is computed once by walking the whole token trie through the DFA
(grammar/token_trie.py) and cached on the compiled regex, so the steady-state cost of
`fill_bitmask` is a dict lookup and a copy into the buffer row. `precompute` fills that cache at
compile time, breadth-first from the start state within a time budget, in batched walks (much
cheaper per state than one walk each); states beyond the budget are computed when first reached.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from .byte_dfa import ByteDFA
from .errors import GrammarError
from .matcher import CompiledGrammar, HistoryMatcher
from .tokenizer_info import TokenizerInfo

MAX_FORCED_BYTES = 4096
PRECOMPUTE_FIRST_BATCH = 32  # states in the first batched walk of `precompute` (then sized by time)
PRECOMPUTE_MAX_BATCH = 256  # bounds a batched walk's memory (batch x vocab bools)


def complete_utf8_prefix(data: bytes) -> str:
    """The longest prefix of `data` that is whole UTF-8 characters, decoded."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="ignore")


class CompiledRegex(CompiledGrammar):
    """A regex's byte DFA for one tokenizer, with lazily cached per-state token masks."""

    def __init__(self, dfa: ByteDFA, tokenizer_info: TokenizerInfo, kind: str = "regex", source: str = ""):
        self.dfa = dfa
        self.kind = kind
        self.source = source
        self._info = tokenizer_info
        self._masks: dict[object, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def tokenizer_info(self) -> TokenizerInfo:
        return self._info

    def matcher(self) -> "RegexMatcher":
        return RegexMatcher(self)

    def precompute(self, budget_s: float) -> int:
        """Compute and cache the masks of the DFA's states (its horizon view's) breadth-first
        from the start, until `budget_s` seconds have passed; returns how many are cached.

        Rows are built first (at most half the budget). If that reaches every state, states
        that die on the same strings up to the longest token's length share one mask
        (`liveness_classes`), so only one state per class is walked (a JSON string has several
        states alike for that look-ahead). Walks run in batches sized to the time left."""
        if budget_s <= 0:
            return len(self._masks)
        now = time.monotonic()
        deadline = now + budget_s
        trie = self._info.trie
        view = self.dfa.view(trie.max_depth)
        try:
            complete = view.build_reachable(now + budget_s / 2)
        except GrammarError:  # too many states to build them all: the rest stays lazy
            complete = False
        states = np.array([s for s in range(view.num_states) if view.built[s] and s not in self._masks], dtype=np.int64)
        classes = view.liveness_classes(trie.max_depth) if complete else None
        classes = np.arange(view.num_states, dtype=np.int64) if classes is None else classes
        _, first, inverse = np.unique(classes[states], return_index=True, return_inverse=True)
        order = np.argsort(first)  # classes by their first state: breadth-first
        by_class = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[by_class], np.arange(first.shape[0] + 1))
        done, size = 0, PRECOMPUTE_FIRST_BATCH
        while done < order.shape[0]:
            started = time.monotonic()
            if started >= deadline:
                break
            chunk = order[done : done + size]
            try:
                masks = trie.walk_many(view, states[first[chunk]])
            except GrammarError:  # the walk reached the state budget: the rest stays lazy
                break
            masks.flags.writeable = False
            with self._lock:
                for c, mask in zip(chunk.tolist(), masks):
                    for s in states[by_class[bounds[c] : bounds[c + 1]]].tolist():
                        self._masks.setdefault(s, mask)
            done += chunk.shape[0]
            per_state = (time.monotonic() - started) / chunk.shape[0]
            fits = (deadline - time.monotonic()) / max(per_state, 1e-6)
            size = int(min(PRECOMPUTE_MAX_BATCH, 2 * size, max(1, fits)))  # states differ in cost: grow slowly
        return len(self._masks)

    def state_mask(self, state: int) -> np.ndarray:
        """int32 [num_words]: tokens allowed in DFA state `state` (eos not included). Read-only.

        Computed on the DFA's horizon view (states alike for as many bytes as the longest token
        are one view state, see ByteDFA) and cached per view state."""
        trie = self._info.trie
        view = self.dfa.view(trie.max_depth)
        key = self.dfa.to_view(state, view)
        mask = self._masks.get(key)
        if mask is None:
            mask = trie.walk(None, view, key).allowed
            mask.flags.writeable = False
            with self._lock:
                mask = self._masks.setdefault(key, mask)
        return mask

    @property
    def num_cached_states(self) -> int:
        return len(self._masks)


class RegexMatcher(HistoryMatcher):
    """Matcher state: the DFA state, whether eos was accepted, and the history for rollback."""

    def __init__(self, compiled: CompiledRegex, state: int = 0, terminated: bool = False, history: list | None = None):
        self._compiled = compiled
        self._dfa = compiled.dfa
        self._state = state
        self._terminated = terminated
        self._history: list[tuple[int, bool]] = history if history is not None else []

    def _current_mask(self) -> Any:
        return self._compiled.state_mask(self._state)

    def _push(self) -> None:
        self._history.append((self._state, self._terminated))

    def accept_bytes(self, data: bytes) -> bool:
        if self._terminated:
            return False
        nxt = self._dfa.run(data, self._state)
        if nxt < 0:
            return False
        self._push()
        self._state = nxt
        return True

    def rollback(self, num_steps: int = 1) -> None:
        if not 0 <= num_steps <= len(self._history):
            raise ValueError(f"cannot roll back {num_steps} steps; {len(self._history)} in history")
        if num_steps:
            self._state, self._terminated = self._history[-num_steps]
            del self._history[-num_steps:]

    def fork(self) -> "RegexMatcher":
        return RegexMatcher(self._compiled, self._state, self._terminated, list(self._history))

    def can_terminate(self) -> bool:
        return not self._terminated and bool(self._dfa.accept[self._state])

    def is_done(self) -> bool:
        return self._terminated or self._dfa.live_bytes(self._state).shape[0] == 0

    def forced_text(self) -> str:
        if self._terminated:
            return ""
        out = bytearray()
        state = self._state
        while not self._dfa.accept[state] and len(out) < MAX_FORCED_BYTES:
            live = self._dfa.live_bytes(state)
            if live.shape[0] != 1:
                break
            out.append(int(live[0]))
            state = self._dfa.step(state, int(live[0]))
        return complete_utf8_prefix(bytes(out))
