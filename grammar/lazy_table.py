"""`LazyTable`: a DFA transition table whose rows are built on first use.

Subset construction of a regex with counted repetition (`[^"]{0,375}`) or the product of many
terminal DFAs can have tens of thousands of states, of which a generation visits a few hundred.
So automata here build a state's row only when a walk or a step reaches it. Layout (what the
vectorized trie walk indexes): int32 `[capacity + 1, num_classes]`; -1 = dead; the last row is
all -1 so that state -1 indexes a dead row; rows not built yet hold -2 and are never read before
`ensure`. State ids never change once given, so caches keyed by state stay valid.

Alongside each built row, `leave_bytes` (uint64 [4, capacity + 1]: word k holds bytes 64k..64k+63 of
a 256-bit set) holds the bytes
that do NOT lead from the state back to itself: a trie subtree none of whose bytes is in that
set stays in the state all along, so a walk takes it whole without visiting it
(grammar/token_trie.py); `leave_folded` (uint64 [2, capacity + 1]) is the same set folded to 128
bits for the vectorized walk (fold_byte_sets). The dead row's sets are full.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod

import numpy as np

from .errors import GrammarError

NOT_BUILT = -2
ALL_BYTES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def fold_byte_sets(sets: np.ndarray) -> np.ndarray:
    """uint64 [4, m] 256-bit byte sets -> uint64 [2, m] 128-bit ones where bit 127 stands for
    every byte >= 127. Folded sets that share no bit share no byte (the converse may fail only
    for sets that both hold bytes >= 127)."""
    high = ((sets[1] >> np.uint64(63)) | sets[2] | sets[3]) != 0
    top = np.uint64(1) << np.uint64(63)
    return np.stack([sets[0], (sets[1] & ~top) | np.where(high, top, np.uint64(0))])



class LazyTable(ABC):
    """Base for lazily built DFAs: subclasses set `byte_class` (int64 [256], byte -> class) before
    calling this constructor, create states with `_add_state` and build rows in `_build_row`.
    Thread-safe: rows are built under a lock; readers re-read `table` (and `leave_bytes`) after
    `ensure`, because growing the table replaces the arrays."""

    def __init__(self, num_classes: int, max_states: int, what: str):
        self.num_classes = num_classes
        self.max_states = max_states
        self.what = what
        self.num_states = 0
        self._row_lists: dict[int, list[int]] = {}
        self._facts: dict[tuple[int, bool], tuple[int, list[int] | None]] = {}
        self._lock = threading.RLock()
        self._allocate(64)

    def _allocate(self, capacity: int) -> None:
        table = np.full((capacity + 1, self.num_classes), NOT_BUILT, dtype=np.int32)
        built = np.zeros(capacity + 1, dtype=bool)
        leave = np.full((4, capacity + 1), ALL_BYTES, dtype=np.uint64)
        folded = np.full((2, capacity + 1), ALL_BYTES, dtype=np.uint64)
        if self.num_states:
            table[: self.num_states] = self.table[: self.num_states]
            built[: self.num_states] = self.built[: self.num_states]
            leave[:, : self.num_states] = self.leave_bytes[:, : self.num_states]
            folded[:, : self.num_states] = self.leave_folded[:, : self.num_states]
        table[capacity] = -1
        built[capacity] = True  # index -1: the dead row
        self.capacity = capacity
        self.table = table
        self.built = built
        self.leave_bytes = leave
        self.leave_folded = folded
        self._grow_extra(capacity)

    def _grow_extra(self, capacity: int) -> None:
        """Resize per-state arrays of subclasses (called with the new capacity)."""

    def _add_state(self) -> int:
        if self.num_states >= self.max_states:
            raise GrammarError(f"{self.what} is too complex: its automaton exceeds {self.max_states} states")
        if self.num_states == self.capacity:
            self._allocate(2 * self.capacity)
        self.num_states += 1
        return self.num_states - 1

    def ensure(self, states: np.ndarray) -> np.ndarray:
        """Build the rows of `states` (int array; -1 allowed) and return the current table."""
        missing = ~self.built[states]
        if missing.any():
            with self._lock:
                for s in np.unique(states[missing]).tolist():
                    if not self.built[s]:
                        self._store_row(s, self._build_row(s))
        return self.table

    def _store_row(self, state: int, row) -> None:
        row = np.asarray(row, dtype=np.int32)
        stay = row[self.byte_class] == state  # [256]: bytes that lead back to the state
        words = np.packbits(~stay, bitorder="little").view(np.uint64)
        self.leave_bytes[:, state] = words
        w0, w1, w2, w3 = words.tolist()  # fold_byte_sets of one set, in Python ints (cheaper)
        high = (w1 >> 63) | w2 | w3
        self.leave_folded[:, state] = (w0, (w1 & ~(1 << 63)) | ((1 << 63) if high else 0))
        self.table[state] = row
        self.built[state] = True

    def build_reachable(self, deadline: float) -> bool:
        """Build the rows of every state made so far and of every state they lead to, in
        creation order (breadth-first from state 0), until time.monotonic() passes `deadline`;
        True if every state was built. GrammarError if the automaton grows too large."""
        with self._lock:
            s = 0
            while s < self.num_states:
                if not self.built[s]:
                    self._store_row(s, self._build_row(s))
                s += 1
                if time.monotonic() > deadline:
                    return bool(self.built[: self.num_states].all())
            return True

    def liveness_classes(self, horizon: int) -> np.ndarray | None:
        """int64 [num_states]: a class id per state such that two states of one class die on
        exactly the same byte strings of length <= `horizon` (so their token masks are equal);
        None unless every state's row is built. Moore's partition refinement: round r splits
        classes by the classes of their successors, giving equivalence up to r bytes; it stops
        after `horizon` rounds or once stable. Rows are grouped by a random 64-bit hash and each
        round is checked exactly (on a collision, every state is its own class)."""
        n = self.num_states
        if not self.built[:n].all():
            return None
        table = self.table[:n]
        weights = np.random.default_rng(0).integers(1, 2**63, size=self.num_classes + 1, dtype=np.uint64)
        block = np.zeros(n + 1, dtype=np.int64)  # index n (state -1, dead) keeps class -1
        block[n] = -1
        count = 1
        for _ in range(horizon):
            rows = np.concatenate([block[:n, None], block[table]], axis=1)  # [n, 1 + num_classes]
            _, first, inverse = np.unique(rows.astype(np.uint64) @ weights, return_index=True, return_inverse=True)
            if not (rows == rows[first[inverse]]).all():
                return np.arange(n, dtype=np.int64)
            block[:n] = inverse
            if first.shape[0] == count:
                break
            count = first.shape[0]
        return block[:n].copy()

    def row(self, state: int) -> np.ndarray:
        """The transition row of one state (built if needed)."""
        if not self.built[state]:
            self.ensure(np.array([state]))
        return self.table[state]

    def row_list(self, state: int) -> list[int]:
        """The row as a Python list (cached), for byte-at-a-time stepping."""
        row = self._row_lists.get(state)
        if row is None:
            row = self._row_lists[state] = self.row(state).tolist()
        return row

    def walk_facts(self, state: int, boundaries: bool) -> tuple[int, list[int] | None]:
        """(the bytes that leave `state`, as a 256-bit int; the bytes that keep it alive, or
        None where a trie walk must visit every child: when it reports lexeme ends (needs
        `accept_group`) and the state ends one, each dead child is a boundary). Cached."""
        key = (state, boundaries)
        facts = self._facts.get(key)
        if facts is None:
            row = self.row(state)
            leave = int.from_bytes(self.leave_bytes[:, state].tobytes(), "little")
            ends = boundaries and self.accept_group[state] >= 0
            facts = self._facts[key] = (leave, None if ends else np.flatnonzero(row[self.byte_class] >= 0).tolist())
        return facts

    @abstractmethod
    def _build_row(self, state: int) -> list[int]:
        """Next state per byte class for `state` (-1 = dead)."""
