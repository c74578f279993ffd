"""Locking, accounting and LRU eviction shared by the tree-shaped prefix caches (`radix`, `block`).

Both caches store cached tokens in nodes that form a tree through `parent` links; a handle is a
node and stands for the path root..node. `LruTreeCache` implements everything that depends only on
that shape:

- locks are reference counts (`lock_ref`) on every node of the path; a node's tokens count as
  protected while its count is positive, evictable otherwise;
- eviction frees whole unlocked leaves in least-recently-used order through a heap with lazy
  invalidation: a node has at most one heap entry (`in_heap`), stamped with its `last_access`
  when pushed; a popped entry whose node was touched since is pushed again with the new time, one
  that is no longer an evictable leaf is dropped;
- `cache_finished` / `cache_unfinished` around a subclass's `_insert_request`.

A node must carry `parent`, `slots` (its tokens' KV slots), `lock_ref`, `last_access`, `end`
(tokens on the path root..node), `in_heap` and a unique `id` (the heap's tie-breaker). Subclasses
say how big a node is, whether it is an evictable leaf and how to take it out of the structure.
"""

from __future__ import annotations

import heapq
from abc import abstractmethod
from typing import Any, Sequence

import torch

from lmlang.runtime.cache.base import MatchResult, PrefixCache

_EMPTY = torch.empty(0, dtype=torch.int64)


def join_slots(pieces: list) -> torch.Tensor:
    """The slot tensors `pieces` as one int64 tensor (no copy for zero or one piece)."""
    if not pieces:
        return _EMPTY
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


class LruTreeCache(PrefixCache):
    """Ref-counted locks and lazy-heap LRU eviction over a tree of nodes; see the module docstring.

    Invariants: `_evictable` / `_protected` are the token counts of the cached nodes whose
    `lock_ref` is zero / positive; every evictable leaf is in `_heap` (`in_heap` set).
    """

    root: Any = None  # the node where lock paths stop (None: they stop past the first block)

    def __init__(self, allocator: Any, page_size: int) -> None:
        self.allocator = allocator
        self.page_size = page_size
        self._clock = 0  # bumped once per lookup or insertion: equal times mean one operation
        self._heap: list = []  # (last_access, id, node) of candidate leaves
        self._evictable = 0
        self._protected = 0

    @abstractmethod
    def _node_size(self, node: Any) -> int:
        """Number of cached tokens `node` holds."""

    @abstractmethod
    def _is_evictable_leaf(self, node: Any) -> bool:
        """True when `node` is still cached, has no cached children and is not locked."""

    @abstractmethod
    def _remove(self, node: Any) -> Any:
        """Takes the evictable leaf `node` out of the structure; returns its parent (or None)."""

    @abstractmethod
    def _insert_request(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> tuple[Any, int, list]:
        """Caches what it can of a request's tokens; returns (handle of the cached path or None,
        how many leading tokens the cache now owns, the cache's slot tensors for them). Frees the
        request's slots that duplicate tokens cached meanwhile; the rest stay the request's."""

    def _owned_from(self, tokens: list, slots: torch.Tensor, node: Any) -> int:
        """Checks a request's tokens against its slots and locked `node`; returns `cached_length(node)`."""
        if len(tokens) != slots.shape[0]:
            raise ValueError(f"token_ids ({len(tokens)}) and slots ({slots.shape[0]}) differ in length")
        owned_from = self.cached_length(node)
        if owned_from > len(tokens):
            raise ValueError("token_ids is shorter than the request's locked prefix")
        return owned_from

    def cached_length(self, node: Any) -> int:
        return 0 if node is None else node.end

    def lock(self, node: Any) -> None:
        while node is not None and node is not self.root:
            if node.lock_ref == 0:
                size = self._node_size(node)
                self._evictable -= size
                self._protected += size
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Any) -> None:
        leaf = node
        while node is not None and node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError(f"{type(self).__name__}.unlock: node is not locked")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                size = self._node_size(node)
                self._evictable += size
                self._protected -= size
            node = node.parent
        if leaf is not None:
            self._offer(leaf)

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def cache_finished(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> None:
        _, owned, _ = self._insert_request(token_ids, slots, node)
        if owned < slots.shape[0]:
            self.allocator.free(slots[owned:])
        self.unlock(node)

    def cache_unfinished(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> MatchResult:
        handle, owned, pieces = self._insert_request(token_ids, slots, node)
        new_slots = join_slots(pieces + [slots[owned:]])
        self.lock(handle)
        self.unlock(node)
        return MatchResult(new_slots, handle)

    def _offer(self, node: Any) -> None:
        """Gives `node` a heap entry if it is an evictable leaf without one."""
        if not node.in_heap and self._is_evictable_leaf(node):
            node.in_heap = True
            heapq.heappush(self._heap, (node.last_access, node.id, node))

    def evict(self, num_tokens: int) -> int:
        freed = 0
        heap = self._heap
        released = []  # freed in one call: one allocator round trip however many leaves go
        while freed < num_tokens and heap:
            stamp, _, node = heapq.heappop(heap)
            if not self._is_evictable_leaf(node):
                node.in_heap = False
                continue
            if node.last_access != stamp:
                heapq.heappush(heap, (node.last_access, node.id, node))
                continue
            node.in_heap = False
            size = self._node_size(node)
            parent = self._remove(node)
            released.append(node.slots)
            freed += size
            self._evictable -= size
            if parent is not None:
                self._offer(parent)
        if released:
            self.allocator.free(torch.cat(released))
        return freed

    def reset(self) -> None:
        self.evict(self._evictable)

