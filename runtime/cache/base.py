"""The prefix-cache interface shared by `radix`, `block` and `none`.

Ownership of KV slots: every allocated slot is owned either by the cache's tree (it holds a
cached token) or by exactly one request (tokens not, or not yet, handed to the cache). Slot 0 is
the dummy slot and never allocated. Accounting invariant, checked by tests after every workload:

    allocator.available() + evictable_size() + protected_size() + (slots owned by requests)
        == allocator.total

`protected_size()` counts cached tokens on a locked path; `evictable_size()` the cached tokens
that `evict` may free. A node handle returned by `match_prefix` stays valid until the cache
evicts it, which it never does while it is locked.

With `page_size > 1`, matches and insertions are in whole pages: a match is cut down to a
multiple of `page_size`, and a request's last, partial page stays the request's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lmlang.runtime.registry import Registry


def as_token_list(token_ids: Sequence[int]) -> list:
    """`token_ids` as a list of ints (lists pass through uncopied; tensors via `tolist`)."""
    if isinstance(token_ids, list):
        return token_ids
    if isinstance(token_ids, torch.Tensor):
        return token_ids.tolist()
    return list(token_ids)


@dataclass
class MatchResult:
    # [matched_len] int64, KV slots of the matched prefix, in order; read-only (it may be the
    # cache's own tensor)
    slots: torch.Tensor
    node: Any  # opaque handle for lock/unlock (None when nothing matched)

    @property
    def length(self) -> int:
        return int(self.slots.shape[0])


class PrefixCache(ABC):
    @abstractmethod
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """Longest cached prefix of `token_ids`; refreshes its LRU time; does not lock."""

    @abstractmethod
    def lock(self, node: Any) -> None:
        """Pins the path root..node against eviction (ref-counted; `None` is a no-op)."""

    @abstractmethod
    def unlock(self, node: Any) -> None:
        """Undoes one `lock(node)`."""

    @abstractmethod
    def cache_finished(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> None:
        """A request is done with `token_ids` whose KV is at `slots` (same length).

        `node` is the handle the request locked (its prefix match). The cache keeps what it
        can, frees to the allocator every slot it does not keep (duplicates of already cached
        tokens, tokens it does not cache) and unlocks `node`.
        """

    @abstractmethod
    def cache_unfinished(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> MatchResult:
        """Like `cache_finished` for a request that goes on (after a prefill chunk).

        Returns the request's new prefix: slots for the leading tokens now owned by the cache
        (already locked for the request; `node` is unlocked), followed by the request's own
        slots for the rest. `result.slots` has the length of `token_ids`; `result.node` is the
        new locked handle; `cached_length(result)` tells how many of them the cache owns.
        """

    @abstractmethod
    def cached_length(self, node: Any) -> int:
        """Number of tokens on the path root..node."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Frees at least `num_tokens` slots from unlocked LRU leaves if it can; returns the count freed."""

    @abstractmethod
    def evictable_size(self) -> int: ...

    @abstractmethod
    def protected_size(self) -> int: ...

    @abstractmethod
    def reset(self) -> None:
        """Drops every unlocked cached token (frees their slots)."""


CACHES = Registry("prefix_cache", "lmlang.runtime.cache.{name}_cache")
register_cache = CACHES.register


def create_prefix_cache(name: str, allocator: Any, page_size: int = 1) -> PrefixCache:
    return CACHES.create(name, allocator=allocator, page_size=page_size)
