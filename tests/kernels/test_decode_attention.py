"""GQA split-K decode attention against its torch reference (interpreted on CPU, compiled on GPU):
two launches, the merge in the same launch (counters), and the new token's rotary + store fused in."""

import pytest
import torch

from lmlang.kernels.decode_attention import (
    MAX_SPLITS,
    DecodeAttentionConfig,
    decode_attention,
    ref_decode_attention,
    ref_decode_attention_new_kv,
    small_batch_kv_splits,
)
from lmlang.kernels.kv_store import ref_store_kv
from lmlang.kernels.rotary import ref_apply_rotary

DOT = DecodeAttentionConfig(block_n=16, use_dot=True)
FMA = DecodeAttentionConfig(block_n=16, use_dot=False)


def _batch(device, dtype, seq_lens, hq, hk, d, dv, g):
    slots = sum(seq_lens) + 5
    k_buf = torch.randn(slots, hk, d, generator=g).to(device, dtype)
    v_buf = torch.randn(slots, hk, dv, generator=g).to(device, dtype)
    kv_indices = torch.randperm(slots, generator=g)[: sum(seq_lens)].to(device)
    kv_indptr = torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q = torch.randn(len(seq_lens), hq, d, generator=g).to(device, dtype)
    return q, k_buf, v_buf, kv_indptr, kv_indices


