"""Attention backends against the torch reference backend, on batches the batch builder makes.

Each case runs one sequence of forwards over a shared KV pool: a first prefill, a prefill chunk
over the cached prefix, two decode steps (the second padded as a CUDA-graph batch would be, and
on backends that capture graphs, planned through `plan_cuda_graph`) and a draft-tree verification
with a custom mask. Every backend stores the same K/V, so the outputs must agree; with `rope`, q and
k arrive unrotated and the backends rotate them (`forward_rope`, fused into their kernels on GPU).
FlashInfer's small decode batches run the Triton kernel; `flashinfer-own-decode` turns that off.
The Triton backend runs on CPU through the interpreter; the GPU cases need CUDA (and flashinfer).
"""

import pytest
import torch

from lmlang.runtime.attention.base import AttentionSpec, create_backend
from lmlang.runtime.batch_builder import BatchBuilder, SeqChunk
from lmlang.runtime.cache.allocator import SlotAllocator
from lmlang.runtime.cache.kv_pool import MHAKVPool
from lmlang.runtime.forward_batch import ForwardMode
from lmlang.runtime.layers.rotary import get_rope

CASES = [
    # backend, device, dtype, page size, Hq, Hk, head_dim
    pytest.param("triton", "cpu", torch.float32, 1, 4, 2, 16, id="triton-cpu"),
    pytest.param("triton", "cuda", torch.bfloat16, 16, 32, 8, 128, id="triton-gpu-page16", marks=pytest.mark.gpu),
    pytest.param("flashinfer", "cuda", torch.bfloat16, 1, 32, 8, 128, id="flashinfer-page1", marks=pytest.mark.gpu),
    pytest.param("flashinfer", "cuda", torch.bfloat16, 16, 32, 8, 128, id="flashinfer-page16", marks=pytest.mark.gpu),
    pytest.param("flashinfer", "cuda", torch.float16, 1, 4, 4, 64, id="flashinfer-mha-fp16", marks=pytest.mark.gpu),
    pytest.param("flashinfer-own-decode", "cuda", torch.bfloat16, 1, 32, 8, 128, id="flashinfer-own-decode",
                 marks=pytest.mark.gpu),
]


def _tree_mask(prefix_len: int, n: int) -> torch.Tensor:
    """[n, prefix_len + n]: draft node i (parent (i - 1) // 2) sees the prefix, its ancestors and itself."""
    mask = torch.zeros(n, prefix_len + n, dtype=torch.bool)
    mask[:, :prefix_len] = True
    for i in range(n):
        j = i
        while True:
            mask[i, prefix_len + j] = True
            if j == 0:
                break
            j = (j - 1) // 2
    return mask


