"""The scheduler's control plane: KV accounting, statistics, cache flush and pins."""

from __future__ import annotations


class SchedulerControl:
    """Mixin of `Scheduler` for operations that are not generation (see `EngineCore.control`)."""

    def flush_cache(self) -> bool:
        """Drops the cached prefixes; refused (False) while requests are in flight."""
        if self.running or self.waiting or self.chunked or self.inflight is not None:
            return False
        self.cache.reset()
        return True

    def pin(self, input_ids: list) -> dict:
        """Locks the cached prefix of `input_ids` until `unpin(handle)`."""
        m = self.cache.match_prefix(input_ids)
        self.cache.lock(m.node)
        handle = self.next_pin
        self.next_pin += 1
        self.pins[handle] = m.node
        return {"handle": handle, "length": m.length}

    def unpin(self, handle: int) -> bool:
        node = self.pins.pop(handle, None)
        if node is None:
            return False
        self.cache.unlock(node)
        return True

    def reset_stats(self) -> bool:
        """Zeroes the counters (`stats()` then covers only what follows)."""
        for key in self.counters:
            self.counters[key] = 0
        self.start_order.clear()
        return True

    def kv_usage(self) -> dict:
        """KV slots by state; kv_in_use = protected (locked cache) + request-owned."""
        total = self.allocator.total
        free = self.allocator.available()
        cached = self.cache.evictable_size()
        return dict(kv_total=total, kv_free=free, kv_cached=cached, kv_in_use=total - free - cached,
                    kv_protected=self.cache.protected_size(), kv_request_owned=self._request_owned())

    def _request_owned(self) -> int:
        page = self.cfg.page_size
        owned = 0
        for r in self.reqs.values():
            own = r.num_computed - r.num_cached_owned
            owned += -(-own // page) * page if own > 0 else 0
        return owned

    def stats(self) -> dict:
        s = dict(self.counters)
        s.update(self.kv_usage())
        s.update(num_running=len(self.running) + (1 if self.chunked else 0), num_waiting=len(self.waiting),
                 new_token_ratio=self.new_token_ratio, start_order=list(self.start_order[-1000:]))
        return s
