"""The `none` prefix cache: caches nothing, so every request computes its whole prompt."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from lmlang.runtime.cache.base import MatchResult, PrefixCache, register_cache


@register_cache("none")
class NoCache(PrefixCache):
    """Every match is empty and every handle is None; finished requests free all their slots."""

    def __init__(self, allocator: Any, page_size: int = 1) -> None:
        self.allocator = allocator
        self.page_size = page_size

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        return MatchResult(torch.empty(0, dtype=torch.int64), None)

    def lock(self, node: Any) -> None:
        pass

    def unlock(self, node: Any) -> None:
        pass

    def cache_finished(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> None:
        self.allocator.free(slots)

    def cache_unfinished(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> MatchResult:
        return MatchResult(slots, None)

    def cached_length(self, node: Any) -> int:
        return 0

    def evict(self, num_tokens: int) -> int:
        return 0

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def reset(self) -> None:
        pass