def _tol(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


CASES = [
    # device, dtype, context lengths, Hq, Hk, D, Dv, splits
    pytest.param("cpu", torch.float32, [1, 9, 100], 8, 2, 16, 16, 3, id="cpu-fp32-gqa4"),
    pytest.param("cpu", torch.bfloat16, [33, 2], 3, 3, 24, 8, 2, id="cpu-bf16-mha-odd-dims"),
    pytest.param("cuda", torch.bfloat16, [1, 1000, 4097, 130, 8192], 32, 8, 128, 128, 16, id="gpu-llama8b",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, [5, 300], 16, 1, 64, 64, 3, id="gpu-mqa-fp16", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("config", [DOT, FMA], ids=["dot", "fma"])
@pytest.mark.parametrize("device,dtype,seq_lens,hq,hk,d,dv,splits", CASES)
def test_two_launch_and_fused_merge_match_reference(device, dtype, seq_lens, hq, hk, d, dv, splits, config):
    g = torch.Generator().manual_seed(0)
    q, k_buf, v_buf, kv_indptr, kv_indices = _batch(device, dtype, seq_lens, hq, hk, d, dv, g)
    args = (q, k_buf, v_buf, kv_indptr, kv_indices, d**-0.5)
    ref = ref_decode_attention(*args)
    two_launch = decode_attention(*args, num_kv_splits=splits, config=config)
    counters = torch.zeros(len(seq_lens) * hk + 3, dtype=torch.int32, device=device)
    fused = decode_attention(*args, num_kv_splits=splits, counters=counters, config=config)
    assert fused.shape == (len(seq_lens), hq, dv)
    torch.testing.assert_close(two_launch, ref, **_tol(dtype))
    torch.testing.assert_close(fused, ref, **_tol(dtype))
    torch.testing.assert_close(fused, two_launch, atol=1e-6 if dtype == torch.float32 else 1e-2, rtol=1e-5)
    assert not counters.any()  # reset by the last split: reusable without a memset
    again = decode_attention(*args, num_kv_splits=splits, counters=counters, config=config)
    assert torch.equal(again, fused)  # same counters again, same (deterministic) result


def test_empty_context_gives_zeros_and_one_split_writes_directly():
    g = torch.Generator().manual_seed(1)
    q, k_buf, v_buf, kv_indptr, kv_indices = _batch("cpu", torch.float32, [0, 3, 1], 2, 1, 16, 16, g)
    args = (q, k_buf, v_buf, kv_indptr, kv_indices, 0.25)
    ref = ref_decode_attention(*args)
    counters = torch.zeros(3, dtype=torch.int32)
    for splits in (1, 8):  # 8: more splits than tokens
        out = decode_attention(*args, num_kv_splits=splits, counters=counters, config=FMA)
        assert torch.equal(out[0], torch.zeros(2, 16))
        torch.testing.assert_close(out, ref)
    assert not counters.any()


def _cos_sin_cache(max_pos: int, rotary_dim: int, device) -> torch.Tensor:
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    freqs = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)  # [max_pos, rotary_dim]


def _new_token_batch(device, dtype, seq_lens, hq, hk, d, rotary_dim, g):
    """A batch whose contexts end with the new token's slot (the engine's layout), with q, k_new and
    v_new as strided views of one fused qkv row per sequence."""
    q, k_buf, v_buf, kv_indptr, kv_indices = _batch(device, dtype, seq_lens, hq, hk, d, d, g)
    b = len(seq_lens)
    qkv = torch.randn(b, (hq + 2 * hk) * d, generator=g).to(device, dtype)
    q = qkv[:, : hq * d].view(b, hq, d)
    k_new = qkv[:, hq * d : (hq + hk) * d].view(b, hk, d)
    v_new = qkv[:, (hq + hk) * d :].view(b, hk, d)
    ends = kv_indptr[1:].long() - 1
    free = torch.tensor([s for s in range(k_buf.shape[0]) if s not in set(kv_indices.tolist())], device=device)
    loc = torch.where(torch.tensor(seq_lens, device=device) > 0, kv_indices[ends.clamp(min=0)], free[:b])
    positions = torch.tensor(seq_lens, device=device) + 3
    rope = (positions, _cos_sin_cache(max(seq_lens) + 8, rotary_dim, device), None)
    return q, k_buf, v_buf, kv_indptr, kv_indices, (k_new, v_new, loc), rope


NEW_KV_CASES = [
    # device, dtype, context lengths, Hq, Hk, D, rotary_dim (0: no rope), neox, splits
    pytest.param("cpu", torch.bfloat16, [1, 17, 40], 8, 2, 16, 16, True, 3, id="cpu-bf16-neox-gqa4"),
    pytest.param("cpu", torch.bfloat16, [5, 1, 23], 2, 2, 16, 8, False, 4, id="cpu-bf16-gptj-partial-mha"),
    pytest.param("cpu", torch.float32, [12, 2], 8, 2, 16, 8, True, 2, id="cpu-fp32-neox-partial"),
    pytest.param("cpu", torch.bfloat16, [9, 30], 4, 1, 16, 0, True, 1, id="cpu-bf16-no-rope-one-split"),
    pytest.param("cuda", torch.bfloat16, [1, 1024, 4097, 8192], 32, 8, 128, 128, True, 16, id="gpu-llama8b-neox",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, [3, 700, 2048], 32, 8, 128, 64, False, 8, id="gpu-gptj-partial",
                 marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("config", [DOT, FMA], ids=["dot", "fma"])
@pytest.mark.parametrize("device,dtype,seq_lens,hq,hk,d,rotary_dim,neox,splits", NEW_KV_CASES)
def test_fused_rope_and_new_token_match_rotary_store_attention(
    device, dtype, seq_lens, hq, hk, d, rotary_dim, neox, splits, config,
):
    g = torch.Generator().manual_seed(2)
    q, k_buf, v_buf, kv_indptr, kv_indices, new_kv, rope = _new_token_batch(
        device, dtype, seq_lens, hq, hk, d, max(rotary_dim, 2), g)
    rope = (rope[0], rope[1], neox) if rotary_dim else None
    k_ref, v_ref = k_buf.clone(), v_buf.clone()
    args = (kv_indptr, kv_indices, d**-0.5)
    ref = ref_decode_attention_new_kv(q, k_ref, v_ref, *args, new_kv=new_kv, rope=rope)
    k_buf[new_kv[2]] = 0  # the kernel must take the new token from new_kv, not from the pool
    counters = torch.zeros(len(seq_lens) * hk, dtype=torch.int32, device=device)
    out = decode_attention(q, k_buf, v_buf, *args, num_kv_splits=splits, counters=counters, new_kv=new_kv,
                           rope=rope, config=config)
    assert torch.equal(k_buf, k_ref) and torch.equal(v_buf, v_ref)  # bitwise: rotary + store, exactly
    torch.testing.assert_close(out, ref, **_tol(dtype))
    assert not counters.any()
    two_launch = decode_attention(q, k_buf, v_buf, *args, num_kv_splits=splits, new_kv=new_kv, rope=rope,
                                  config=config)
    torch.testing.assert_close(two_launch, out, atol=1e-2, rtol=1e-5)


def test_new_token_of_an_empty_context_is_stored_but_not_attended():
    g = torch.Generator().manual_seed(3)
    q, k_buf, v_buf, kv_indptr, kv_indices, new_kv, rope = _new_token_batch(
        "cpu", torch.float32, [0, 4], 4, 2, 16, 16, g)
    rope = (rope[0], rope[1], True)
    k_ref, v_ref = k_buf.clone(), v_buf.clone()
    rot_q, rot_k = ref_apply_rotary(q, new_kv[0], rope[0], rope[1], is_neox=True)
    ref_store_kv(k_ref, v_ref, new_kv[2], rot_k, new_kv[1])
    out = decode_attention(q, k_buf, v_buf, kv_indptr, kv_indices, 0.25, num_kv_splits=4,
                           counters=torch.zeros(4, dtype=torch.int32), new_kv=new_kv, rope=rope, config=FMA)
    assert torch.equal(k_buf, k_ref) and torch.equal(v_buf, v_ref)
    assert torch.equal(out[0], torch.zeros(4, 16))
    torch.testing.assert_close(out[1:], ref_decode_attention(rot_q, k_ref, v_ref, kv_indptr, kv_indices, 0.25)[1:])


def test_small_batch_kv_splits_fills_the_device_from_constants():
    assert [small_batch_kv_splits(b, 8, 8192, 132) for b in (1, 2, 3, 4, 8, 16, 64)] == [16, 8, 5, 4, 2, 1, 1]
    assert small_batch_kv_splits(1, 8, 8192, 132, programs_per_sm=2) == 33
    assert small_batch_kv_splits(1, 1, 1 << 20, 132, programs_per_sm=4) == MAX_SPLITS
    assert small_batch_kv_splits(1, 8, 100, 132) == 4  # at least 32 tokens a split
    with pytest.raises(ValueError, match=">= 1"):
        small_batch_kv_splits(0, 8, 8192, 132)


def test_decode_attention_rejects_bad_arguments():
    q = torch.zeros(2, 3, 8)
    buf = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError, match="multiple"):
        decode_attention(q, buf, buf, torch.tensor([0, 1, 2]), torch.tensor([1, 2]), 1.0)
    with pytest.raises(ValueError, match="kv_indptr"):
        decode_attention(torch.zeros(2, 2, 8), buf, buf, torch.tensor([0, 1]), torch.tensor([1]), 1.0)
    q, indptr, indices = torch.zeros(2, 4, 8), torch.tensor([0, 1, 2]), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="counters"):
        decode_attention(q, buf, buf, indptr, indices, 1.0, counters=torch.zeros(3, dtype=torch.int32))
    positions = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="needs new_kv"):
        decode_attention(q, buf, buf, indptr, indices, 1.0, rope=(positions, torch.zeros(4, 8), True))
    loc = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="k_new"):
        decode_attention(q, buf, buf, indptr, indices, 1.0, new_kv=(torch.zeros(2, 2, 4), torch.zeros(2, 2, 8), loc))
    with pytest.raises(ValueError, match="rotary_dim"):
        decode_attention(q, buf, buf, indptr, indices, 1.0, new_kv=(torch.zeros(2, 2, 8), torch.zeros(2, 2, 8), loc),
                         rope=(positions, torch.zeros(4, 10), True))
    with pytest.raises(ValueError, match="block_n"):
        DecodeAttentionConfig(block_n=24)


