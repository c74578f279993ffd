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
from dataclasses import dataclass

import numpy as np

from .byte_dfa import ByteDFA
from .errors import GrammarError


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


@dataclass(frozen=True, eq=False)
class Lexer:
    """Product DFA over `terminals` (same layout as ByteDFA: a dead last row) plus accept groups.

    table: int32 [S + 1, C]; byte_class: [256]; accept_group: int64 [S + 1] (-1: no terminal
    ends here; last entry -1).
    """

    lexer_id: int
    terminals: tuple[int, ...]
    table: np.ndarray
    byte_class: np.ndarray
    accept_group: np.ndarray

    def step(self, state: int, byte: int) -> int:
        return int(self.table[state, self.byte_class[byte]])

    def live_bytes(self, state: int) -> np.ndarray:
        return np.nonzero(self.table[state, self.byte_class] >= 0)[0]


def build_lexer(
    lexer_id: int, terminals: tuple[int, ...], dfas: tuple[ByteDFA, ...], groups: GroupTable, max_states: int
) -> Lexer:
    """Breadth-first product construction over the joint byte classes of `terminals`."""
    if not terminals:
        table = np.full((2, 1), -1, dtype=np.int32)
        return Lexer(lexer_id, terminals, table, np.zeros(256, dtype=np.int64), np.full(2, -1, dtype=np.int64))
    parts = [dfas[t] for t in terminals]
    joint, byte_class = np.unique(np.stack([d.byte_class for d in parts]), axis=1, return_inverse=True)
    byte_class = byte_class.reshape(-1).astype(np.int64)
    num_classes = joint.shape[1]
    # per terminal: [state][joint class] -> next state, as Python lists (scalar access is hot)
    rows = [d.table[:, joint[k]].tolist() for k, d in enumerate(parts)]
    accepts = [d.accept.tolist() for d in parts]
    start = tuple((k, 0) for k in range(len(parts)))
    order: list[tuple] = [start]
    index: dict[tuple, int] = {}
    table: list[list[int]] = []
    i = 0
    while i < len(order):
        current = order[i]
        i += 1
        row = []
        for c in range(num_classes):
            nxt = tuple((k, n) for k, s in current if (n := rows[k][s][c]) >= 0)
            if not nxt:
                row.append(-1)
                continue
            j = index.get(nxt)
            if j is None:
                if len(order) >= max_states:
                    raise GrammarError(
                        f"grammar too complex: the lexer for terminals {list(terminals)} exceeds {max_states} states"
                    )
                j = index[nxt] = len(order)
                order.append(nxt)
            row.append(j)
        table.append(row)
    accept_group = [-1] * (len(order) + 1)
    for j, state in enumerate(order):
        done = frozenset(terminals[k] for k, s in state if accepts[k][s])
        if done and j:
            accept_group[j] = groups.intern(done)
    table.append([-1] * num_classes)
    return Lexer(
        lexer_id, terminals, np.array(table, dtype=np.int32), byte_class, np.array(accept_group, dtype=np.int64)
    )
