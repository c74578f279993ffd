"""The `radix` prefix cache: a radix tree over token ids whose edges carry their tokens' KV slots.

Each node holds a run of tokens (`key`, a whole number of pages) and their slots; the path
root..node spells a cached prefix. Children are keyed by their first token (`page_size == 1`) or
their first page as a tuple, so a lookup costs one dict probe and one list-slice comparison per
node on the path: O(prompt length) with C-level constants. A match that ends inside an edge splits
that node, so every handle stands for exactly the prefix it matched.

Locks and eviction (reference counts on the path, whole unlocked leaves freed least recently used
first through a lazily invalidated heap) are `lru.LruTreeCache`'s.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence

import torch

from lmlang.runtime.cache.base import MatchResult, as_token_list, register_cache
from lmlang.runtime.cache.lru import LruTreeCache, join_slots

_EMPTY = torch.empty(0, dtype=torch.int64)
_CHUNK = 32  # tokens compared per list slice when locating a mismatch inside an edge


class _Node:
    __slots__ = ("key", "slots", "parent", "children", "lock_ref", "last_access", "end", "in_heap", "id")

    def __init__(self, key: list, slots: torch.Tensor, parent: Optional["_Node"], end: int, node_id: int) -> None:
        self.key = key  # token ids of this edge
        self.slots = slots  # [len(key)] int64, owned by the tree
        self.parent = parent  # None for the root and for removed nodes
        self.children: dict = {}
        self.lock_ref = 0  # number of locks whose path passes through this node
        self.last_access = 0
        self.end = end  # tokens on the path root..node, this edge included
        self.in_heap = False
        self.id = node_id


def _common_len(key: list, tokens: list, start: int) -> int:
    """Length of the common prefix of `key` and `tokens[start:]`."""
    n = min(len(key), len(tokens) - start)
    i = 0
    while i + _CHUNK <= n and tokens[start + i : start + i + _CHUNK] == key[i : i + _CHUNK]:
        i += _CHUNK
    while i < n and tokens[start + i] == key[i]:
        i += 1
    return i


@register_cache("radix")
class RadixCache(LruTreeCache):
    """Variable-length token prefixes in a radix tree; see the module docstring."""

    def __init__(self, allocator: Any, page_size: int = 1) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        super().__init__(allocator, page_size)
        self._ids = itertools.count()
        self.root = _Node([], _EMPTY, None, 0, next(self._ids))

    # ---- lookup ---------------------------------------------------------------------------

    def _child_key(self, tokens: list, pos: int) -> Any:
        if self.page_size == 1:
            return tokens[pos]
        return tuple(tokens[pos : pos + self.page_size])

    def _walk(self, tokens: list) -> tuple[_Node, list]:
        """Deepest node whose path is a prefix of `tokens` (whole pages; `len(tokens)` is a
        multiple of `page_size`), splitting the last edge if the match ends inside it, and the
        slot tensors along the path. Stamps every node on the path with a new access time."""
        self._clock += 1
        now = self._clock
        node = self.root
        node.last_access = now
        pieces = []
        pos = 0
        n = len(tokens)
        ps = self.page_size
        while pos < n:
            child = node.children.get(tokens[pos] if ps == 1 else tuple(tokens[pos : pos + ps]))
            if child is None:
                break
            key = child.key
            c = len(key)
            if tokens[pos : pos + c] != key:  # the match ends inside this edge
                c = _common_len(key, tokens, pos)
                c -= c % ps
                child = self._split(child, c)
            child.last_access = now
            pieces.append(child.slots)
            node = child
            pos += c
        return node, pieces

    def _split(self, node: _Node, c: int) -> _Node:
        """Cuts `node`'s edge after `c` tokens; returns the new head node. `node` keeps the tail,
        so handles to it stay valid; the head carries the same locks (every lock through the
        tail passes through it)."""
        parent = node.parent
        head = _Node(node.key[:c], node.slots[:c], parent, node.end - len(node.key) + c, next(self._ids))
        head.lock_ref = node.lock_ref
        head.last_access = node.last_access
        head.children[self._child_key(node.key, c)] = node
        parent.children[self._child_key(head.key, 0)] = head
        node.key = node.key[c:]
        node.slots = node.slots[c:]
        node.parent = head
        return head

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        tokens = as_token_list(token_ids)
        usable = len(tokens) - len(tokens) % self.page_size
        node, pieces = self._walk(tokens[:usable] if usable < len(tokens) else tokens)
        return MatchResult(join_slots(pieces), None if node is self.root else node)

    # ---- insertion ------------------------------------------------------------------------

    def _insert(self, tokens: list, slots: torch.Tensor) -> tuple[_Node, int, list]:
        """Caches `tokens` (whole pages) with `slots`; returns the node of the whole path, how many
        leading tokens were cached already (their `slots` entries stay the caller's), and the
        tree's slot tensors for the path."""
        node, pieces = self._walk(tokens)
        matched = node.end
        if matched < len(tokens):
            leaf = _Node(tokens[matched:], slots[matched:].clone(), node, len(tokens), next(self._ids))
            leaf.last_access = self._clock
            node.children[self._child_key(tokens, matched)] = leaf
            self._evictable += len(leaf.key)
            pieces.append(leaf.slots)
            self._offer(leaf)
            node = leaf
        return node, matched, pieces

    def _insert_request(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> tuple[Optional[_Node], int, list]:
        """Shared part of `cache_finished` / `cache_unfinished`: inserts the request's whole
        pages and frees its slots that duplicate tokens cached meanwhile."""
        tokens = as_token_list(token_ids)
        owned_from = self._owned_from(tokens, slots, node)
        usable = len(tokens) - len(tokens) % self.page_size
        new_node, matched, pieces = self._insert(tokens[:usable], slots[:usable])
        if matched > owned_from:
            self.allocator.free(slots[owned_from:matched])
        return None if new_node is self.root else new_node, usable, pieces

    # ---- eviction hooks -------------------------------------------------------------------

    def _node_size(self, node: _Node) -> int:
        return len(node.key)

    def _is_evictable_leaf(self, node: _Node) -> bool:
        # parent is None for the root and for removed nodes
        return not node.children and node.lock_ref == 0 and node.parent is not None

    def _remove(self, node: _Node) -> _Node:
        parent = node.parent
        del parent.children[self._child_key(node.key, 0)]
        node.parent = None
        return parent
