"""Acceptance 4: random request lifecycles against a naive model of a prefix cache.

The model keeps every cached prefix (in units: a page for `radix`, a 16-token block for `block`)
with a lock count and a last-access time, and evicts the least recently used unlocked leaf unit,
one at a time. A real cache evicts whole nodes or blocks; each of those is a run of units with one
access time, so freeing the count the real cache reports from the model must leave both in the
same state. After every step: match lengths agree, the slots a match returns hold the KV of
exactly that prefix (a simulated pool records, per slot, the prefix it was computed for), the
sizes agree, and `available + evictable + protected + request-owned == total`.
"""

import random

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lmlang.runtime.cache.allocator import SlotAllocator
from lmlang.runtime.cache.base import create_prefix_cache

_rng = random.Random(0)
BASES = [[_rng.randrange(3) for _ in range(48)] for _ in range(2)]
TOTAL_SLOTS = 128
MAX_REQUESTS = 4

token_lists = st.builds(
    lambda base, cut, tail: BASES[base][:cut] + tail,
    st.integers(0, len(BASES) - 1),
    st.integers(0, 48) | st.sampled_from([16, 32, 48]),  # block boundaries share whole blocks
    st.lists(st.integers(0, 3), max_size=12),
)


class ReferenceCache:
    """Cached prefixes (tuples whose length is a multiple of `unit`) -> [lock count, last access]."""

    def __init__(self, unit: int | None) -> None:
        self.unit = unit  # None: caches nothing
        self.units: dict[tuple, list] = {}
        self.clock = 0

    def usable(self, n: int) -> int:
        return 0 if self.unit is None else n - n % self.unit

    def _prefixes(self, tokens: list, n: int):
        return (tuple(tokens[:k]) for k in range(self.unit, n + 1, self.unit)) if self.unit else ()

    def match(self, tokens: list) -> int:
        self.clock += 1
        length = 0
        for p in self._prefixes(tokens, self.usable(len(tokens))):
            if p not in self.units:
                break
            self.units[p][1] = self.clock
            length = len(p)
        return length

    def insert(self, tokens: list) -> None:
        self.clock += 1
        for p in self._prefixes(tokens, self.usable(len(tokens))):
            self.units.setdefault(p, [0, 0])[1] = self.clock

    def lock(self, tokens: list, n: int, delta: int) -> None:
        for p in self._prefixes(tokens, n):
            self.units[p][0] += delta

    def evict(self, num_tokens: int) -> list:
        """Removes `num_tokens` tokens, LRU leaf unit first; returns the removed prefixes."""
        victims = []
        freed = 0
        while freed < num_tokens:
            parents = {p[: -self.unit] for p in self.units}
            leaves = [p for p, (locks, _) in self.units.items() if locks == 0 and p not in parents]
            victim = min(leaves, key=lambda p: self.units[p][1])
            del self.units[victim]
            victims.append(victim)
            freed += self.unit
        return victims

    def sizes(self) -> tuple[int, int]:
        locked = sum(1 for locks, _ in self.units.values() if locks > 0)
        return (len(self.units) - locked) * (self.unit or 0), locked * (self.unit or 0)


