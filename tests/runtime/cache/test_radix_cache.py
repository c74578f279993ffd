"""RadixCache: split on partial match, locks, LRU eviction of leaves, pages, request lifecycle."""

import pytest
import torch

from lmlang.runtime.cache.allocator import SlotAllocator
from lmlang.runtime.cache.base import create_prefix_cache


def make(num_slots=256, page_size=1):
    alloc = SlotAllocator(num_slots, page_size)
    return alloc, create_prefix_cache("radix", alloc, page_size)


def test_empty_cache_matches_nothing(check_accounting):
    alloc, cache = make()
    m = cache.match_prefix([1, 2, 3])
    assert m.length == 0 and m.node is None and m.slots.dtype == torch.int64
    check_accounting(alloc, cache)


def test_finished_request_is_matched_with_its_slots(check_accounting):
    alloc, cache = make()
    slots = alloc.alloc(6)
    cache.cache_finished([1, 2, 3, 4, 5, 6], slots, None)
    m = cache.match_prefix([1, 2, 3, 4, 5, 6, 7])
    assert m.slots.tolist() == slots.tolist()
    assert cache.cached_length(m.node) == 6
    assert cache.evictable_size() == 6
    check_accounting(alloc, cache)


def test_partial_match_splits_the_edge(check_accounting):
    alloc, cache = make()
    slots = alloc.alloc(6)
    cache.cache_finished([1, 2, 3, 4, 5, 6], slots, None)
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.length == 3 and m.slots.tolist() == slots[:3].tolist()
    assert cache.cached_length(m.node) == 3
    cache.lock(m.node)  # locks only the head of the split edge
    assert cache.protected_size() == 3 and cache.evictable_size() == 3
    assert cache.evict(100) == 3
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).length == 3
    cache.unlock(m.node)
    check_accounting(alloc, cache)
    # The whole sequence still matches through both halves of a split.
    alloc2, cache2 = make()
    s2 = alloc2.alloc(6)
    cache2.cache_finished([1, 2, 3, 4, 5, 6], s2, None)
    cache2.match_prefix([1, 2, 3, 9])
    assert cache2.match_prefix([1, 2, 3, 4, 5, 6]).slots.tolist() == s2.tolist()


def test_branches_share_their_prefix(check_accounting, run_request):
    alloc, cache = make()
    assert run_request(alloc, cache, [1, 2, 3, 4, 5]) == 0
    assert run_request(alloc, cache, [1, 2, 3, 7, 8]) == 3
    assert cache.evictable_size() == 7
    assert cache.match_prefix([1, 2, 3, 7, 8, 9]).length == 5
    assert cache.match_prefix([1, 2, 3, 4, 5, 9]).length == 5
    check_accounting(alloc, cache)


def test_duplicates_of_cached_tokens_are_freed():
    alloc, cache = make()
    a = alloc.alloc(4)
    b = alloc.alloc(4)  # a second request computed the same tokens concurrently
    cache.cache_finished([1, 2, 3, 4], a, None)
    cache.cache_finished([1, 2, 3, 4, 5][:4], b, None)
    assert cache.evictable_size() == 4
    assert alloc.available() == alloc.total - 4
    assert cache.match_prefix([1, 2, 3, 4]).slots.tolist() == a.tolist()


def test_lock_protects_from_eviction_and_unlock_releases(run_request):
    alloc, cache = make()
    run_request(alloc, cache, [1, 2, 3, 4])
    run_request(alloc, cache, [5, 6, 7])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.lock(m.node)
    cache.lock(m.node)
    assert cache.protected_size() == 4
    assert cache.evict(100) == 3
    assert cache.match_prefix([1, 2, 3, 4]).length == 4
    cache.unlock(m.node)
    assert cache.evict(100) == 0
    cache.unlock(m.node)
    assert cache.evict(100) == 4
    assert alloc.available() == alloc.total
    with pytest.raises(RuntimeError, match="not locked"):
        cache.unlock(m.node)


def test_eviction_is_least_recently_used_first(run_request):
    alloc, cache = make()
    for first in (10, 20, 30):
        run_request(alloc, cache, [first, 1, 2])
    cache.match_prefix([10, 1, 2])  # touches sequence 10, so 20 is now the oldest
    assert cache.evict(1) == 3
    assert cache.match_prefix([20, 1, 2]).length == 0
    assert cache.match_prefix([10, 1, 2]).length == 3
    # A lookup that ends inside an edge touches only the split-off head: the untouched tail [2]
    # of sequence 30 is now older than all of sequence 10.
    cache.match_prefix([30, 1])
    assert cache.evict(1) == 1
    assert cache.match_prefix([30, 1, 2]).length == 2
    assert cache.match_prefix([10, 1, 2]).length == 3


