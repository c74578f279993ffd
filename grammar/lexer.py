"""The contextual lexer: one product DFA per set of terminals the parser may take next.

A lexer state is the set of (terminal, terminal-DFA state) pairs still alive in the current
lexeme. State 0 is the empty lexeme and is never re-entered (a lexeme that returns to the
terminals' start states is a different state), so "at a lexeme boundary" is `state == 0`.
`accept_group[s]` names the set of terminals the lexeme read so far would complete as (an id
from `GroupTable`), or -1. Lexing is greedy: a lexeme ends only where the next byte cannot extend
it (grammar/cfg_matcher.py).
"""

from __future__ import annotations

import threading
import numpy as np

from .lazy_table import LazyTable


class GroupTable:
    """Interns sets of terminals that complete one lexeme. For a group: the normal terminals
    (`real`, fed to the parser) and whether an `%ignore` terminal matches too (`ignorable`)."""

    def __init__(self, ignore: frozenset[int]):
        self._ignore = ignore
        self._ids: dict[frozenset[int], int] = {}
        self.real: list[frozenset[int]] = []
        self.ignorable: list[bool] = []
        self._lock = threading.Lock()

    def intern(self, terminals: frozenset[int]) -> int:
        gid = self._ids.get(terminals)
        if gid is None:
            with self._lock:
                gid = self._ids.get(terminals)
                if gid is None:
                    self.real.append(terminals - self._ignore)
                    self.ignorable.append(bool(terminals & self._ignore))
                    gid = self._ids[terminals] = len(self.real) - 1
        return gid


class Lexer(LazyTable):
    """Lazily built product DFA over `terminals` (layout of LazyTable) plus accept groups.

    accept_group: int64 [capacity + 1]: the group of terminals the lexeme so far completes, or
    -1 (also at index -1, the dead state). State 0 is the empty lexeme, never re-entered.
    """

    def __init__(self, lexer_id: int, terminals: tuple[int, ...], dfas: tuple, groups: GroupTable, max_states: int):
        self.lexer_id = lexer_id
        self.terminals = terminals
        self._parts = [dfas[t] for t in terminals]
        if terminals:
            joint, byte_class = np.unique(np.stack([d.byte_class for d in self._parts]), axis=1, return_inverse=True)
            self.byte_class = byte_class.reshape(-1).astype(np.int64)
        else:
            joint = np.zeros((0, 1), dtype=np.int64)
            self.byte_class = np.zeros(256, dtype=np.int64)
        self._joint = joint.tolist()  # [part][joint class] -> that part's byte class
        self._groups = groups
        self.accept_group = np.full(1, -1, dtype=np.int64)
        super().__init__(joint.shape[1], max_states, f"the lexer for terminals {list(terminals)[:8]}")
        self._tuples: list[tuple] = [tuple((k, 0) for k in range(len(self._parts)))]
        self._index: dict[tuple, int] = {}
        self._add_state()

    def _grow_extra(self, capacity: int) -> None:
        group = np.full(capacity + 1, -1, dtype=np.int64)
        group[: self.num_states] = self.accept_group[: self.num_states]
        self.accept_group = group

    def _intern(self, parts: tuple) -> int:
        j = self._index.get(parts)
        if j is None:
            j = self._add_state()
            self._tuples.append(parts)
            self._index[parts] = j
            done = frozenset(self.terminals[k] for k, s in parts if self._parts[k].accept[s])
            if done:
                self.accept_group[j] = self._groups.intern(done)
        return j

    def _build_row(self, state: int) -> list[int]:
        current = self._tuples[state]
        rows = [(k, self._parts[k].row(s).tolist(), self._joint[k]) for k, s in current]
        out = []
        for c in range(self.num_classes):
            nxt = tuple((k, n) for k, row, joint in rows if (n := row[joint[c]]) >= 0)
            out.append(self._intern(nxt) if nxt else -1)
        return out

    def step(self, state: int, byte: int) -> int:
        return int(self.row(state)[self.byte_class[byte]])

    def live_bytes(self, state: int) -> np.ndarray:
        return np.nonzero(self.row(state)[self.byte_class] >= 0)[0]


def build_lexer(
    lexer_id: int, terminals: tuple[int, ...], dfas: tuple, groups: GroupTable, max_states: int
) -> Lexer:
    """The lexer over `terminals` (its rows are built as walks and steps reach them)."""
    return Lexer(lexer_id, terminals, dfas, groups, max_states)
