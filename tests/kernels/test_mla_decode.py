"""MLA decode (split-K over a latent cache) against its torch reference."""

import pytest
import torch

from lmlang.kernels.mla_decode import mla_decode, ref_mla_decode

CASES = [
    # device, dtype, context lengths, heads, kv_lora_rank, rope_dim, splits
    pytest.param("cpu", torch.float32, [5, 40, 1], 3, 32, 16, 2, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, [70, 0, 9], 20, 64, 16, 3, id="cpu-bf16-empty-context"),
    pytest.param("cuda", torch.bfloat16, [1, 517, 4096, 33], 128, 512, 64, 8, id="gpu-deepseek-v3",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, [8192] * 32, 16, 512, 64, 4, id="gpu-tp8-batch32", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,lens,heads,rank,rope,splits", CASES)
def test_mla_decode_matches_reference(device, dtype, lens, heads, rank, rope, splits):
    g = torch.Generator().manual_seed(0)
    b, total = len(lens), sum(lens)
    slots = total + 16
    kv_cache = torch.randn(slots, 1, rank + rope, generator=g).to(device, dtype)
    kv_indices = torch.randperm(slots, generator=g)[:total].to(device)  # scattered pages
    kv_indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q_nope = torch.randn(b, heads, rank, generator=g).to(device, dtype)
    q_pe = torch.randn(b, heads, rope, generator=g).to(device, dtype)
    scale = (rank + rope) ** -0.5
    out = mla_decode(q_nope, q_pe, kv_cache, kv_indptr, kv_indices, scale, num_kv_splits=splits)
    ref = ref_mla_decode(q_nope, q_pe, kv_cache, kv_indptr, kv_indices, scale)
    assert out.shape == (b, heads, rank)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, ref, **tol)


def test_mla_decode_rejects_mismatched_cache_width():
    q = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="kv_cache"):
        mla_decode(q, torch.zeros(1, 2, 4), torch.zeros(3, 1, 10), torch.tensor([0, 1]), torch.tensor([0]), 1.0)