def test_leaves_are_evicted_before_their_parents(check_accounting, run_request):
    alloc, cache = make()
    run_request(alloc, cache, [1, 2, 3, 4])
    run_request(alloc, cache, [1, 2, 3, 4, 5, 6])  # child edge [5, 6]
    assert cache.evict(1) == 2
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).length == 4
    check_accounting(alloc, cache)


def test_cache_unfinished_hands_the_prefix_to_the_cache(check_accounting, run_request):
    alloc, cache = make()
    run_request(alloc, cache, [1, 2, 3])
    tokens = [1, 2, 3, 4, 5]
    m = cache.match_prefix(tokens)
    cache.lock(m.node)
    own = alloc.alloc(2)
    r = cache.cache_unfinished(tokens, torch.cat([m.slots, own]), m.node)
    assert r.slots.tolist() == m.slots.tolist() + own.tolist()
    assert cache.cached_length(r.node) == 5
    assert cache.protected_size() == 5 and cache.evictable_size() == 0
    check_accounting(alloc, cache)
    # The request goes on: two more tokens, then it finishes.
    more = alloc.alloc(2)
    tokens += [6, 7]
    cache.cache_finished(tokens, torch.cat([r.slots, more]), r.node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 7
    check_accounting(alloc, cache)


def test_pages_match_and_insert_whole_pages_only(check_accounting):
    alloc, cache = make(num_slots=64, page_size=4)
    tokens = list(range(10))
    slots = alloc.alloc(10)
    r = cache.cache_unfinished(tokens, slots, None)
    assert cache.cached_length(r.node) == 8  # the partial page stays the request's
    assert r.slots.tolist() == slots.tolist()
    check_accounting(alloc, cache, [r.slots[8:]])
    more = alloc.alloc(3, last_slot=int(r.slots[-1]))  # fills the request's page, then a fresh one
    assert (more[:2] - 1).div(4, rounding_mode="floor").tolist() == [(int(slots[-1]) - 1) // 4] * 2
    tokens += [10, 11, 12]
    cache.cache_finished(tokens, torch.cat([r.slots, more]), r.node)
    assert cache.evictable_size() == 12  # token 12's page is freed
    check_accounting(alloc, cache)
    assert cache.match_prefix(tokens).length == 12
    assert cache.match_prefix(list(range(6)) + [99, 99]).length == 4  # cut to whole pages
    assert cache.match_prefix([0, 1, 2]).length == 0
    m = cache.match_prefix(list(range(8)) + [7, 7, 7, 7])
    assert m.length == 8 and [(s - 1) % 4 for s in m.slots.tolist()] == [i % 4 for i in range(8)]


def test_pages_branch_inside_a_page(check_accounting, run_request):
    alloc, cache = make(num_slots=64, page_size=4)
    assert run_request(alloc, cache, list(range(8))) == 0
    assert run_request(alloc, cache, [0, 1, 2, 3, 4, 5, 9, 9]) == 4
    assert cache.evictable_size() == 12
    check_accounting(alloc, cache)
    cache.reset()
    assert alloc.available() == alloc.total


def test_reset_keeps_locked_paths(check_accounting, run_request):
    alloc, cache = make()
    run_request(alloc, cache, [1, 2, 3])
    run_request(alloc, cache, [1, 2, 9, 9])
    m = cache.match_prefix([1, 2, 3])
    cache.lock(m.node)
    cache.reset()
    assert cache.evictable_size() == 0 and cache.protected_size() == 3
    assert cache.match_prefix([1, 2, 9]).length == 2
    check_accounting(alloc, cache)


def test_accepts_tuples_and_tensors_and_rejects_bad_lengths(run_request):
    alloc, cache = make()
    run_request(alloc, cache, [1, 2, 3])
    assert cache.match_prefix((1, 2, 3)).length == 3
    assert cache.match_prefix(torch.tensor([1, 2, 5])).length == 2
    with pytest.raises(ValueError, match="differ in length"):
        cache.cache_finished([1, 2], alloc.alloc(3), None)


def test_long_edges_compare_correctly(run_request):
    alloc, cache = make(num_slots=1024)
    base = list(range(500))
    run_request(alloc, cache, base)
    for cut in (0, 1, 31, 32, 33, 64, 250, 499):
        query = base[:cut] + [-1] + base[cut + 1 :]
        assert cache.match_prefix(query).length == cut


def test_unknown_cache_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown prefix_cache"):
        create_prefix_cache("lru", SlotAllocator(8))
