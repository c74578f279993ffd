"""SlotAllocator: slots 1..num_slots in whole pages, page continuation, and its error cases."""

import pytest
import torch

from lmlang.runtime.cache.allocator import SlotAllocator


def test_fresh_allocator_hands_out_ascending_slots_from_one():
    a = SlotAllocator(8)
    assert a.total == 8 and a.available() == 8
    assert a.alloc(3).tolist() == [1, 2, 3]
    assert a.available() == 5


def test_alloc_returns_none_and_takes_nothing_when_short():
    a = SlotAllocator(8)
    a.alloc(6)
    assert a.alloc(3) is None
    assert a.available() == 2
    assert a.alloc(0).numel() == 0


def test_free_and_reset_return_slots():
    a = SlotAllocator(8)
    s = a.alloc(8)
    a.free(s[2:5])
    assert a.available() == 3
    assert sorted(a.alloc(3).tolist()) == [3, 4, 5]
    a.reset()
    assert a.available() == 8


def test_pages_keep_token_offsets_and_continue_the_last_page():
    a = SlotAllocator(16, page_size=4)
    first = a.alloc(6)  # pages 0 and 1, two slots of page 1 reserved for this request
    assert first.tolist() == [1, 2, 3, 4, 5, 6]
    assert a.available() == 8
    more = a.alloc(3, last_slot=int(first[-1]))  # two from page 1, then a fresh page
    assert more.tolist() == [7, 8, 9]
    assert [(s - 1) % 4 for s in torch.cat([first, more]).tolist()] == [i % 4 for i in range(9)]
    assert a.available() == 4
    full_page = a.alloc(2, last_slot=8)  # page 1 is full: fresh page
    assert (full_page - 1).div(4, rounding_mode="floor").unique().numel() == 1
    assert a.alloc(1, last_slot=int(full_page[-1])).tolist() == [int(full_page[-1]) + 1]


def test_free_releases_whole_pages():
    a = SlotAllocator(16, page_size=4)
    s = a.alloc(5)
    a.free(s[4:])  # slot 5: the whole of page 1
    assert a.available() == 12
    a.free(s[:2])
    assert a.available() == 16


def test_double_free_and_bad_slots_raise():
    a = SlotAllocator(8)
    s = a.alloc(2)
    a.free(s)
    with pytest.raises(RuntimeError, match="twice"):
        a.free(s)
    with pytest.raises(ValueError, match="1..8"):
        a.free(torch.tensor([0]))
    with pytest.raises(ValueError, match="1..8"):
        a.free(torch.tensor([9]))


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="multiple of page_size"):
        SlotAllocator(10, page_size=4)
    with pytest.raises(ValueError, match="page_size"):
        SlotAllocator(8, page_size=0)
    with pytest.raises(ValueError, match="negative"):
        SlotAllocator(8).alloc(-1)