@pytest.mark.gpu
def test_one_launch_kernel_replays_in_a_cuda_graph_with_new_lengths_and_is_deterministic():
    """Captured once (Llama shape, B=3), replayed over other context lengths: the same result as the
    reference each time, bitwise repeatable across replays, counters back to zero."""
    g = torch.Generator().manual_seed(4)
    hq, hk, d, b, slots = 32, 8, 128, 3, 20000
    k_buf = torch.randn(slots, hk, d, generator=g).to("cuda", torch.bfloat16)
    v_buf = torch.randn(slots, hk, d, generator=g).to("cuda", torch.bfloat16)
    qkv = torch.randn(b, (hq + 2 * hk) * d, generator=g).to("cuda", torch.bfloat16)
    q = qkv[:, : hq * d].view(b, hq, d)
    k_new = qkv[:, hq * d : (hq + hk) * d].view(b, hk, d)
    v_new = qkv[:, (hq + hk) * d :].view(b, hk, d)
    indptr = torch.zeros(b + 1, dtype=torch.int32, device="cuda")
    indices = torch.zeros(3 * 4096, dtype=torch.int64, device="cuda")
    loc = torch.zeros(b, dtype=torch.int64, device="cuda")
    positions = torch.zeros(b, dtype=torch.int64, device="cuda")
    cos_sin = _cos_sin_cache(8192, d, "cuda")
    counters = torch.zeros(b * hk, dtype=torch.int32, device="cuda")

    def fill(lens):
        perm = torch.randperm(slots - 1, generator=g)[: sum(lens)] + 1
        indptr.copy_(torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32))
        indices[: sum(lens)].copy_(perm)
        loc.copy_(indices[indptr[1:].long() - 1])
        positions.copy_(torch.tensor(lens) - 1)

    def step():
        return decode_attention(q, k_buf, v_buf, indptr, indices, d**-0.5, 16, counters=counters,
                                new_kv=(k_new, v_new, loc), rope=(positions, cos_sin, True))

    fill([5, 700, 4000])
    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for lens in ([1, 64, 4096], [3000, 2, 999]):
        fill(lens)
        n = sum(lens)
        k_ref, v_ref = k_buf.clone(), v_buf.clone()
        ref = ref_decode_attention_new_kv(q, k_ref, v_ref, indptr, indices[:n], d**-0.5, (k_new, v_new, loc),
                                          (positions, cos_sin, True))
        graph.replay()
        first = out.clone()
        for _ in range(5):
            graph.replay()
            assert torch.equal(out, first)
        torch.testing.assert_close(first, ref, atol=2e-2, rtol=2e-2)
        assert torch.equal(k_buf, k_ref) and torch.equal(v_buf, v_ref)
        assert not counters.any()
