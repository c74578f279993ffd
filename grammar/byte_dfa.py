"""Byte-level automata: a Thompson NFA over byte ranges, and the lazily built DFA of it.

`ByteNFA` is filled by the regex front end (grammar/regex_dfa.py). `ByteDFA` runs subset
construction on demand (grammar/lazy_table.py): a state is a set of NFA positions, its row is
built when first needed. A large counted repetition `X{m,n}` is not unrolled: the NFA holds one
copy of X plus a `Repeat` record, and a position is (NFA state, counters of the enclosing
repetitions), so `[^"]{0,8192}` costs one copy of `[^"]` until generation gets that far. NFA
states that cannot reach the final state are dropped from every set, so a transition to -1
(dead) is exactly "this byte can never lead to a match", and every state that exists can still
reach an accepting state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import GrammarError
from .lazy_table import LazyTable


UNBOUNDED = -1  # the "copies left before max" of a repetition without max


class ByteDFA(LazyTable):
    """A DFA over bytes built lazily from a ByteNFA. State 0 is the start state.

    table / byte_class: see LazyTable; accept: bool [capacity], valid for existing states.
    nonempty: the empty string is excluded (state 0 is a non-accepting copy of the start).
    shortest: matching stops at the first accepting state (no transitions out of one), the
    semantics of a lark terminal written with lazy quantifiers.

    A position's counters are, per enclosing counted repetition, (copies still needed to reach
    min, copies still allowed before max). With a `horizon` (a *view*, see `view`), a distance
    beyond the horizon is replaced by FAR = horizon + 1 and stays FAR: exact for any input of at
    most `horizon` bytes because every copy of a counted body takes at least a byte. Token
    masks only look `horizon` = longest-token bytes ahead, so they are computed on the view,
    where all positions of `[^"]{0,375}` far from both ends are one state.
    """

    def __init__(
        self,
        nfa: "ByteNFA",
        start: int,
        final: int,
        max_states: int,
        what: str,
        nonempty: bool = False,
        shortest: bool = False,
        horizon: int | None = None,
    ):
        self.byte_class = _byte_classes(nfa)
        self._class_list = self.byte_class.tolist()
        num_classes = int(self.byte_class.max()) + 1
        self.accept = np.zeros(0, dtype=bool)
        super().__init__(num_classes, max_states, what)
        self._args = (nfa, start, final, max_states, what, nonempty, shortest)
        self._far = None if horizon is None else horizon + 1
        self._views: dict[int, ByteDFA] = {}
        self._to_view: dict[tuple[int, int], int] = {}  # (view's FAR, state) -> view state
        self._final = (final, ())
        self._shortest = shortest
        self._eps = nfa.eps
        self._counted = nfa.counted
        self._edges = nfa.edges
        self._moves: dict[int, tuple[list[int], list[tuple[int, ...]]]] = {}
        self._closures: dict[tuple, frozenset] = {}
        self._steps: dict[frozenset, int] = {}  # moved-to positions -> the state of their closure
        self._live = _live_states(nfa, final)
        self._sets: list[frozenset] = []
        self._index: dict[frozenset, int] = {}
        start_set = self._closure(((start, ()),))
        if nonempty:
            self._sets.append(start_set)
            self._add_state()
        else:
            self._intern(start_set)
        if not start_set:
            raise GrammarError(f"{what} matches no string at all")

    def _grow_extra(self, capacity: int) -> None:
        accept = np.zeros(capacity, dtype=bool)
        accept[: self.num_states] = self.accept[: self.num_states]
        self.accept = accept

    def _closure(self, positions) -> frozenset:
        """Epsilon closure of a set of (NFA state, counters) positions, live ones only."""
        memo = self._closures
        out: set = set()
        for pos in positions:
            hit = memo.get(pos)
            if hit is None:
                hit = memo[pos] = self._closure_of(pos)
            out |= hit
        return frozenset(out)

    def _closure_of(self, start: tuple) -> frozenset:
        out: set = set()
        stack = [start]
        eps, counted = self._eps, self._counted
        while stack:
            pos = stack.pop()
            if pos in out:
                continue
            out.add(pos)
            s, ctr = pos
            stack.extend([(t, ctr) for t in eps[s]])
            ops = counted.get(s)
            if ops:
                for op, rep in ops:
                    far = self._far
                    if op == ENTER:
                        need = rep.min if far is None else min(rep.min, far)
                        left = UNBOUNDED if rep.max is None else rep.max if far is None else min(rep.max, far)
                        stack.append((rep.first, ctr + ((need, left),)))
                        continue
                    need, left = ctr[-1]  # one more copy of the body is complete
                    outer = ctr[:-1]
                    need = need if need == far else max(need - 1, 0)
                    left = left if left in (far, UNBOUNDED) else left - 1
                    if left != 0:
                        stack.append((rep.first, outer + ((need, left),)))
                    if need == 0:
                        stack.append((rep.end, outer))
        live = self._live
        return frozenset(p for p in out if live[p[0]])

    def _intern(self, nfa_states: frozenset) -> int:
        j = self._index.get(nfa_states)
        if j is None:
            j = self._add_state()
            self._sets.append(nfa_states)
            self._index[nfa_states] = j
            self.accept[j] = self._final in nfa_states
        return j

    def _build_row(self, state: int) -> np.ndarray:
        if self._shortest and self.accept[state]:
            return np.full(self.num_classes, -1, dtype=np.int32)
        # positions that move on some byte (epsilon-only ones never do), with their moves
        moving = [(ctr, m) for s, ctr in self._sets[state] for m in (self._moves_of(s),) if m[1]]
        if not moving:
            return np.full(self.num_classes, -1, dtype=np.int32)
        step_memo = self._steps
        if len(moving) == 1:  # most states (literal text): the row is the position's moves
            ctr, (vec, lists) = moving[0]
            targets = []
            for dsts in lists:
                key = frozenset((d, ctr) for d in dsts)
                j = step_memo.get(key)
                if j is None:
                    nxt = self._closure(key)
                    j = step_memo[key] = self._intern(nxt) if nxt else -1
                targets.append(j)
            targets.append(-1)  # list id -1: no move
            return np.array([targets[t] for t in vec], dtype=np.int32)
        # per class: the column of target-list ids over positions; equal columns = same state
        by_column: dict[tuple, int] = {}
        row = []
        for column in zip(*[m[0] for _, m in moving]):
            j = by_column.get(column)
            if j is None:
                key = frozenset((d, ctr) for (ctr, (_, lists)), t in zip(moving, column) if t >= 0 for d in lists[t])
                j = step_memo.get(key)
                if j is None:
                    nxt = self._closure(key) if key else key
                    j = step_memo[key] = self._intern(nxt) if nxt else -1
                by_column[column] = j
            row.append(j)
        return np.array(row, dtype=np.int32)

    def _moves_of(self, nfa_state: int) -> tuple[list[int], list[tuple[int, ...]]]:
        """(per byte class: index into the list of target tuples, -1 = no move; the list)
        for one NFA state (byte classes partition every edge range exactly)."""
        moves = self._moves.get(nfa_state)
        if moves is None:
            per_class: dict[int, list[int]] = {}
            cls = self._class_list
            for lo, hi, dst in self._edges[nfa_state]:
                for c in range(cls[lo], cls[hi] + 1):
                    per_class.setdefault(c, []).append(dst)
            lists: list[tuple[int, ...]] = []
            ids: dict[tuple[int, ...], int] = {}
            vec = [-1] * self.num_classes
            for c, dsts in per_class.items():
                key = tuple(sorted(set(dsts)))
                if key not in ids:
                    ids[key] = len(lists)
                    lists.append(key)
                vec[c] = ids[key]
            moves = self._moves[nfa_state] = (vec, lists)
        return moves

    def view(self, horizon: int) -> "ByteDFA":
        """This DFA with counters clamped at `horizon` (itself if it has no counted repetition)."""
        if not self._counted:
            return self
        view = self._views.get(horizon)
        if view is None:
            with self._lock:
                view = self._views.get(horizon)
                if view is None:
                    view = self._views[horizon] = ByteDFA(*self._args, horizon=horizon)
        return view

    def to_view(self, state: int, view: "ByteDFA") -> int:
        """The state of `view` (from `self.view(...)`) that `state` behaves like within the horizon."""
        if view is self or state == 0:
            return state
        far = view._far
        hit = self._to_view.get((far, state))
        if hit is None:
            positions = frozenset(
                (s, tuple(_clamp_pair(pair, far) for pair in ctr)) if ctr else (s, ctr) for s, ctr in self._sets[state]
            )
            with view._lock:
                hit = self._to_view[(far, state)] = view._intern(positions)
        return hit

    def is_empty_language(self) -> bool:
        return not self.accept[0] and bool((self.row(0) < 0).all())

    def step(self, state: int, byte: int) -> int:
        return self.row_list(state)[self._class_list[byte]]

    def run(self, data: bytes, state: int = 0) -> int:
        """The state after `data` from `state`; -1 if dead."""
        cls = self._class_list
        for b in data:
            state = self.row_list(state)[cls[b]]
            if state < 0:
                return -1
        return state

    def matches(self, data: bytes) -> bool:
        s = self.run(data)
        return s >= 0 and bool(self.accept[s])

    def live_bytes(self, state: int) -> np.ndarray:
        """The bytes (int array) that keep `state` alive."""
        return np.nonzero(self.row(state)[self.byte_class] >= 0)[0]


ENTER, NEXT = 0, 1


@dataclass(frozen=True, eq=False)
class Repeat:
    """A counted repetition kept as one copy of its body: `first`/`last` are the body's entry
    and exit states, `end` the state after the repetition; max None = unbounded. Counters
    saturate at `min` when unbounded. Only bodies that consume at least one byte per copy are kept
    counted (others are unrolled), which is what makes horizon views exact."""

    first: int
    last: int
    end: int
    min: int
    max: int | None


@dataclass
class ByteNFA:
    """A mutable NFA under construction: byte-range edges and epsilon edges.

    counted: state -> [(ENTER, Repeat)] (start a repetition: push a counter) or [(NEXT, Repeat)]
      (at the body's exit: loop with counter + 1, and/or leave, popping the counter).
    cuts: byte values where some edge range starts or ends (+1), for the byte classes.
    has_dead_ends: set when a character class matches nothing (an edge-less fragment); only then
    can a state fail to reach the final state, so only then is liveness computed.
    """

    edges: list[list[tuple[int, int, int]]] = field(default_factory=list)  # state -> (lo, hi, target)
    eps: list[list[int]] = field(default_factory=list)
    max_states: int = 1_000_000
    deadline: float = float("inf")  # time.monotonic() limit for building
    counted: dict[int, list[tuple[int, Repeat]]] = field(default_factory=dict)
    cuts: set[int] = field(default_factory=lambda: {0})
    has_dead_ends: bool = False

    def new_state(self) -> int:
        n = len(self.edges)
        self._check(n + 1)
        self.edges.append([])
        self.eps.append([])
        return n

    def _check(self, n: int) -> None:
        if n > self.max_states:
            raise GrammarError(f"pattern too large: its automaton exceeds {self.max_states} NFA states")
        if time.monotonic() > self.deadline:
            raise GrammarError("pattern too large: building its automaton ran past the time budget")

    def add_edge(self, src: int, lo: int, hi: int, dst: int) -> None:
        self.edges[src].append((lo, hi, dst))
        self.cuts.add(lo)
        self.cuts.add(hi + 1)

    def add_eps(self, src: int, dst: int) -> None:
        self.eps[src].append(dst)

    def add_repeat(self, src: int, rep: Repeat) -> None:
        """`src` starts `rep` (its body's exit `rep.last` gets the loop/leave step)."""
        self.counted.setdefault(src, []).append((ENTER, rep))
        self.counted.setdefault(rep.last, []).append((NEXT, rep))

    def clone(self, lo: int, hi: int) -> int:
        """Append a copy of states lo..hi-1 (a fragment whose edges stay inside it); returns the
        offset to add to a state id of the fragment to get its copy."""
        offset = len(self.edges) - lo
        self._check(len(self.edges) + hi - lo)
        self.edges.extend([[(a, b, t + offset) for a, b, t in self.edges[s]] for s in range(lo, hi)])
        self.eps.extend([[t + offset for t in self.eps[s]] for s in range(lo, hi)])
        moved: dict[Repeat, Repeat] = {}  # counted repetitions inside the fragment, shifted

        def shift(rep: Repeat) -> Repeat:
            if not lo <= rep.first < hi:
                return rep
            if rep not in moved:
                moved[rep] = replace(rep, first=rep.first + offset, last=rep.last + offset, end=rep.end + offset)
            return moved[rep]

        for s in range(lo, hi):
            ops = self.counted.get(s)
            if ops:
                self.counted[s + offset] = [(op, shift(rep)) for op, rep in ops]
        return offset


def _byte_classes(nfa: ByteNFA) -> np.ndarray:
    """int64 [256]: bytes no edge distinguishes share a class."""
    cuts = np.zeros(257, dtype=bool)
    cuts[sorted(nfa.cuts)] = True
    return np.cumsum(cuts[:256]).astype(np.int64) - 1


def _clamp_pair(pair: tuple[int, int], far: int) -> tuple[int, int]:
    need, left = pair
    return (min(need, far), left if left == UNBOUNDED else min(left, far))


def _live_states(nfa: ByteNFA, final: int) -> list[bool]:
    """NFA states from which the final state is reachable."""
    if not nfa.has_dead_ends:  # Thompson fragments without empty classes: every state is live
        return [True] * len(nfa.edges)
    preds: list[list[int]] = [[] for _ in nfa.edges]
    for s, edges in enumerate(nfa.edges):
        for _, _, dst in edges:
            preds[dst].append(s)
        for dst in nfa.eps[s]:
            preds[dst].append(s)
    for s, ops in nfa.counted.items():
        for op, rep in ops:
            for dst in (rep.first,) if op == ENTER else (rep.first, rep.end):
                preds[dst].append(s)
    live = [False] * len(nfa.edges)
    live[final] = True
    stack = [final]
    while stack:
        for p in preds[stack.pop()]:
            if not live[p]:
                live[p] = True
                stack.append(p)
    return live
