"""The token trie as flat arrays, and the vectorized walk of a trie forest through a byte DFA.

Nodes are numbered in DFS preorder over the sorted token byte strings (node 0 = the empty root),
so a node's subtree is the contiguous range [n, end[n]). A *forest* is a set of disjoint subtrees
given by their root nodes; the suffixes below a lexeme boundary form one (grammar/cfg_matcher.py).

`walk` runs every node of a forest through a DFA at once, one numpy gather per trie level: the
state of a node is table[state of its parent, class of its byte], with forest roots starting from
the given state. This is the whole cost of a cache miss; results are cached by the callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .bitmask import pack_bool_mask


@dataclass(frozen=True, eq=False)
class ForestOrder:
    """The nodes of a forest sorted by depth, ready for level-by-level walking.

    nodes: int64 [M] global node ids, by depth; parent_local: int64 [M] index into `nodes` of each
    node's parent, or M for forest roots (the walk keeps the start state at position M);
    levels: (lo, hi) slices of equal depth.
    """

    nodes: np.ndarray
    parent_local: np.ndarray
    levels: tuple[tuple[int, int], ...]


@dataclass(frozen=True, eq=False)
class WalkResult:
    """What a forest walk found.

    allowed: int32 [num_words] packed mask of tokens whose bytes stay alive in the DFA all along.
    boundary_nodes / boundary_groups: int64 [K] the nodes whose byte the DFA could not take while
    its state before that byte was accepting (group = accept group of that state): the lexeme
    ends before these nodes, and their subtrees continue in a new lexeme.
    """

    allowed: np.ndarray
    boundary_nodes: np.ndarray
    boundary_groups: np.ndarray


class TokenTrie:
    """Flat-array trie over the non-special tokens of a vocabulary."""

    def __init__(self, token_bytes: Sequence[bytes | None]):
        self.vocab_size = len(token_bytes)
        entries = sorted((b, i) for i, b in enumerate(token_bytes) if b)
        node_byte = [0]
        node_parent = [-1]
        node_depth = [0]
        token_node = np.full(self.vocab_size + 1, -1, dtype=np.int64)
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
        n = len(node_byte)
        self.num_nodes = n
        self.node_byte = np.array(node_byte, dtype=np.int64)
        self.node_parent = np.array(node_parent, dtype=np.int64)
        self.node_depth = np.array(node_depth, dtype=np.int64)
        # subtree end: preorder => end[n] = n + subtree size
        size = np.ones(n, dtype=np.int64)
        order = np.argsort(-self.node_depth, kind="stable")
        for lo, hi in _levels(self.node_depth[order]):
            level = order[lo:hi]
            level = level[level != 0]
            np.add.at(size, self.node_parent[level], size[level])
        self.node_end = np.arange(n, dtype=np.int64) + size
        # token_node[vocab_size] = -1 is a sentinel; -1 indexes the sentinel "not alive" slot
        self.token_node = token_node
        self.max_depth = int(self.node_depth.max())
        self.full_forest = self.forest_order(np.nonzero(self.node_depth == 1)[0])

    def forest_order(self, roots: np.ndarray) -> ForestOrder:
        """Depth-sorted order of the subtrees under `roots` (disjoint, any order)."""
        roots = np.asarray(roots, dtype=np.int64)
        lengths = self.node_end[roots] - roots
        total = int(lengths.sum())
        offsets = np.cumsum(lengths) - lengths
        nodes = np.repeat(roots - offsets, lengths) + np.arange(total, dtype=np.int64)
        depth = self.node_depth[nodes]
        order = np.argsort(depth, kind="stable")
        nodes = nodes[order]
        local_of = np.empty(self.num_nodes, dtype=np.int64)
        local_of[nodes] = np.arange(total, dtype=np.int64)
        parent_local = local_of[self.node_parent[nodes]]
        parent_local[local_of[roots]] = total
        return ForestOrder(nodes=nodes, parent_local=parent_local, levels=tuple(_levels(depth[order])))

    def walk(
        self,
        forest: ForestOrder,
        table: np.ndarray,
        byte_class: np.ndarray,
        start: int,
        accept_group: np.ndarray | None = None,
    ) -> WalkResult:
        """Walk every node of `forest` through a DFA from `start`.

        table: int32 [S + 1, C] with an all -1 last row; byte_class: [256];
        accept_group: int [S + 1] (-1 = the state ends no lexeme; last entry -1) or None when the
        DFA's end is the end of everything (a plain regex): then no boundaries are reported.
        """
        nodes = forest.nodes
        m = nodes.shape[0]
        state = np.empty(m + 1, dtype=np.int32)
        state[m] = start
        node_class = byte_class[self.node_byte[nodes]]
        b_nodes, b_groups = [], []
        for lo, hi in forest.levels:
            prev = state[forest.parent_local[lo:hi]]
            nxt = table[prev, node_class[lo:hi]]
            state[lo:hi] = nxt
            if accept_group is not None:
                group = accept_group[prev]
                hit = (nxt < 0) & (group >= 0)
                if hit.any():
                    b_nodes.append(nodes[lo:hi][hit])
                    b_groups.append(group[hit])
        alive = np.zeros(self.num_nodes + 1, dtype=bool)  # last slot: sentinel for token_node -1
        alive[nodes] = state[:m] >= 0
        allowed = alive[self.token_node[: self.vocab_size]]
        packed = pack_bool_mask(allowed, (self.vocab_size + 31) // 32)
        if b_nodes:
            return WalkResult(packed, np.concatenate(b_nodes), np.concatenate(b_groups).astype(np.int64))
        empty = np.zeros(0, dtype=np.int64)
        return WalkResult(packed, empty, empty)


def _levels(sorted_depth: np.ndarray) -> list[tuple[int, int]]:
    """(lo, hi) runs of equal values in a sorted array."""
    if sorted_depth.shape[0] == 0:
        return []
    cuts = np.flatnonzero(np.diff(sorted_depth)) + 1
    bounds = [0, *cuts.tolist(), sorted_depth.shape[0]]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
