"""The request-to-slot table: for each running request, the KV slots of its context in order.

One row per running request, `max_context_len` columns: row r, column p is the slot holding the
KV of position p of the request in row r. The model runner gathers a batch's rows into the CSR
`kv_indptr` / `kv_indices` of a `ForwardBatch` in one tensor operation.
"""

from __future__ import annotations

import torch


class ReqToSlotTable:
    """`table`: [max_requests, max_context_len] int64 on `device`; rows are handed out and returned.

    Invariant: a row is either free or held by exactly one request; only columns below the
    request's current length hold meaningful slots.
    """

    def __init__(self, max_requests: int, max_context_len: int, device: torch.device | str = "cpu") -> None:
        if max_requests < 1 or max_context_len < 1:
            raise ValueError(f"max_requests ({max_requests}) and max_context_len ({max_context_len}) must be >= 1")
        self.max_requests = max_requests
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.table = torch.zeros(max_requests, max_context_len, dtype=torch.int64, device=self.device)
        self._free_rows = list(range(max_requests - 1, -1, -1))

    def available(self) -> int:
        """Number of free rows."""
        return len(self._free_rows)

    def alloc(self) -> int | None:
        """A free row, or None when every row is taken."""
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        """Sets positions `start .. start + len(slots)` of `row` to `slots` ([n] int64)."""
        end = start + slots.shape[0]
        if end > self.max_context_len:
            raise ValueError(f"context of {end} tokens exceeds max_context_len ({self.max_context_len})")
        self.table[row, start:end] = slots.to(self.device, non_blocking=True)

    def read(self, row: int, length: int) -> torch.Tensor:
        """The first `length` slots of `row` ([length] int64, a view)."""
        return self.table[row, :length]

    def gather(self, rows: torch.Tensor, seq_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR of the batch's contexts: `kv_indptr` [batch + 1] int32 and `kv_indices`
        [sum(seq_lens)] int64, row `rows[i]` contributing its first `seq_lens[i]` slots."""
        rows = rows.to(self.device, torch.int64)  # [batch]
        seq_lens = seq_lens.to(self.device)  # [batch]
        kv_indptr = torch.zeros(rows.shape[0] + 1, dtype=torch.int32, device=self.device)
        kv_indptr[1:] = torch.cumsum(seq_lens, 0)
        width = int(seq_lens.max()) if rows.shape[0] else 0
        cols = torch.arange(width, device=self.device)  # [width]
        mask = cols[None, :] < seq_lens[:, None]  # [batch, width]
        kv_indices = self.table[rows, :width][mask]  # row-major, so each row's slots stay in order
        return kv_indptr, kv_indices
