"""Shared checks for the prefix-cache tests: the accounting invariant and a request's lifecycle."""

import pytest
import torch


def _check_accounting(alloc, cache, owned_slots=()) -> None:
    """Asserts `base.py`'s invariant; `owned_slots` are the slot tensors requests still own."""
    pages = {(s - 1) // alloc.page_size for t in owned_slots for s in t.tolist()}
    owned = len(pages) * alloc.page_size
    assert alloc.available() + cache.evictable_size() + cache.protected_size() + owned == alloc.total


def _run_request(alloc, cache, tokens) -> int:
    """The engine's lifecycle for a request that finishes at once; returns the tokens it matched."""
    m = cache.match_prefix(tokens)
    cache.lock(m.node)
    last = int(m.slots[-1]) if m.length else None
    own = alloc.alloc(len(tokens) - m.length, last_slot=last)
    cache.cache_finished(tokens, torch.cat([m.slots, own]), m.node)
    return m.length


@pytest.fixture(scope="session")
def check_accounting():
    """`check_accounting(alloc, cache, owned_slots=())` asserts the KV accounting invariant."""
    return _check_accounting


@pytest.fixture(scope="session")
def run_request():
    """`run_request(alloc, cache, tokens)` matches, locks, allocates and finishes one request."""
    return _run_request