class PrefixCacheMachine(RuleBasedStateMachine):
    kind = "radix"
    page_size = 1

    def __init__(self) -> None:
        super().__init__()
        self.alloc = SlotAllocator(TOTAL_SLOTS, self.page_size)
        self.cache = create_prefix_cache(self.kind, self.alloc, self.page_size)
        unit = {"radix": self.page_size, "block": 16, "none": None}[self.kind]
        self.ref = ReferenceCache(unit)
        self.kv = [None] * (TOTAL_SLOTS + 1)  # per slot: the token prefix its KV was computed for
        self.requests: list[dict] = []

    # ---- helpers --------------------------------------------------------------------------

    def check_slots(self, tokens: list, slots: torch.Tensor) -> None:
        for i, s in enumerate(slots.tolist()):
            assert self.kv[s] == tuple(tokens[: i + 1]), f"slot {s} holds KV of another prefix"

    def sync_evict(self, freed: int) -> None:
        """Removes what the real cache freed from the model, then looks the model's victims up
        in both (a lookup is the same operation on both, so they stay in step): had the real
        cache evicted other tokens, a victim would still match there."""
        for victim in self.ref.evict(freed):
            self.do_match(list(victim))

    def alloc_for(self, tokens: list, start: int, last_slot: int | None) -> torch.Tensor | None:
        need = len(tokens) - start
        own = self.alloc.alloc(need, last_slot=last_slot)
        if own is None:
            self.sync_evict(self.cache.evict(need))
            own = self.alloc.alloc(need, last_slot=last_slot)
        if own is not None:
            for i, s in enumerate(own.tolist()):
                self.kv[s] = tuple(tokens[: start + i + 1])
        return own

    def do_match(self, tokens: list):
        m = self.cache.match_prefix(tokens)
        assert m.length == self.ref.match(tokens)
        assert self.cache.cached_length(m.node) == m.length
        self.check_slots(tokens, m.slots)
        return m

    # ---- rules ----------------------------------------------------------------------------

    @rule(tokens=token_lists)
    def lookup(self, tokens):
        self.do_match(tokens)

    @precondition(lambda self: len(self.requests) < MAX_REQUESTS)
    @rule(tokens=token_lists)
    def start_request(self, tokens):
        m = self.do_match(tokens)
        self.cache.lock(m.node)
        self.ref.lock(tokens, m.length, +1)
        own = self.alloc_for(tokens, m.length, int(m.slots[-1]) if m.length else None)
        if own is None:  # no room even after eviction: the request waits (drops here)
            self.cache.unlock(m.node)
            self.ref.lock(tokens, m.length, -1)
            return
        self.requests.append({"tokens": tokens, "slots": torch.cat([m.slots, own]), "node": m.node, "cached": m.length})

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), extra=st.lists(st.integers(0, 3), min_size=1, max_size=20), checkpoint=st.booleans())
    def extend_request(self, data, extra, checkpoint):
        req = self.requests[data.draw(st.integers(0, len(self.requests) - 1))]
        tokens = req["tokens"] + extra
        own = self.alloc_for(tokens, len(req["tokens"]), int(req["slots"][-1]) if req["slots"].numel() else None)
        if own is None:
            return
        req["tokens"], req["slots"] = tokens, torch.cat([req["slots"], own])
        if checkpoint:  # a prefill chunk ended: the cache takes the whole pages so far
            r = self.cache.cache_unfinished(tokens, req["slots"], req["node"])
            self.ref.insert(tokens)
            cached = self.ref.usable(len(tokens))
            self.ref.lock(tokens, cached, +1)
            self.ref.lock(tokens, req["cached"], -1)
            assert r.length == len(tokens) and self.cache.cached_length(r.node) == cached
            self.check_slots(tokens, r.slots)
            req["slots"], req["node"], req["cached"] = r.slots, r.node, cached

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def finish_request(self, data):
        req = self.requests.pop(data.draw(st.integers(0, len(self.requests) - 1)))
        self.cache.cache_finished(req["tokens"], req["slots"], req["node"])
        self.ref.insert(req["tokens"])
        self.ref.lock(req["tokens"], req["cached"], -1)

    @rule(num_tokens=st.integers(0, 64))
    def evict(self, num_tokens):
        evictable = self.cache.evictable_size()
        freed = self.cache.evict(num_tokens)
        assert min(num_tokens, evictable) <= freed <= evictable
        self.sync_evict(freed)

    @rule()
    def reset(self):
        self.ref.evict(self.cache.evictable_size())
        self.cache.reset()
        assert self.cache.evictable_size() == 0

    # ---- invariants -----------------------------------------------------------------------

    @invariant()
    def accounting(self):
        ps = self.page_size
        pages = {(s - 1) // ps for r in self.requests for s in r["slots"][r["cached"] :].tolist()}
        owned = len(pages) * ps
        evictable, protected = self.cache.evictable_size(), self.cache.protected_size()
        assert (evictable, protected) == self.ref.sizes()
        assert self.alloc.available() + evictable + protected + owned == self.alloc.total


def _machine(kind: str, page_size: int):
    name = f"{kind.capitalize()}Page{page_size}Machine"
    cls = type(name, (PrefixCacheMachine,), {"kind": kind, "page_size": page_size})
    cls.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
    return cls.TestCase


TestRadixPage1 = _machine("radix", 1)
TestRadixPage4 = _machine("radix", 4)
TestBlockPage1 = _machine("block", 1)
TestBlockPage4 = _machine("block", 4)
TestNone = _machine("none", 1)
