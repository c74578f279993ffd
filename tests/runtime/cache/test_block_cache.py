"""BlockCache: full 16-token blocks under a chained hash, ref counts, LRU eviction of leaf blocks."""

import pytest
import torch

from lmlang.runtime.cache.allocator import SlotAllocator
from lmlang.runtime.cache.base import create_prefix_cache


def make(num_slots=512, page_size=1):
    alloc = SlotAllocator(num_slots, page_size)
    return alloc, create_prefix_cache("block", alloc, page_size)


A, B, C = list(range(16)), list(range(100, 116)), list(range(200, 216))


def test_only_full_blocks_are_cached(check_accounting):
    alloc, cache = make()
    tokens = A + B + [1, 2, 3, 4, 5, 6, 7, 8]
    slots = alloc.alloc(len(tokens))
    cache.cache_finished(tokens, slots, None)
    assert cache.evictable_size() == 32
    assert alloc.available() == alloc.total - 32  # the 8-token tail was freed
    m = cache.match_prefix(tokens)
    assert m.length == 32 and m.slots.tolist() == slots[:32].tolist()
    assert cache.cached_length(m.node) == 32
    assert cache.match_prefix(A + B[:15]).length == 16
    assert cache.match_prefix(A[:15]).length == 0
    check_accounting(alloc, cache)


def test_a_block_matches_only_after_the_same_prefix(run_request):
    alloc, cache = make()
    run_request(alloc, cache, A + B)
    assert cache.match_prefix(B).length == 0
    assert cache.match_prefix(C + B).length == 0
    assert cache.match_prefix(A + C).length == 16


def test_duplicates_are_freed():
    alloc, cache = make()
    s1, s2 = alloc.alloc(32), alloc.alloc(32)
    cache.cache_finished(A + B, s1, None)
    cache.cache_finished(A + B, s2, None)
    assert cache.evictable_size() == 32
    assert alloc.available() == alloc.total - 32
    assert cache.match_prefix(A + B).slots.tolist() == s1.tolist()


def test_lock_protects_the_chain_and_leaves_go_first_in_lru_order(run_request):
    alloc, cache = make()
    run_request(alloc, cache, A + B)
    run_request(alloc, cache, A + C)
    m = cache.match_prefix(A + C)  # A and C are now newer than B
    assert cache.evict(1) == 16
    assert cache.match_prefix(A + B).length == 16
    cache.lock(m.node)
    assert cache.protected_size() == 32 and cache.evictable_size() == 0
    assert cache.evict(100) == 0
    cache.unlock(m.node)
    assert cache.evict(100) == 32
    assert alloc.available() == alloc.total
    with pytest.raises(RuntimeError, match="not locked"):
        cache.unlock(m.node)


def test_cache_unfinished_keeps_the_partial_block(check_accounting):
    alloc, cache = make()
    tokens = A + [1, 2, 3]
    slots = alloc.alloc(19)
    r = cache.cache_unfinished(tokens, slots, None)
    assert r.slots.tolist() == slots.tolist()
    assert cache.cached_length(r.node) == 16 and cache.protected_size() == 16
    check_accounting(alloc, cache, [r.slots[16:]])
    more = alloc.alloc(13)
    tokens = tokens + list(range(300, 313))
    cache.cache_finished(tokens, torch.cat([r.slots, more]), r.node)
    assert cache.evictable_size() == 32 and cache.protected_size() == 0
    check_accounting(alloc, cache)


def test_pages_must_divide_the_block(check_accounting, run_request):
    alloc, cache = make(num_slots=256, page_size=4)
    assert run_request(alloc, cache, A + B + [5, 5]) == 0
    assert run_request(alloc, cache, A + B + [5, 5]) == 32
    check_accounting(alloc, cache)
    with pytest.raises(ValueError, match="divide"):
        create_prefix_cache("block", SlotAllocator(24, 3), 3)
