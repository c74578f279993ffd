"""`LazyTable`: a DFA transition table whose rows are built on first use.

Subset construction of a regex with counted repetition (`[^"]{0,375}`) or the product of many
terminal DFAs can have tens of thousands of states, of which a generation visits a few hundred.
So automata here build a state's row only when a walk or a step reaches it. Layout (what the
vectorized trie walk indexes): int32 `[capacity + 1, num_classes]`; -1 = dead; the last row is
all -1 so that state -1 indexes a dead row; rows not built yet hold -2 and are never read before
`ensure`. State ids never change once given, so caches keyed by state stay valid.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

import numpy as np

from .errors import GrammarError

NOT_BUILT = -2


class LazyTable(ABC):
    """Base for lazily built DFAs: subclasses create states with `_add_state` and build rows in
    `_build_row`. Thread-safe: rows are built under a lock; readers re-read `table` after
    `ensure`, because growing the table replaces the array."""

    def __init__(self, num_classes: int, max_states: int, what: str):
        self.num_classes = num_classes
        self.max_states = max_states
        self.what = what
        self.num_states = 0
        self._row_lists: dict[int, list[int]] = {}
        self._lock = threading.RLock()
        self._allocate(64)

    def _allocate(self, capacity: int) -> None:
        table = np.full((capacity + 1, self.num_classes), NOT_BUILT, dtype=np.int32)
        built = np.zeros(capacity + 1, dtype=bool)
        if self.num_states:
            table[: self.num_states] = self.table[: self.num_states]
            built[: self.num_states] = self.built[: self.num_states]
        table[capacity] = -1
        built[capacity] = True  # index -1: the dead row
        self.capacity = capacity
        self.table = table
        self.built = built
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
                        self.table[s] = self._build_row(s)
                        self.built[s] = True
        return self.table

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

    @abstractmethod
    def _build_row(self, state: int) -> list[int]:
        """Next state per byte class for `state` (-1 = dead)."""
