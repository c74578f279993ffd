"""GQA split-K decode attention against its torch reference (interpreted on CPU, compiled on GPU)."""

import pytest
import torch

from lmlang.kernels.decode_attention import decode_attention, ref_decode_attention


def _batch(device, dtype, seq_lens, hq, hk, d, dv, g):
    slots = sum(seq_lens) + 5
    k_buf = torch.randn(slots, hk, d, generator=g).to(device, dtype)
    v_buf = torch.randn(slots, hk, dv, generator=g).to(device, dtype)
    kv_indices = torch.randperm(slots, generator=g)[: sum(seq_lens)].to(device)
    kv_indptr = torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q = torch.randn(len(seq_lens), hq, d, generator=g).to(device, dtype)
    return q, k_buf, v_buf, kv_indptr, kv_indices


CASES = [
    # device, dtype, context lengths, Hq, Hk, D, Dv, splits
    pytest.param("cpu", torch.float32, [1, 9, 70], 4, 2, 16, 16, 4, id="cpu-fp32-gqa"),
    pytest.param("cpu", torch.bfloat16, [33, 2], 3, 3, 24, 8, 2, id="cpu-bf16-mha-odd-dims"),
    pytest.param("cuda", torch.bfloat16, [1, 1000, 4097, 130, 8192], 32, 8, 128, 128, 16, id="gpu-llama8b",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, [5, 300], 16, 1, 64, 64, 3, id="gpu-mqa-fp16", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,seq_lens,hq,hk,d,dv,splits", CASES)
def test_decode_attention_matches_reference(device, dtype, seq_lens, hq, hk, d, dv, splits):
    g = torch.Generator().manual_seed(0)
    q, k_buf, v_buf, kv_indptr, kv_indices = _batch(device, dtype, seq_lens, hq, hk, d, dv, g)
    out = decode_attention(q, k_buf, v_buf, kv_indptr, kv_indices, d**-0.5, num_kv_splits=splits)
    ref = ref_decode_attention(q, k_buf, v_buf, kv_indptr, kv_indices, d**-0.5)
    assert out.shape == (len(seq_lens), hq, dv)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, ref, **tol)


def test_empty_context_gives_zeros_and_more_splits_than_tokens_is_exact():
    g = torch.Generator().manual_seed(1)
    q, k_buf, v_buf, kv_indptr, kv_indices = _batch("cpu", torch.float32, [0, 3], 2, 1, 16, 16, g)
    out = decode_attention(q, k_buf, v_buf, kv_indptr, kv_indices, 0.25, num_kv_splits=8)
    assert torch.equal(out[0], torch.zeros(2, 16))
    torch.testing.assert_close(out, ref_decode_attention(q, k_buf, v_buf, kv_indptr, kv_indices, 0.25))


def test_decode_attention_rejects_bad_shapes():
    q = torch.zeros(2, 3, 8)
    buf = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError, match="multiple"):
        decode_attention(q, buf, buf, torch.tensor([0, 1, 2]), torch.tensor([1, 2]), 1.0)
    with pytest.raises(ValueError, match="kv_indptr"):
        decode_attention(torch.zeros(2, 2, 8), buf, buf, torch.tensor([0, 1]), torch.tensor([1]), 1.0)
