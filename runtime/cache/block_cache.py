"""The `block` prefix cache: vLLM's scheme, kept as the baseline the radix cache is measured against.

A prompt is cut into full blocks of `block_size` (16) tokens; block i is identified by the chained
hash `hash((hash of block i-1, tuple(its tokens)))`, so equal hashes mean equal whole prefixes. A
dict maps the hash to the cached block (its slots, reference count, last access). Only full blocks
are cached: the tail of a prompt shorter than a block is always recomputed.

A node handle is the last block of a matched chain; locking reference-counts every block of the
chain. Eviction frees unreferenced blocks that no cached block chains from (leaf blocks), least
recently used first, through the lazily invalidated heap of `lru.LruTreeCache`. A block also keeps
its tokens and its parent so that a hash collision is a miss, never a wrong match.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence

import torch

from lmlang.runtime.cache.base import MatchResult, as_token_list, register_cache
from lmlang.runtime.cache.lru import LruTreeCache, join_slots

_ROOT_HASH = 0


class _Block:
    __slots__ = ("hash", "tokens", "parent", "slots", "lock_ref", "last_access", "end", "num_children", "in_heap", "id")

    def __init__(self, h: int, tokens: tuple, parent: Optional["_Block"], slots: torch.Tensor, node_id: int) -> None:
        self.hash = h
        self.tokens = tokens
        self.parent = parent
        self.slots = slots  # [block_size] int64, owned by the cache
        self.lock_ref = 0
        self.last_access = 0
        self.end = len(tokens) if parent is None else parent.end + len(tokens)  # tokens on the chain
        self.num_children = 0  # cached blocks whose parent this is
        self.in_heap = False
        self.id = node_id


@register_cache("block")
class BlockCache(LruTreeCache):
    """Chained-hash cache of full `block_size`-token blocks; see the module docstring."""

    def __init__(self, allocator: Any, page_size: int = 1, block_size: int = 16) -> None:
        if page_size < 1 or block_size % page_size != 0:
            raise ValueError(f"the block cache needs page_size ({page_size}) to divide block_size ({block_size})")
        super().__init__(allocator, page_size)
        self.block_size = block_size
        self._blocks: dict[int, _Block] = {}
        self._ids = itertools.count()

    def _chain(self, tokens: list):
        """Yields (hash, block tokens, cached block or None) for the full blocks of `tokens`; the
        cached block is None from the first miss on (a hit must also match tokens and parent)."""
        bs = self.block_size
        h = _ROOT_HASH
        prev = None
        for start in range(0, len(tokens) - bs + 1, bs):
            block_tokens = tuple(tokens[start : start + bs])
            h = hash((h, block_tokens))
            block = None
            if start == 0 or prev is not None:
                block = self._blocks.get(h)
                if block is not None and (block.parent is not prev or block.tokens != block_tokens):
                    block = None
            yield h, block_tokens, block
            prev = block

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        # The same walk as `_chain`, inlined: this runs for every waiting request at every step.
        tokens = as_token_list(token_ids)
        bs = self.block_size
        blocks = self._blocks
        self._clock += 1
        now = self._clock
        pieces = []
        h = _ROOT_HASH
        last = None
        for start in range(0, len(tokens) - bs + 1, bs):
            block_tokens = tuple(tokens[start : start + bs])
            h = hash((h, block_tokens))
            block = blocks.get(h)
            if block is None or block.parent is not last or block.tokens != block_tokens:
                break
            block.last_access = now
            pieces.append(block.slots)
            last = block
        return MatchResult(join_slots(pieces), last)

    def _node_size(self, node: _Block) -> int:
        return self.block_size

    def _is_evictable_leaf(self, node: _Block) -> bool:
        return node.num_children == 0 and node.lock_ref == 0 and self._blocks.get(node.hash) is node

    def _remove(self, node: _Block) -> Optional[_Block]:
        del self._blocks[node.hash]
        parent = node.parent
        if parent is not None:
            parent.num_children -= 1
        return parent

    def _insert_request(self, token_ids: Sequence[int], slots: torch.Tensor, node: Any) -> tuple[Any, int, list]:
        """Caches the request's full blocks. Returns the last cached block of its chain, how many
        leading tokens the cache now owns, and their slot tensors. Frees the request's blocks
        that duplicate cached ones; what lies beyond the returned length stays the request's."""
        tokens = as_token_list(token_ids)
        owned_from = self._owned_from(tokens, slots, node)
        bs = self.block_size
        self._clock += 1
        pieces = []
        prev = None
        end = 0
        hit_end = 0  # hits form a prefix of the chain
        for h, block_tokens, block in self._chain(tokens):
            if block is None:
                if h in self._blocks:
                    break  # hash collision with another chain: stop caching here
                block = _Block(h, block_tokens, prev, slots[end : end + bs].clone(), next(self._ids))
                self._blocks[h] = block
                self._evictable += bs
                if prev is not None:
                    prev.num_children += 1
            else:
                hit_end = end + bs
            block.last_access = self._clock
            pieces.append(block.slots)
            prev = block
            end += bs
        if prev is not None:
            self._offer(prev)
        # Cached blocks past the request's locked prefix duplicate the request's own slots there.
        if hit_end > owned_from:
            self.allocator.free(slots[owned_from:hit_end])
        return prev, end, pieces
