"""The MLA backend's decode kernels (FlashInfer's MLA kernel by default on CUDA, the Triton
kernel otherwise) against the torch reference: eager, and replayed from a CUDA graph captured for
a padded batch with other contexts."""

from __future__ import annotations

import pytest
import torch

from lmlang.kernels.mla_decode import ref_mla_decode
from lmlang.runtime.attention.mla_backend import (
    TRITON_DECODE_MAX_BATCH,
    TRITON_DECODE_MAX_HEADS,
    MLAAttentionBackend,
    triton_decode_faster,
)
from lmlang.runtime.forward_batch import ForwardBatch, ForwardMode

RANK, ROPE = 512, 64  # DeepSeek's latent widths, the ones FlashInfer's MLA kernel is built for
SLOTS = 20_000
SCALE = 192**-0.5


def test_backend_rejects_unknown_or_unavailable_decode_kernels():
    with pytest.raises(ValueError, match="decode_kernel"):
        MLAAttentionBackend(device="cpu", decode_kernel="cutlass")
    with pytest.raises(ValueError, match="CUDA device"):
        MLAAttentionBackend(device="cpu", decode_kernel="flashinfer")
    assert MLAAttentionBackend(device="cpu").flashinfer is None  # auto on CPU: no FlashInfer


def test_triton_serves_only_tiny_batches_of_few_heads():
    assert triton_decode_faster(1, 16) and triton_decode_faster(TRITON_DECODE_MAX_BATCH, TRITON_DECODE_MAX_HEADS)
    assert not triton_decode_faster(TRITON_DECODE_MAX_BATCH + 1, 16)
    assert not triton_decode_faster(1, 128)  # V3's 128 heads: FlashInfer at every batch


def _decode_batch(lens: list[int], slots: torch.Tensor, backend: MLAAttentionBackend) -> ForwardBatch:
    """A decode batch whose sequence b attends over `slots[kv_indptr[b]:kv_indptr[b + 1]]` (a
    padding row is a one-token context in the dummy slot 0, as the batch builder pads)."""
    n, dev = len(lens), slots.device

    def ints(values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=dev)

    kv_indptr = ints([0, *torch.tensor(lens).cumsum(0).tolist()])
    return ForwardBatch(
        mode=ForwardMode.DECODE, input_ids=torch.zeros(n, dtype=torch.int64, device=dev),
        positions=ints([s - 1 for s in lens]).long(), out_cache_loc=slots[kv_indptr[1:].long() - 1],
        seq_lens=ints(lens), prefix_lens=ints([s - 1 for s in lens]), qo_indptr=ints(list(range(n + 1))),
        kv_indptr=kv_indptr, kv_indices=slots, seq_lens_cpu=list(lens), prefix_lens_cpu=[s - 1 for s in lens],
        kv_pool=None, attn_backend=backend,
    )


def _contexts(lens: list[int], pad_to: int, gen: torch.Generator) -> tuple[list[int], torch.Tensor]:
    """(lengths padded to `pad_to` with one-token contexts, scattered slots [sum] int64 on CUDA)."""
    slots = torch.randperm(SLOTS, generator=gen)[: sum(lens)] + 1
    pad = pad_to - len(lens)
    return lens + [1] * pad, torch.cat([slots, torch.zeros(pad, dtype=torch.int64)]).cuda()


def _queries(batch: int, heads: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randn(batch, heads, RANK + ROPE, generator=gen).cuda().bfloat16()
    return q[..., :RANK], q[..., RANK:]  # strided views, as the layer's projections give


@pytest.fixture(scope="module")
def kv_buffer() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(SLOTS + 1, 1, RANK + ROPE, generator=gen).cuda().bfloat16()  # row 0 = dummy slot


def _reference(q_latent, q_rope, kv_buffer, batch) -> torch.Tensor:
    return ref_mla_decode(q_latent, q_rope, kv_buffer, batch.kv_indptr, batch.kv_indices, SCALE).float()


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [16, 128])
def test_flashinfer_decode_matches_reference(kv_buffer, heads):
    backend = MLAAttentionBackend(device="cuda")
    assert backend.flashinfer is not None, "flashinfer should be the default MLA decode kernel on CUDA"
    gen = torch.Generator().manual_seed(heads)
    # batches above TRITON_DECODE_MAX_BATCH run FlashInfer; the second is planned up front (shape known)
    for lens in ([1, 700, 4096, 33, 2], [5, 64, 3, 9, 1]):
        seq_lens, slots = _contexts(lens, len(lens), gen)
        batch = _decode_batch(seq_lens, slots, backend)
        backend.plan(batch)
        q_latent, q_rope = _queries(len(lens), heads, gen)
        out = backend.decode(q_latent, q_rope, kv_buffer, SCALE, batch)
        assert backend.shape is not None and backend.shape.num_heads == heads  # FlashInfer was planned
        torch.testing.assert_close(out.float(), _reference(q_latent, q_rope, kv_buffer, batch), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_auto_runs_triton_for_tiny_batches_and_flashinfer_above(kv_buffer):
    backend = MLAAttentionBackend(device="cuda")
    gen = torch.Generator().manual_seed(3)
    for lens, via_flashinfer in (([4096], False), ([300, 1], False), ([70, 2000, 5, 1, 64], True), ([9], False)):
        seq_lens, slots = _contexts(lens, len(lens), gen)
        batch = _decode_batch(seq_lens, slots, backend)
        backend.plan(batch)
        q_latent, q_rope = _queries(len(lens), 16, gen)
        out = backend.decode(q_latent, q_rope, kv_buffer, SCALE, batch)
        assert backend._fi_planned == via_flashinfer
        torch.testing.assert_close(out.float(), _reference(q_latent, q_rope, kv_buffer, batch), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("decode_kernel", ["flashinfer", "triton"])
@pytest.mark.parametrize("heads", [16, 128])
def test_decode_replays_from_a_cuda_graph_with_a_padded_batch(kv_buffer, decode_kernel, heads):
    backend = MLAAttentionBackend(device="cuda", decode_kernel=decode_kernel)
    bucket, gen = 8, torch.Generator().manual_seed(7)
    backend.init_cuda_graph(max_batch_size=bucket, max_kv_indices=bucket * 4096)
    seq_lens, slots = _contexts([40, 3000, 1, 512, 9], bucket, gen)
    static = _decode_batch(seq_lens, slots, backend)
    q_latent, q_rope = _queries(bucket, heads, gen)
    backend.plan_cuda_graph(static)
    backend.decode(q_latent, q_rope, kv_buffer, SCALE, static)  # warm-up: compiles, and plans FlashInfer
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.decode(q_latent, q_rope, kv_buffer, SCALE, static)
    for lens in ([4096, 2, 77], [1, 1, 1, 1, 1, 1, 1, 300], [900] * 6):
        seq_lens, slots = _contexts(lens, bucket, gen)
        batch = _decode_batch(seq_lens, slots, backend)
        new_latent, new_rope = _queries(bucket, heads, gen)
        q_latent.copy_(new_latent)
        q_rope.copy_(new_rope)
        backend.plan_cuda_graph(batch)
        graph.replay()
        torch.testing.assert_close(out.float(), _reference(new_latent, new_rope, kv_buffer, batch),
                                   atol=2e-2, rtol=2e-2)
