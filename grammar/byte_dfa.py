"""Byte-level automata: a Thompson NFA over byte ranges, and the DFA built from it.

`ByteNFA` is filled by the regex front end (grammar/regex_dfa.py) and determinized by
`determinize` (subset construction over byte classes, bounded by a state budget and a deadline),
then minimized and trimmed: every state of a `ByteDFA` can still reach an accepting state, so a
transition to -1 (dead) is exactly "this byte can never lead to a match".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import GrammarError


@dataclass(frozen=True, eq=False)
class ByteDFA:
    """A trimmed, minimal DFA over bytes. State 0 is the start state.

    table: int32 [num_states + 1, num_classes]; -1 = dead (no match reachable from there). The
      last row is all -1, so indexing with state -1 yields -1 (used by the vectorized walks).
    byte_class: int64 [256], the class of each byte (bytes no transition distinguishes share one).
    accept: bool [num_states].
    """

    table: np.ndarray
    byte_class: np.ndarray
    accept: np.ndarray

    @property
    def num_states(self) -> int:
        return self.accept.shape[0]

    def step(self, state: int, byte: int) -> int:
        return int(self.table[state, self.byte_class[byte]])

    def run(self, data: bytes, state: int = 0) -> int:
        """The state after `data` from `state`; -1 if dead."""
        table, cls = self.table, self.byte_class
        for b in data:
            state = int(table[state, cls[b]])
            if state < 0:
                return -1
        return state

    def matches(self, data: bytes) -> bool:
        s = self.run(data)
        return s >= 0 and bool(self.accept[s])

    def live_bytes(self, state: int) -> np.ndarray:
        """The bytes (int array) that keep `state` alive."""
        return np.nonzero(self.table[state, self.byte_class] >= 0)[0]


@dataclass
class ByteNFA:
    """A mutable NFA under construction: byte-range edges and epsilon edges."""

    edges: list[list[tuple[int, int, int]]] = field(default_factory=list)  # state -> (lo, hi, target)
    eps: list[list[int]] = field(default_factory=list)
    max_states: int = 1_000_000
    deadline: float = float("inf")  # time.monotonic() limit for building

    def new_state(self) -> int:
        n = len(self.edges)
        if n >= self.max_states:
            raise GrammarError(f"pattern too large: its automaton exceeds {self.max_states} NFA states")
        if n & 0xFFF == 0 and time.monotonic() > self.deadline:
            raise GrammarError("pattern too large: building its automaton ran past the time budget")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def add_edge(self, src: int, lo: int, hi: int, dst: int) -> None:
        self.edges[src].append((lo, hi, dst))

    def add_eps(self, src: int, dst: int) -> None:
        self.eps[src].append(dst)


def _byte_classes(nfa: ByteNFA) -> np.ndarray:
    """uint8-ish int array [256]: bytes no edge distinguishes share a class."""
    cuts = np.zeros(257, dtype=bool)
    cuts[0] = True
    for edges in nfa.edges:
        for lo, hi, _ in edges:
            cuts[lo] = True
            cuts[hi + 1] = True
    return np.cumsum(cuts[:256]).astype(np.int64) - 1


def determinize(nfa: ByteNFA, start: int, final: int, max_states: int, deadline: float, what: str) -> ByteDFA:
    """Subset construction, then trimming and minimization.

    Raises GrammarError if the DFA would exceed `max_states` states or the work runs past
    `deadline` (a time.monotonic() value). `what` names the pattern in error messages.
    """
    cls = _byte_classes(nfa)
    num_classes = int(cls.max()) + 1
    # per NFA state: class -> targets (classes partition every edge's byte range exactly)
    moves: list[dict[int, list[int]]] = []
    for edges in nfa.edges:
        m: dict[int, list[int]] = {}
        for lo, hi, dst in edges:
            for c in range(int(cls[lo]), int(cls[hi]) + 1):
                m.setdefault(c, []).append(dst)
        moves.append(m)
    closure_memo: dict[int, frozenset[int]] = {}

    def closure(states) -> frozenset[int]:
        out: set[int] = set()
        stack = list(states)
        while stack:
            s = stack.pop()
            if s in out:
                continue
            hit = closure_memo.get(s)
            if hit is not None:
                out |= hit
                continue
            out.add(s)
            stack.extend(nfa.eps[s])
        return frozenset(out)

    for s in range(len(nfa.edges)):
        if not nfa.eps[s]:
            closure_memo[s] = frozenset((s,))
    start_set = closure((start,))
    index = {start_set: 0}
    order = [start_set]
    rows: list[list[int]] = []
    accepting: list[bool] = []
    i = 0
    while i < len(order):
        if time.monotonic() > deadline:
            raise GrammarError(f"{what} is too complex: building its automaton ran past the time budget")
        current = order[i]
        i += 1
        targets: dict[int, set[int]] = {}
        for s in current:
            for c, dsts in moves[s].items():
                targets.setdefault(c, set()).update(dsts)
        row = [-1] * num_classes
        for c, dsts in targets.items():
            nxt = closure(dsts)
            j = index.get(nxt)
            if j is None:
                if len(order) >= max_states:
                    raise GrammarError(
                        f"{what} is too complex: its automaton exceeds {max_states} states "
                        "(nested or counted repetition over large character classes?)"
                    )
                j = index[nxt] = len(order)
                order.append(nxt)
            row[c] = j
        rows.append(row)
        accepting.append(final in current)
    table = np.array(rows, dtype=np.int64).reshape(len(rows), num_classes)
    table, accept = _trim(table, np.array(accepting, dtype=bool))
    if table.shape[0] == 0:
        raise GrammarError(f"{what} matches no string at all")
    table, accept = _minimize(table, accept, deadline)
    dead_row = np.full((1, table.shape[1]), -1, dtype=np.int32)
    return ByteDFA(table=np.vstack([table.astype(np.int32), dead_row]), byte_class=cls, accept=accept)


MAX_MINIMIZE_ROUNDS = 64


def _minimize(table: np.ndarray, accept: np.ndarray, deadline: float) -> tuple[np.ndarray, np.ndarray]:
    """Moore partition refinement: merge states with equal futures (the start state stays 0).

    Minimizing only saves per-state mask work, so it is skipped (the DFA returned as is, still
    exact) when it would take more than MAX_MINIMIZE_ROUNDS rounds or run past the deadline;
    long counted repetitions such as `[^"]{0,2000}` need one round per position.

    Each round splits blocks by (block, blocks of the successors); rows are compared through a
    64-bit random hash (cheap 1-D unique), and the final partition is verified exactly, falling
    back to exact row comparison in the (astronomically unlikely) case of a collision.
    """
    n, num_classes = table.shape
    rng = np.random.default_rng(0x5EED)
    mult = rng.integers(1, 2**62, size=num_classes + 1, dtype=np.int64) | 1
    part = accept.astype(np.int64)
    num = len(np.unique(part))
    exact = False
    rounds = 0
    while True:
        rounds += 1
        if rounds > MAX_MINIMIZE_ROUNDS or time.monotonic() > deadline:
            return table, accept
        tgt = np.where(table >= 0, part[np.maximum(table, 0)], -1)
        if exact:
            _, new_part = np.unique(np.concatenate([part[:, None], tgt], axis=1), axis=0, return_inverse=True)
        else:
            with np.errstate(over="ignore"):
                sig = part * mult[0] + (tgt + 1) @ mult[1:]
            _, new_part = np.unique(sig, return_inverse=True)
        new_part = new_part.reshape(-1).astype(np.int64)
        new_num = int(new_part.max()) + 1
        part = new_part
        if new_num == num:
            if exact or _is_congruence(table, accept, part):
                break
            exact = True  # a hash collision merged distinct states: redo the rounds exactly
            part = accept.astype(np.int64)
            num = len(np.unique(part))
            continue
        num = new_num
    # renumber blocks in order of first appearance so the start state's block is 0
    _, first = np.unique(part, return_index=True)
    rank = np.empty(num, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(num)
    part = rank[part]
    reps = np.sort(first)
    new_table = np.where(table[reps] >= 0, part[np.maximum(table[reps], 0)], -1)
    return new_table, accept[reps]


def _is_congruence(table: np.ndarray, accept: np.ndarray, part: np.ndarray) -> bool:
    """True iff states in one block agree on acceptance and on the blocks they move to."""
    _, first = np.unique(part, return_index=True)
    rep = first[part]
    tgt = np.where(table >= 0, part[np.maximum(table, 0)], -1)
    return bool((accept == accept[rep]).all() and (tgt == tgt[rep]).all())


def _trim(table: np.ndarray, accept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop states that cannot reach an accepting state (reachability from 0 is given)."""
    n = table.shape[0]
    live = accept.copy()
    while True:
        nxt = live | (np.where(table >= 0, live[np.maximum(table, 0)], False)).any(axis=1)
        if (nxt == live).all():
            break
        live = nxt
    if not live[0]:
        return table[:0], accept[:0]
    new_id = np.full(n, -1, dtype=np.int64)
    new_id[live] = np.arange(int(live.sum()))
    kept = table[live]
    kept = np.where(kept >= 0, new_id[np.maximum(kept, 0)], -1)
    return kept, accept[live]


def trim_dfa(table: np.ndarray, byte_class: np.ndarray, accept: np.ndarray) -> ByteDFA:
    """Re-trim a ByteDFA-shaped table (with its dead last row) after removing transitions."""
    kept, acc = _trim(table[:-1].astype(np.int64), accept)
    if kept.shape[0] == 0:
        raise GrammarError("automaton matches no string at all")
    dead_row = np.full((1, kept.shape[1]), -1, dtype=np.int32)
    return ByteDFA(table=np.vstack([kept.astype(np.int32), dead_row]), byte_class=byte_class, accept=acc)
