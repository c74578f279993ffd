"""Orders the waiting queue: priority first (larger = more urgent), then the policy.

- `fcfs`: arrival order.
- `lpm`: longest cached prefix first (most reuse, least compute first).
- `dfs-weight`: requests that share prefixes are grouped and the groups with more requests go
  first, visiting a trie of the waiting prompts depth-first by subtree weight (SGLang's idea),
  so siblings are prefilled back to back while their shared prefix is hot in the cache.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

from lmlang.runtime.request import Req

# Prefix depth (tokens) the dfs-weight trie looks at: enough to separate typical shared prompts.
DFS_DEPTH = 512
# Above this many waiting requests, lpm's per-request prefix matches cost more than they save.
LPM_MAX_QUEUE = 256


class SchedulePolicy(ABC):
    """Invariant: `order` returns a permutation of `waiting`, higher priority before lower."""

    @abstractmethod
    def order(self, waiting: Sequence[Req], match_len: Callable[[Req], int]) -> list: ...


class FCFSPolicy(SchedulePolicy):
    def order(self, waiting, match_len):
        return sorted(waiting, key=lambda r: (-r.priority, r.arrival))


class LongestPrefixMatchPolicy(SchedulePolicy):
    def order(self, waiting, match_len):
        if len(waiting) > LPM_MAX_QUEUE:
            return FCFSPolicy().order(waiting, match_len)
        return sorted(waiting, key=lambda r: (-r.priority, -match_len(r), r.arrival))


class DFSWeightPolicy(SchedulePolicy):
    def order(self, waiting, match_len):
        out: list = []
        by_priority: dict = {}
        for r in waiting:
            by_priority.setdefault(r.priority, []).append(r)
        for prio in sorted(by_priority, reverse=True):
            out.extend(self._dfs(sorted(by_priority[prio], key=lambda r: r.arrival), 0))
        return out

    def _dfs(self, reqs: list, depth: int) -> list:
        if len(reqs) <= 1 or depth >= DFS_DEPTH:
            return reqs
        groups: dict = {}
        ended = []
        for r in reqs:
            ids = r.fill_ids
            if depth < len(ids):
                groups.setdefault(ids[depth], []).append(r)
            else:
                ended.append(r)
        if len(groups) == 1 and not ended:
            return self._dfs(reqs, depth + 1)
        ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0].arrival))
        return ended + [r for g in ordered for r in self._dfs(g, depth + 1)]


POLICIES = {"fcfs": FCFSPolicy, "lpm": LongestPrefixMatchPolicy, "dfs-weight": DFSWeightPolicy}


def create_policy(name: str) -> SchedulePolicy:
    return POLICIES[name]()