@pytest.mark.parametrize("rope", [False, True], ids=["", "rope"])
@pytest.mark.parametrize("name,device,dtype,page,hq,hk,d", CASES)
def test_backend_matches_torch_reference(name, device, dtype, page, hq, hk, d, rope, monkeypatch):
    if name == "flashinfer-own-decode":
        import lmlang.runtime.attention.flashinfer_backend as fib

        monkeypatch.setattr(fib, "TRITON_DECODE_MAX_BATCH", 0)
        name = "flashinfer"
    rotary = get_rope(d, d, 4096, 10000.0, None).to(device) if rope else None
    g = torch.Generator().manual_seed(0)
    num_slots = 64 * page if page > 1 else 256
    pool = MHAKVPool(num_slots, 1, hk, d, dtype, device)
    spec = AttentionSpec(hq, hk, d, d, d**-0.5)
    ref = create_backend("torch")
    backend = create_backend(name, kv_pool=pool, device=torch.device(device), spec=spec, page_size=page)
    builder = BatchBuilder(torch.device(device), pool, backend)
    allocator = SlotAllocator(num_slots, page)
    targets = [[5, 12], [17, 18], [33, 60]]  # per sequence: prefill chunk end, then second chunk end
    slots = [allocator.alloc(t[-1] + 2) for t in targets]  # whole context, page aligned
    tokens = [list(range(t[-1] + 2)) for t in targets]
    if backend.supports_cuda_graph:
        backend.init_cuda_graph(8, 512)

    def run(mode, chunks, custom_mask=None, pad_to=0, graph=False):
        batch = builder.build(mode, chunks, custom_mask, pad_to=pad_to)
        n = batch.num_tokens
        q = torch.randn(n, hq, d, generator=g).to(device, dtype)
        kv = torch.randn(n, 2 * hk, d, generator=g).to(device, dtype)  # k and v as views of one tensor
        k, v = kv[:, :hk], kv[:, hk:]
        ref.plan(batch)
        backend.plan_cuda_graph(batch) if graph else backend.plan(batch)
        if rotary is None:
            expected = ref.forward(q, k, v, 0, d**-0.5, batch)
            got = backend.forward(q, k, v, 0, d**-0.5, batch)
        else:
            expected = ref.forward_rope(q, k, v, 0, d**-0.5, batch, rotary, batch.positions)
            got = backend.forward_rope(q, k, v, 0, d**-0.5, batch, rotary, batch.positions)
        tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
        rows = sum(c.seq_len - c.prefix_len for c in chunks)  # padding rows are not compared
        torch.testing.assert_close(got[:rows].float(), expected[:rows].float(), **tol)

    chunk = lambda i, lo, hi: SeqChunk(tokens[i], lo, hi, slots[i])  # noqa: E731
    run(ForwardMode.EXTEND, [chunk(i, 0, t[0]) for i, t in enumerate(targets)])
    run(ForwardMode.EXTEND, [chunk(i, t[0], t[1]) for i, t in enumerate(targets)])
    run(ForwardMode.DECODE, [chunk(i, t[1], t[1] + 1) for i, t in enumerate(targets)])
    last = [chunk(i, t[1] + 1, t[1] + 2) for i, t in enumerate(targets)]
    run(ForwardMode.DECODE, last, pad_to=8, graph=backend.supports_cuda_graph)
    # draft-tree verification: 6 draft tokens after each sequence's context, written to fresh slots
    tree_slots = [torch.cat([slots[i][: t[1] + 2], allocator.alloc(6)]) for i, t in enumerate(targets)]
    tree_chunks = [SeqChunk(list(range(t[1] + 8)), t[1] + 2, t[1] + 8, s) for t, s in zip(targets, tree_slots)]
    mask = torch.zeros(18, max(t[1] + 8 for t in targets), dtype=torch.bool)
    for i, t in enumerate(targets):
        mask[6 * i : 6 * i + 6, : t[1] + 8] = _tree_mask(t[1] + 2, 6)
    run(ForwardMode.EXTEND, tree_chunks, custom_mask=mask.to(device))


def test_batch_builder_layout_and_padding():
    pool = MHAKVPool(32, 1, 1, 8, torch.float32, "cpu")
    builder = BatchBuilder(torch.device("cpu"), pool, None)
    a = SeqChunk([7, 8, 9, 10], 1, 4, torch.tensor([5, 6, 7, 8]))
    b = SeqChunk([3, 4], 1, 2, torch.tensor([11, 12]))
    batch = builder.build(ForwardMode.EXTEND, [a, b], pad_to=4)
    assert batch.input_ids.tolist() == [8, 9, 10, 4, 0, 0]
    assert batch.positions.tolist() == [1, 2, 3, 1, 0, 0]
    assert batch.out_cache_loc.tolist() == [6, 7, 8, 12, 0, 0]
    assert batch.kv_indices.tolist() == [5, 6, 7, 8, 11, 12, 0, 0]
    assert batch.qo_indptr.tolist() == [0, 3, 4, 5, 6] and batch.kv_indptr.tolist() == [0, 4, 6, 7, 8]
    assert batch.seq_lens_cpu == [4, 2, 1, 1] and batch.prefix_lens_cpu == [1, 1, 0, 0]
    assert batch.seq_lens.dtype == torch.int32 and batch.kv_indices.dtype == torch.int64
