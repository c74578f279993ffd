"""The `radix` prefix cache: a radix tree over token ids whose edges carry their tokens' KV slots.

Each node holds a run of tokens (`key`, a whole number of pages) and their slots; the path
root..node spells a cached prefix. Children are keyed by their first token (`page_size == 1`) or
their first page as a tuple, so a lookup costs one dict probe and one list-slice comparison per
node on the path: O(prompt length) with C-level constants. A match that ends inside an edge splits
that node, so every handle stands for exactly the prefix it matched.

Locks are reference counts on every node of the path root..node. Eviction frees whole unlocked
leaves in least-recently-used order through a heap with lazy invalidation: a node has at most one
heap entry, stamped with its access time when pushed; a popped entry whose node was touched since
is pushed again with the new time, one that is no longer an evictable leaf is dropped. Times come
from a counter bumped once per lookup or insertion, so equal times mean the same operation.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Optional, Sequence

import torch

from lmlang.runtime.cache.base import MatchResult, PrefixCache, as_token_list, register_cache

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
class RadixCache(PrefixCache):
    """Variable-length token prefixes in a radix tree; see the module docstring."""

    def __init__(self, allocator: Any, page_size: int = 1) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.allocator = allocator
        self.page_size = page_size
        self._ids = itertools.count()
        self._clock = 0
        self._heap: list = []  # (last_access, id, node) of candidate leaves
        self.root = _Node([], _EMPTY, None, 0, next(self._ids))
        self._evictable = 0
        self._protected = 0

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
        return MatchResult(self._join(pieces), None if node is self.root else node)

    @staticmethod
    def _join(pieces: list) -> torch.Tensor:
        if not pieces:
            return _EMPTY
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def cached_length(self, node: Any) -> int:
        return 0 if node is None else node.end

    # ---- locks ----------------------------------------------------------------------------

    def lock(self, node: Any) -> None:
        while node is not None and node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Any) -> None:
        leaf = node
        while node is not None and node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError("RadixCache.unlock: node is not locked")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable += len(node.key)
                self._protected -= len(node.key)
            node = node.parent
        if leaf is not None:
            self._offer(leaf)

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

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

    def _insert_request(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> tuple[_Node, int, list]:
        """Shared part of `cache_finished` / `cache_unfinished`: inserts the request's whole
        pages and frees its slots that duplicate tokens cached meanwhile."""
        tokens = as_token_list(token_ids)
        if len(tokens) != slots.shape[0]:
            raise ValueError(f"token_ids ({len(tokens)}) and slots ({slots.shape[0]}) differ in length")
        owned_from = self.cached_length(node)
        if owned_from > len(tokens):
            raise ValueError("token_ids is shorter than the request's locked prefix")
        usable = len(tokens) - len(tokens) % self.page_size
        new_node, matched, pieces = self._insert(tokens[:usable], slots[:usable])
        if matched > owned_from:
            self.allocator.free(slots[owned_from:matched])
        return new_node, usable, pieces

    def cache_finished(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> None:
        _, usable, _ = self._insert_request(token_ids, slots, node)
        if usable < slots.shape[0]:
            self.allocator.free(slots[usable:])
        self.unlock(node)

    def cache_unfinished(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> MatchResult:
        new_node, usable, pieces = self._insert_request(token_ids, slots, node)
        new_slots = self._join(pieces + [slots[usable:]])
        handle = None if new_node is self.root else new_node
        self.lock(handle)
        self.unlock(node)
        return MatchResult(new_slots, handle)

    # ---- eviction -------------------------------------------------------------------------

    def _offer(self, node: _Node) -> None:
        """Gives `node` a heap entry if it is an evictable leaf without one."""
        if not node.in_heap and not node.children and node.lock_ref == 0 and node is not self.root:
            node.in_heap = True
            heapq.heappush(self._heap, (node.last_access, node.id, node))

    def evict(self, num_tokens: int) -> int:
        freed = 0
        heap = self._heap
        released = []  # freed in one call: one allocator round trip however many leaves go
        while freed < num_tokens and heap:
            stamp, _, node = heapq.heappop(heap)
            if node.parent is None or node.children or node.lock_ref > 0:
                node.in_heap = False
                continue
            if node.last_access != stamp:
                heapq.heappush(heap, (node.last_access, node.id, node))
                continue
            node.in_heap = False
            parent = node.parent
            del parent.children[self._child_key(node.key, 0)]
            node.parent = None
            released.append(node.slots)
            freed += len(node.key)
            self._evictable -= len(node.key)
            self._offer(parent)
        if released:
            self.allocator.free(torch.cat(released))
        return freed

    def reset(self) -> None:
        self.evict(self._evictable)
