"""NoCache: nothing is cached, every slot goes back to the allocator."""

import torch

from lmlang.runtime.cache.allocator import SlotAllocator
from lmlang.runtime.cache.base import create_prefix_cache


def test_none_cache_caches_nothing():
    alloc = SlotAllocator(16, page_size=4)
    cache = create_prefix_cache("none", alloc, 4)
    slots = alloc.alloc(6)
    r = cache.cache_unfinished(list(range(6)), slots, None)
    assert r.node is None and r.slots is slots and cache.cached_length(r.node) == 0
    cache.cache_finished(list(range(6)), slots, r.node)
    assert alloc.available() == 16
    assert cache.match_prefix(list(range(6))).length == 0
    assert cache.evictable_size() == cache.protected_size() == cache.evict(10) == 0
    cache.lock(None)
    cache.unlock(None)
    cache.reset()
    assert isinstance(cache.match_prefix([1]).slots, torch.Tensor)
