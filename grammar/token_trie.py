"""The token trie as flat arrays, and the vectorized walk of trie subtrees through a byte DFA.

Nodes are numbered breadth-first (by depth, and in byte order within a depth; node 0 is the
empty root), so the children of a node are the contiguous range [child_lo, child_hi). A walk
runs the whole trie (or the subtrees below a lexeme boundary, see grammar/cfg_matcher.py)
through a DFA one trie level per step: child state = table[parent state, class of its byte].
Only children of live nodes are visited, so a restrictive state costs little, and a permissive
level is processed as one contiguous slice. The whole cost of a cache miss is this walk; its
results are cached by the callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .bitmask import pack_bool_mask
from .lazy_table import LazyTable


@dataclass(frozen=True, eq=False)
class WalkResult:
    """What a walk found.

    allowed: int32 [num_words] packed mask of tokens whose bytes keep the DFA alive all along.
    boundary_nodes / boundary_groups: int64 [K]: nodes whose byte the DFA could not take while
    its state before that byte ended a lexeme (group = that state's accept group): the lexeme
    ends before these nodes, and their subtrees continue in a new lexeme.
    """

    allowed: np.ndarray
    boundary_nodes: np.ndarray
    boundary_groups: np.ndarray


class TokenTrie:
    """Flat-array trie over the non-special tokens of a vocabulary (breadth-first numbering)."""

    def __init__(self, token_bytes: Sequence[bytes | None]):
        self.vocab_size = len(token_bytes)
        self.num_words = (self.vocab_size + 31) // 32
        byte, parent, depth, token_node = _preorder_trie(token_bytes)
        order = np.argsort(depth, kind="stable")  # preorder within a depth => siblings contiguous
        new_id = np.empty_like(order)
        new_id[order] = np.arange(order.shape[0])
        n = order.shape[0]
        self.num_nodes = n
        self.node_byte = byte[order]
        self.node_depth = depth[order]
        self.node_parent = np.where(parent[order] >= 0, new_id[np.maximum(parent[order], 0)], -1)
        self.child_lo = np.full(n, n, dtype=np.int64)
        self.child_hi = np.zeros(n, dtype=np.int64)
        child = np.arange(1, n, dtype=np.int64)
        np.minimum.at(self.child_lo, self.node_parent[1:], child)
        np.maximum.at(self.child_hi, self.node_parent[1:], child + 1)
        self.child_hi = np.maximum(self.child_hi, self.child_lo)
        self.child_lo = np.minimum(self.child_lo, self.child_hi)
        # token -> node (-1: no bytes, i.e. special), and node -> its token (-1: none); tokens
        # with identical bytes share a node, the extra ones are listed in dup_nodes/dup_tokens
        self.token_node = np.where(token_node >= 0, new_id[np.maximum(token_node, 0)], -1)
        tokens = np.nonzero(self.token_node >= 0)[0]
        self.node_token = np.full(n, -1, dtype=np.int64)
        self.node_token[self.token_node[tokens]] = tokens
        duplicate = tokens[self.node_token[self.token_node[tokens]] != tokens]
        self.dup_nodes = self.token_node[duplicate]
        self.dup_tokens = duplicate
        self.max_depth = int(self.node_depth.max()) if n else 0
        bounds = np.searchsorted(self.node_depth, np.arange(self.max_depth + 2))
        self.levels = [(int(bounds[d]), int(bounds[d + 1])) for d in range(1, self.max_depth + 1)]

    def walk(self, first_nodes: np.ndarray | None, dfa: LazyTable, start: int, boundaries: bool = False) -> WalkResult:
        """Walk the subtrees under `first_nodes` (None: the whole trie) through `dfa` (a
        ByteDFA or a Lexer) whose state before them is `start`.

        boundaries: report lexeme ends (needs `dfa.accept_group`: int [capacity + 1], -1 = the
        state ends no lexeme); False for a plain regex, whose end is the end of everything.
        """
        alive: list[np.ndarray] = []  # live nodes, level by level
        found: list[tuple[np.ndarray, np.ndarray]] | None = [] if boundaries else None
        if first_nodes is None:
            self._walk_levels(dfa, start, alive, found)
        else:
            self._walk_frontier(first_nodes, dfa, start, alive, found)
        nodes = np.concatenate(alive) if alive else np.zeros(0, dtype=np.int64)
        tokens = self.node_token[nodes]
        allowed = np.zeros(self.vocab_size, dtype=bool)
        allowed[tokens[tokens >= 0]] = True
        if self.dup_tokens.shape[0]:
            allowed[self.dup_tokens[np.isin(self.dup_nodes, nodes)]] = True
        packed = pack_bool_mask(allowed, self.num_words)
        if found:
            b_nodes = np.concatenate([f[0] for f in found])
            b_groups = np.concatenate([f[1] for f in found]).astype(np.int64)
            return WalkResult(packed, b_nodes, b_groups)
        empty = np.zeros(0, dtype=np.int64)
        return WalkResult(packed, empty, empty)

    def _walk_levels(self, dfa, start, alive, found) -> None:
        """Whole-trie walk, one level at a time: a level where many nodes are live is processed
        densely (one contiguous slice), a sparse one only at the children of live nodes."""
        byte_class = dfa.byte_class
        live = np.zeros(1, dtype=np.int64)  # live nodes of the previous level (the root) ...
        live_state = np.full(1, start, dtype=np.int32)  # ... and their DFA states
        prev_lo, prev_hi = 0, 1
        for lo, hi in self.levels:
            first = self.child_lo[live]
            count = self.child_hi[live] - first
            total = int(count.sum())
            if total == 0:
                return
            table = dfa.ensure(live_state)
            if 4 * total >= hi - lo:
                prev_dense = np.full(prev_hi - prev_lo, -1, dtype=np.int32)
                prev_dense[live - prev_lo] = live_state
                nodes = None
                prev = prev_dense[self.node_parent[lo:hi] - prev_lo]
                nxt = table[prev, byte_class[self.node_byte[lo:hi]]]
            else:
                nodes = _expand(first, count, total)
                prev = np.repeat(live_state, count)
                nxt = table[prev, byte_class[self.node_byte[nodes]]]
            ok = nxt >= 0
            if found is not None:
                group = dfa.accept_group[prev]
                hit = ~ok & (group >= 0)
                if hit.any():
                    found.append((lo + np.flatnonzero(hit) if nodes is None else nodes[hit], group[hit]))
            live = lo + np.flatnonzero(ok) if nodes is None else nodes[ok]
            live_state = nxt[ok]
            alive.append(live)
            prev_lo, prev_hi = lo, hi

    def _walk_frontier(self, frontier, dfa, start, alive, found) -> None:
        """Walk of subtrees whose roots may sit at different depths: frontier by frontier."""
        prev = np.full(frontier.shape[0], start, dtype=np.int32)
        byte_class = dfa.byte_class
        while frontier.shape[0]:
            table = dfa.ensure(prev)
            nxt = table[prev, byte_class[self.node_byte[frontier]]]
            ok = nxt >= 0
            if found is not None:
                group = dfa.accept_group[prev]
                hit = ~ok & (group >= 0)
                if hit.any():
                    found.append((frontier[hit], group[hit]))
            live = frontier[ok]
            alive.append(live)
            first = self.child_lo[live]
            count = self.child_hi[live] - first
            total = int(count.sum())
            if total == 0:
                return
            frontier = _expand(first, count, total)
            prev = np.repeat(nxt[ok], count)


def _expand(first: np.ndarray, count: np.ndarray, total: int) -> np.ndarray:
    """Concatenated ranges [first[i], first[i] + count[i])."""
    starts = np.cumsum(count) - count
    return np.repeat(first - starts, count) + np.arange(total, dtype=np.int64)


def _preorder_trie(token_bytes: Sequence[bytes | None]):
    """(byte, parent, depth, token_node) arrays of the trie in DFS preorder (node 0 = root)."""
    entries = sorted((b, i) for i, b in enumerate(token_bytes) if b)
    node_byte = [0]
    node_parent = [-1]
    node_depth = [0]
    token_node = np.full(len(token_bytes), -1, dtype=np.int64)
    path = [0]  # path[d] = node at depth d on the current token's path
    prev = b""
    for data, tok in entries:
        common = 0
        limit = min(len(prev), len(data))
        while common < limit and prev[common] == data[common]:
            common += 1
        del path[common + 1 :]
        for d in range(common, len(data)):
            node_byte.append(data[d])
            node_parent.append(path[d])
            node_depth.append(d + 1)
            path.append(len(node_byte) - 1)
        token_node[tok] = path[len(data)]
        prev = data
    return (
        np.array(node_byte, dtype=np.int64),
        np.array(node_parent, dtype=np.int64),
        np.array(node_depth, dtype=np.int64),
        token_node,
    )
