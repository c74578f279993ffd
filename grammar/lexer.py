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

    def __init__(self, lexer_id: int, terminals: tuple[int, ...], parts: list, groups: GroupTable, max_states: int):
        self.lexer_id = lexer_id
        self.terminals = terminals
        self._parts = parts  # the ByteDFA of each terminal, in order
        if terminals:
            joint, byte_class = np.unique(np.stack([d.byte_class for d in self._parts]), axis=1, return_inverse=True)
            self.byte_class = byte_class.reshape(-1).astype(np.int64)
        else:
            joint = np.zeros((0, 1), dtype=np.int64)
            self.byte_class = np.zeros(256, dtype=np.int64)
        self._class_list = self.byte_class.tolist()
        self._joint = list(joint)  # [part] -> that part's byte class for each joint class
        self._groups = groups
        self.accept_group = np.full(1, -1, dtype=np.int64)
        super().__init__(joint.shape[1], max_states, f"the lexer for terminals {list(terminals)[:8]}")
        self._tuples: list[tuple] = [tuple((k, 0) for k in range(len(self._parts)))]
        self._index: dict[tuple, int] = {}
        self._view: Lexer | None = None
        self._to_view: dict[int, int] = {}
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
        if len(current) == 1:  # inside a lexeme that only one terminal can still be: its row
            k, s = current[0]
            nxt = self._parts[k].row(s)[self._joint[k]]
            values, inverse = np.unique(nxt, return_inverse=True)
            targets = np.array([self._intern(((k, n),)) if n >= 0 else -1 for n in values.tolist()], dtype=np.int32)
            return targets[inverse.reshape(-1)]
        rows = [(k, self._parts[k].row(s)[self._joint[k]].tolist()) for k, s in current]
        out = []
        seen: dict[tuple, int] = {}  # equal next-state columns lead to the same state
        for c in range(self.num_classes):
            column = tuple([row[c] for _, row in rows])
            j = seen.get(column)
            if j is None:
                parts = tuple((k, n) for (k, _), n in zip(rows, column) if n >= 0)
                j = seen[column] = self._intern(parts) if parts else -1
            out.append(j)
        return out

    def view(self, horizon: int) -> "Lexer":
        """The lexer over the terminals' horizon views (see ByteDFA.view); itself if no terminal
        has counted repetition. A lexer serves one tokenizer, so one horizon."""
        view = self._view
        if view is None:
            parts = [p.view(horizon) for p in self._parts]
            if all(v is p for v, p in zip(parts, self._parts)):
                view = self
            else:
                view = Lexer(self.lexer_id, self.terminals, parts, self._groups, self.max_states)
            self._view = view
        return view

    def to_view(self, state: int, view: "Lexer") -> int:
        """The state of `view` that `state` behaves like within the horizon."""
        if view is self or state == 0:
            return state
        hit = self._to_view.get(state)
        if hit is None:
            parts = tuple((k, self._parts[k].to_view(s, view._parts[k])) for k, s in self._tuples[state])
            with view._lock:
                hit = self._to_view[state] = view._intern(parts)
        return hit

    def step(self, state: int, byte: int) -> int:
        return self.row_list(state)[self._class_list[byte]]

    def live_bytes(self, state: int) -> np.ndarray:
        return np.nonzero(self.row(state)[self.byte_class] >= 0)[0]


def build_lexer(
    lexer_id: int, terminals: tuple[int, ...], dfas: tuple, groups: GroupTable, max_states: int
) -> Lexer:
    """The lexer over `terminals` (its rows are built as walks and steps reach them)."""
    return Lexer(lexer_id, terminals, [dfas[t] for t in terminals], groups, max_states)
