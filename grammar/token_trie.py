"""The token trie as flat arrays, and the vectorized walk of trie subtrees through a byte DFA.

Nodes are numbered breadth-first (by depth, and in byte order within a depth; node 0 is the
empty root), so the children of a node are the contiguous range [child_lo, child_hi). A walk
runs trie subtrees through a DFA (a ByteDFA or a Lexer, see grammar/lazy_table.py) frontier by
frontier: child state = table[parent state, class of its byte]; only children of live nodes are
visited, so a restrictive state costs little. A permissive state (inside a JSON string, nearly
every byte leads back to the state itself) would make the walk visit the whole trie; instead a
live node whose subtree uses only bytes that keep its state (`sub_bytes` against the DFA's
`leave_bytes`) is taken whole: all its tokens are allowed and none of it is visited. Tokens are
listed in the trie's depth-first order (`tok_order`), where the tokens of a subtree are one
contiguous range, so such a subtree costs one range. Likewise a unary chain (a long token such
as "-------") whose bytes keep the state is crossed in one step. Narrow frontiers (a restrictive
state: a few live nodes) go on depth first in Python, where numpy's per-call cost would
dominate.

Several walks (different start states of one DFA) run as one batch (`walk_many`), which shares
the numpy per-call overhead: how a compiled constraint precomputes its masks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bitmask import pack_bool_mask
from .lazy_table import LazyTable, fold_byte_sets

# a walk goes on in Python (see _walk_tail) from a frontier of at most TAIL_NODES candidates, for
# at most TAIL_VISITS live nodes at a time: on narrow frontiers numpy's cost per call dominates
TAIL_NODES = 64
TAIL_NODES_BATCH = 16  # a batched walk's last few candidates (long multi-byte tokens)
TAIL_VISITS = 400
FEW_BYTES = 16  # a single walk from a state that lets at most this many bytes through looks them up
FEW_TOKENS = 2048  # a mask with at most this many tokens is packed word by word


@dataclass
class _WalkOutput:
    """What a walk has found so far: token ranges (lo, hi), their walk (which; None for a
    single walk) and lexeme boundaries (found), as lists of arrays."""

    lo: list
    hi: list
    which: list | None
    found: list


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
    """Flat-array trie over the non-special tokens of a vocabulary (breadth-first numbering).

    Per node v: node_byte, node_depth, node_parent, children [child_lo, child_hi), sub_size
    (nodes in its subtree, itself included); its own tokens (several when tokens share bytes)
    are tok_order[tok_lo[v]:own_hi[v]] and the tokens of its whole subtree
    tok_order[tok_lo[v]:sub_hi[v]]; sub_bytes[:, v] (uint64 [4]: word k holds bytes 64k..64k+63
    of a 256-bit set) holds the bytes of its strict descendants. A unary chain (long tokens
    such as "-----...": nodes with one child each) is walked in one step where its bytes keep
    the state: chain_end[v] is the first node from v down with other than one child, and
    chain_bytes[:, v] the bytes from v (excluded) to chain_end[v] (chain_head_bytes: without
    chain_end[v]'s own, for chains that keep the state up to their last byte); the tokens on
    the way are tok_order[tok_lo[v]:own_hi[chain_end[v]]] (depth-first order).
    """

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
        self.max_depth = int(self.node_depth.max()) if n else 0
        bounds = np.searchsorted(self.node_depth, np.arange(self.max_depth + 2))
        self.levels = [(int(bounds[d]), int(bounds[d + 1])) for d in range(1, self.max_depth + 1)]
        self._subtree_arrays(order, token_node)
        self._lists = self._python_lists()

    def _subtree_arrays(self, preorder: np.ndarray, token_node: np.ndarray) -> None:
        """tok_order, tok_lo / own_hi / sub_hi and sub_bytes (see the class docstring), from
        preorder (node -> its depth-first position) and token_node (token -> the depth-first
        position of its node, -1: none)."""
        n = self.num_nodes
        size = np.ones(n, dtype=np.int64)  # nodes in the subtree, the node included
        bit = np.zeros((n, 4), dtype=np.uint64)
        bit[np.arange(n), self.node_byte >> 6] = np.left_shift(np.uint64(1), (self.node_byte & 63).astype(np.uint64))
        bit[0] = 0
        sub = np.zeros((n, 4), dtype=np.uint64)
        for lo, hi in reversed(self.levels):
            np.add.at(size, self.node_parent[lo:hi], size[lo:hi])
            np.bitwise_or.at(sub, self.node_parent[lo:hi], sub[lo:hi] | bit[lo:hi])
        self.sub_bytes = np.ascontiguousarray(sub.T)  # [4, n]: one contiguous array per word
        self.sub_size = size
        # unary chains: from v, follow single children to the first node with 0 or 2+ children
        chain_end = np.arange(n, dtype=np.int64)
        head = np.zeros((n, 4), dtype=np.uint64)  # chain bytes but chain_end's own
        single = (self.child_hi - self.child_lo) == 1
        for lo, hi in reversed([(0, 1)] + self.levels):
            nodes = np.arange(lo, hi, dtype=np.int64)[single[lo:hi]]
            only = self.child_lo[nodes]
            chain_end[nodes] = chain_end[only]
            head[nodes] = np.where((chain_end[only] == only)[:, None], 0, head[only] | bit[only])
        self.chain_end = chain_end
        self.chain_head_bytes = np.ascontiguousarray(head.T)
        self.chain_bytes = np.ascontiguousarray(np.where(single[:, None], head | bit[chain_end], 0).T)
        # the vectorized walk tests folded sets (half the work; see fold_byte_sets)
        self._sub_folded = fold_byte_sets(self.sub_bytes)
        self._chain_folded = fold_byte_sets(self.chain_bytes)
        self._head_folded = fold_byte_sets(self.chain_head_bytes)
        tokens = np.nonzero(token_node >= 0)[0]
        pre = token_node[tokens]  # preorder position of each token's node
        by_pre = np.lexsort((tokens, pre))
        self.tok_order = tokens[by_pre]
        tok_pre = pre[by_pre]
        self.tok_lo = np.searchsorted(tok_pre, preorder, "left")
        self.own_hi = np.searchsorted(tok_pre, preorder, "right")
        self.sub_hi = np.searchsorted(tok_pre, preorder + size, "left")

    def walk(self, first_nodes: np.ndarray | None, dfa: LazyTable, start: int, boundaries: bool = False) -> WalkResult:
        """Walk the subtrees under `first_nodes` (None: the whole trie) through `dfa` (a
        ByteDFA or a Lexer) whose state before them is `start`.

        boundaries: report lexeme ends (needs `dfa.accept_group`: int [capacity + 1], -1 = the
        state ends no lexeme); False for a plain regex, whose end is the end of everything.
        """
        if first_nodes is None:
            live = dfa.walk_facts(start, boundaries)[1]
            nodes = self._root_children(live) if live is not None and len(live) <= FEW_BYTES else self._roots(1)
        else:
            nodes = np.asarray(first_nodes, dtype=np.int64)
        lo, hi, _, found = self._walk(dfa, nodes, np.full(nodes.shape[0], start, dtype=np.int32), None, boundaries)
        count = hi - lo
        packed = self._pack(self.tok_order[_expand(lo, count, int(count.sum()))])
        if found:
            return WalkResult(packed, np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]))
        empty = np.zeros(0, dtype=np.int64)
        return WalkResult(packed, empty, empty)

    def walk_many(self, dfa: LazyTable, starts: np.ndarray) -> np.ndarray:
        """int32 [len(starts), num_words]: the whole-trie mask of each start state of `dfa`
        (a ByteDFA; no lexeme boundaries), computed in one batched walk."""
        num = starts.shape[0]
        roots = self._roots(num)
        fan = roots.shape[0] // max(num, 1)
        prev = np.repeat(starts.astype(np.int32), fan)
        batch = np.repeat(np.arange(num, dtype=np.int64), fan)
        lo, hi, which, _ = self._walk(dfa, roots, prev, batch, False)
        count = hi - lo
        total = int(count.sum())
        tokens = self.tok_order[_expand(lo, count, total)]
        allowed = np.zeros((num, self.num_words * 32), dtype=bool)
        allowed[np.repeat(which, count), tokens] = True
        return np.packbits(allowed, axis=1, bitorder="little").view("<i4").astype(np.int32, copy=False)

    def _pack(self, tokens: np.ndarray) -> np.ndarray:
        """int32 [num_words]: the packed mask of `tokens` (distinct ids)."""
        if tokens.shape[0] > FEW_TOKENS:
            allowed = np.zeros(self.vocab_size, dtype=bool)
            allowed[tokens] = True
            return pack_bool_mask(allowed, self.num_words)
        words = np.zeros(self.num_words, dtype=np.uint32)
        np.bitwise_or.at(words, tokens >> 5, np.left_shift(np.uint32(1), (tokens & 31).astype(np.uint32)))
        return words.view(np.int32)

    def _root_children(self, byte_values: list[int]) -> np.ndarray:
        """The root's children with these bytes (those that exist)."""
        lo, hi = self.levels[0] if self.levels else (0, 0)
        byte = self._lists[0]
        found = []
        for x in byte_values:
            c = bisect_left(byte, x, lo, hi)
            if c < hi and byte[c] == x:
                found.append(c)
        return np.array(found, dtype=np.int64)

    def _roots(self, copies: int) -> np.ndarray:
        """The children of the root (the first trie level), `copies` times over."""
        if not self.levels:
            return np.zeros(0, dtype=np.int64)
        lo, hi = self.levels[0]
        return np.tile(np.arange(lo, hi, dtype=np.int64), copies)

    def _walk(self, dfa, nodes, prev, batch, boundaries):
        """Walk from candidate `nodes` (their bytes not yet taken) in DFA states `prev`, each of
        walk `batch` (None: a single walk). Returns the token ranges allowed (lo, hi: int64 [R],
        into tok_order), the walk of each range (int64 [R] or None) and, with `boundaries`, a
        list of (nodes, groups) arrays where a lexeme ends.

        Frontier by frontier in numpy while it is wide; a narrow one (at most TAIL_NODES
        candidates, TAIL_NODES_BATCH in a batch) goes depth first in Python (`_walk_tail`),
        which hands the live nodes it has not expanded back after TAIL_VISITS nodes if the
        subtrees turn out large."""
        out = _WalkOutput([], [], [] if batch is not None else None, [])
        while nodes.shape[0]:
            if nodes.shape[0] <= (TAIL_NODES if batch is None else TAIL_NODES_BATCH):
                nodes, state, batch = self._walk_tail(dfa, nodes, prev, batch, boundaries, out)
                if not nodes.shape[0]:
                    break
            else:
                nodes, state, batch = self._take(dfa, nodes, prev, batch, boundaries, out)
            nodes, prev, batch = self._expand_live(dfa, nodes, state, batch, out)
        empty = np.zeros(0, dtype=np.int64)
        lo = np.concatenate(out.lo) if out.lo else empty
        hi = np.concatenate(out.hi) if out.hi else empty
        which = None if batch is None else np.concatenate(out.which) if out.which else empty
        return lo, hi, which, out.found

    def _take(self, dfa, nodes, prev, batch, boundaries, out: _WalkOutput):
        """Candidates -> the live ones (nodes, their states, batch); lexeme ends to `out`."""
        table = dfa.ensure(prev)
        nxt = table[prev, dfa.byte_class[self.node_byte[nodes]]]
        ok = nxt >= 0
        if boundaries:
            group = dfa.accept_group[prev]
            hit = ~ok & (group >= 0)
            if hit.any():
                out.found.append((nodes[hit], group[hit].astype(np.int64)))
        return nodes[ok], nxt[ok], None if batch is None else batch[ok]

    def _expand_live(self, dfa, nodes, state, batch, out: _WalkOutput):
        """Live nodes (in `state`) -> their tokens to `out`, and the candidates below them
        (nodes, prev, batch). A unary chain whose bytes keep `state` is taken in one step, and
        a subtree that never leaves `state` is allowed whole and not visited."""
        dfa.ensure(state[self.child_hi[nodes] > self.child_lo[nodes]])  # leave_bytes where needed
        leave = dfa.leave_folded
        out.lo.append(self.tok_lo[nodes])
        # the whole chain keeps the state, or all of it but its last byte (a long run ended by
        # a newline, a quote, ...): jump to its end, or to the node before
        ends = np.where(
            _disjoint(self._chain_folded, nodes, leave, state),
            self.chain_end[nodes],
            np.where(_disjoint(self._head_folded, nodes, leave, state), self.node_parent[self.chain_end[nodes]], nodes),
        )
        whole = _disjoint(self._sub_folded, ends, leave, state)
        out.hi.append(np.where(whole, self.sub_hi[ends], self.own_hi[ends]))
        if batch is not None:
            out.which.append(batch)
        open_ = ~whole
        parents = ends[open_]
        first = self.child_lo[parents]
        count = self.child_hi[parents] - first
        children = _expand(first, count, int(count.sum()))
        return children, np.repeat(state[open_], count), None if batch is None else np.repeat(batch[open_], count)

    def _walk_tail(self, dfa, nodes, prev, batch, boundaries, out: _WalkOutput):
        """`_take` and `_expand_live` depth first in Python, appending to `out`; returns the
        live nodes not expanded after TAIL_VISITS (nodes, states, batch; empty when done).
        Where a state lets few bytes through and a node has many children, only the children
        with those bytes are looked up (children are sorted by byte)."""
        byte, child_lo, child_hi, tok_lo, own_hi, sub_hi, sub, chain_end, chain, head, parent = self._lists
        cls = dfa._class_list
        row_lists = dfa._row_lists
        los, his, bs, b_nodes, b_groups = [], [], [], [], []
        stack = []  # live nodes: (node, state after its byte, batch)
        batches = batch.tolist() if batch is not None else [0] * nodes.shape[0]
        for v, q, b in zip(nodes.tolist(), prev.tolist(), batches):
            row = row_lists.get(q) or dfa.row_list(q)
            nq = row[cls[byte[v]]]
            if nq >= 0:
                stack.append((v, nq, b))
            elif boundaries and dfa.accept_group[q] >= 0:
                b_nodes.append(v)
                b_groups.append(int(dfa.accept_group[q]))
        visits = 0
        while stack and visits < TAIL_VISITS:
            visits += 1
            v, q, b = stack.pop()
            los.append(tok_lo[v])
            bs.append(b)
            below = sub[v]
            if below:
                leave_set, live = dfa.walk_facts(q, boundaries)
                if chain[v]:
                    if not chain[v] & leave_set:
                        v = chain_end[v]
                    elif not head[v] & leave_set:
                        v = parent[chain_end[v]]
                    below = sub[v]
                if not below & leave_set:
                    his.append(sub_hi[v])
                    continue
                row = row_lists.get(q) or dfa.row_list(q)
                lo, hi = child_lo[v], child_hi[v]
                if live is not None and 4 * len(live) < hi - lo:
                    for x in live:
                        c = bisect_left(byte, x, lo, hi)
                        if c < hi and byte[c] == x:
                            stack.append((c, row[cls[x]], b))
                else:
                    group = int(dfa.accept_group[q]) if boundaries else -1
                    for c in range(lo, hi):
                        nq = row[cls[byte[c]]]
                        if nq >= 0:
                            stack.append((c, nq, b))
                        elif group >= 0:
                            b_nodes.append(c)
                            b_groups.append(group)
            his.append(own_hi[v])
        out.lo.append(np.array(los, dtype=np.int64))
        out.hi.append(np.array(his, dtype=np.int64))
        if out.which is not None:
            out.which.append(np.array(bs, dtype=np.int64))
        if b_nodes:
            out.found.append((np.array(b_nodes, dtype=np.int64), np.array(b_groups, dtype=np.int64)))
        left = np.array(stack, dtype=np.int64).reshape(-1, 3)
        return left[:, 0].copy(), left[:, 1].astype(np.int32), (left[:, 2].copy() if batch is not None else None)

    def _python_lists(self) -> tuple[list[int], ...]:
        """Per-node arrays as Python lists (byte sets as 256-bit ints), for `_walk_tail`."""
        sub = [int.from_bytes(row.tobytes(), "little") for row in self.sub_bytes.T.copy()]
        chain = [int.from_bytes(row.tobytes(), "little") for row in self.chain_bytes.T.copy()]
        head = [int.from_bytes(row.tobytes(), "little") for row in self.chain_head_bytes.T.copy()]
        arrays = (self.node_byte, self.child_lo, self.child_hi, self.tok_lo, self.own_hi, self.sub_hi)
        return tuple(a.tolist() for a in arrays) + (sub, self.chain_end.tolist(), chain, head, self.node_parent.tolist())


def _disjoint(node_sets: np.ndarray, nodes: np.ndarray, state_sets: np.ndarray, states: np.ndarray) -> np.ndarray:
    """bool [len(nodes)]: the folded sets node_sets[:, nodes] and state_sets[:, states] (both
    uint64 [2, ...], see fold_byte_sets) share no bit, so the byte sets share no byte."""
    return ((node_sets[0][nodes] & state_sets[0][states]) | (node_sets[1][nodes] & state_sets[1][states])) == 0


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
