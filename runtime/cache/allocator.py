"""Hands out KV slot indices (rows of the `KVPool` buffers) in whole pages.

Slots are 1..num_slots; slot 0 is the pool's dummy row and never handed out. Page p holds slots
`p * page_size + 1 .. (p + 1) * page_size`, so slot s is in page `(s - 1) // page_size`. A request
that starts on a fresh page has its token i at offset `i % page_size` of its pages, which is what
paged attention kernels and whole-page prefix caching need.

Ownership is by page: `alloc` gives the caller whole pages (the unused tail of its last page stays
reserved for it and is continued by its next `alloc` through `last_slot`), and `free` returns the
pages the given slots lie in. With `page_size == 1` a page is a slot and none of this shows.
"""

from __future__ import annotations

import torch


class SlotAllocator:
    """Free list of pages over slots 1..num_slots.

    Invariant: every page is either on the free list or owned by exactly one owner (a request or
    the prefix cache); `available()` is the number of slots in free pages. The free list is a
    preallocated stack of page ids, so `alloc` and `free` cost O(pages touched) tensor work and
    no per-slot Python.
    """

    def __init__(self, num_slots: int, page_size: int = 1) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        if num_slots < page_size or num_slots % page_size != 0:
            raise ValueError(f"num_slots ({num_slots}) must be a positive multiple of page_size ({page_size})")
        self.page_size = page_size
        self.total = num_slots
        self.num_pages = num_slots // page_size
        self._stack = torch.empty(self.num_pages, dtype=torch.int64)  # free page ids live in [:_top]
        self._page_free = torch.empty(self.num_pages, dtype=torch.bool)  # catches double frees
        self._page_offsets = torch.arange(1, page_size + 1, dtype=torch.int64)  # [page_size]
        self.reset()

    def available(self) -> int:
        """Number of free slots (free pages times `page_size`)."""
        return self._top * self.page_size

    def alloc(self, n: int, last_slot: int | None = None) -> torch.Tensor | None:
        """Returns `n` slots ([n] int64, CPU), or None (allocating nothing) if there is no room.

        `last_slot` is the requesting request's last slot so far: with `page_size > 1` the free
        tail of its page is used first, then fresh pages, each filled from its first slot. The
        caller must own the page of `last_slot` (the prefix cache only holds full pages, so a
        request's last slot is either in its own page or ends a full page).
        """
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of slots ({n})")
        ps = self.page_size
        room = 0
        if last_slot is not None and ps > 1:
            room = min(n, ps - 1 - (last_slot - 1) % ps)
        num_new_pages = -(-(n - room) // ps)
        if num_new_pages > self._top:
            return None
        parts = []
        if room:
            parts.append(torch.arange(last_slot + 1, last_slot + 1 + room, dtype=torch.int64))
        if num_new_pages:
            # Pop from the top of the stack; flip so a fresh allocator hands out ascending slots.
            pages = self._stack[self._top - num_new_pages : self._top].flip(0)
            self._top -= num_new_pages
            self._page_free[pages] = False
            if ps == 1:
                parts.append(pages + 1)
            else:
                slots = (pages[:, None] * ps + self._page_offsets).reshape(-1)  # [num_new_pages * ps]
                parts.append(slots[: n - room])
        if not parts:
            return torch.empty(0, dtype=torch.int64)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def free(self, slots: torch.Tensor) -> None:
        """Returns to the free list every page that one of `slots` lies in.

        The caller must own those pages wholly and pass distinct slots (with `page_size == 1`);
        freeing a page that is already free raises.
        """
        if slots.numel() == 0:
            return
        slots = slots.reshape(-1).to(device="cpu", dtype=torch.int64)
        if self.page_size == 1:
            pages = slots - 1
        else:
            pages = torch.unique((slots - 1) // self.page_size)
        lo, hi = torch.aminmax(pages)
        if int(lo) < 0 or int(hi) >= self.num_pages:
            raise ValueError(f"SlotAllocator.free: slots must lie in 1..{self.total}")
        if bool(self._page_free[pages].any()) or pages.numel() > self.num_pages - self._top:
            raise RuntimeError("SlotAllocator.free: a page freed twice")
        self._page_free[pages] = True
        self._stack[self._top : self._top + pages.numel()] = pages
        self._top += pages.numel()

    def reset(self) -> None:
        """Marks every page free (the caller drops all references to slots first)."""
        self._stack.copy_(torch.arange(self.num_pages - 1, -1, -1, dtype=torch.int64))
        self._page_free.fill_(True)
        self._top = self.num_pages
