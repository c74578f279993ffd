"""ReqToSlotTable: rows of per-request slots, gathered into a batch's KV CSR."""

import pytest
import torch

from lmlang.runtime.cache.req_to_slot import ReqToSlotTable


def test_rows_write_read_and_gather():
    t = ReqToSlotTable(max_requests=2, max_context_len=8)
    r0, r1 = t.alloc(), t.alloc()
    assert t.alloc() is None and t.available() == 0
    t.write(r0, 0, torch.tensor([5, 6, 7]))
    t.write(r1, 0, torch.tensor([1, 2]))
    t.write(r1, 2, torch.tensor([9]))
    assert t.read(r1, 3).tolist() == [1, 2, 9]
    indptr, indices = t.gather(torch.tensor([r1, r0]), torch.tensor([3, 2], dtype=torch.int32))
    assert indptr.tolist() == [0, 3, 5] and indptr.dtype == torch.int32
    assert indices.tolist() == [1, 2, 9, 5, 6] and indices.dtype == torch.int64
    t.free(r0)
    assert t.alloc() == r0


def test_context_longer_than_the_table_is_an_error():
    t = ReqToSlotTable(max_requests=1, max_context_len=4)
    with pytest.raises(ValueError, match="max_context_len"):
        t.write(0, 2, torch.tensor([1, 2, 3]))
