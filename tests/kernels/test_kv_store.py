"""KV-pool store kernel against its torch reference: MHA/GQA buffers and the MLA latent buffer."""

import pytest
import torch

from lmlang.kernels.kv_store import ref_store_kv, ref_store_mla_kv, store_kv, store_mla_kv

MHA_CASES = [
    # device, buffer dtype, source dtype, slots, tokens, kv heads, head_dim, v_head_dim
    pytest.param("cpu", torch.float32, torch.float32, 20, 6, 2, 8, 8, id="cpu"),
    pytest.param("cpu", torch.float32, torch.bfloat16, 20, 3, 1, 16, 12, id="cpu-cast-vdim"),
    pytest.param("cuda", torch.bfloat16, torch.bfloat16, 100_000, 4096, 8, 128, 128, id="gpu-llama8b",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float8_e4m3fn, torch.bfloat16, 50_000, 513, 8, 128, 128, id="gpu-fp8-pool",
                 marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,buf_dtype,src_dtype,slots,tokens,heads,head_dim,v_head_dim", MHA_CASES)
def test_store_kv_matches_reference(device, buf_dtype, src_dtype, slots, tokens, heads, head_dim, v_head_dim):
    g = torch.Generator().manual_seed(0)
    loc = torch.randperm(slots, generator=g)[:tokens].to(device)
    qkv = torch.randn(tokens, heads * (head_dim * 2 + v_head_dim), generator=g).to(device, src_dtype)
    k = qkv[:, heads * head_dim : 2 * heads * head_dim].view(tokens, heads, head_dim)  # strided view
    v = qkv[:, 2 * heads * head_dim :].view(tokens, heads, v_head_dim)
    k_buf = torch.zeros(slots, heads, head_dim, dtype=buf_dtype, device=device)
    v_buf = torch.zeros(slots, heads, v_head_dim, dtype=buf_dtype, device=device)
    k_ref, v_ref = k_buf.clone(), v_buf.clone()
    store_kv(k_buf, v_buf, loc, k, v)
    ref_store_kv(k_ref, v_ref, loc, k, v)
    assert torch.equal(k_buf.view(torch.uint8), k_ref.view(torch.uint8))
    assert torch.equal(v_buf.view(torch.uint8), v_ref.view(torch.uint8))


MLA_CASES = [
    pytest.param("cpu", 16, 5, 32, 8, id="cpu"),
    pytest.param("cuda", 100_000, 2048, 512, 64, id="gpu-deepseek", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,slots,tokens,rank,rope_dim", MLA_CASES)
def test_store_mla_kv_matches_reference(device, slots, tokens, rank, rope_dim):
    g = torch.Generator().manual_seed(1)
    loc = torch.randperm(slots, generator=g)[:tokens].to(device, torch.int32)
    # the latent and rope key come out of one projection: [T, rank + rope_dim] split in two
    proj = torch.randn(tokens, rank + rope_dim, generator=g).to(device, torch.bfloat16)
    latent, rope = proj[:, :rank], proj[:, rank:]
    buf = torch.zeros(slots, 1, rank + rope_dim, dtype=torch.bfloat16, device=device)
    ref = buf.clone()
    store_mla_kv(buf, loc, latent, rope.unsqueeze(1))
    ref_store_mla_kv(ref, loc, latent, rope.unsqueeze(1))
    assert torch.equal(buf, ref)


def test_store_kv_rejects_mismatched_rows():
    buf = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError, match="do not fit"):
        store_kv(buf, buf.clone(), torch.tensor([1]), torch.zeros(1, 2, 4), torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="loc"):
        store_kv(buf, buf.clone(), torch.tensor([1.0]), torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="buffer width"):
        store_mla_kv(torch.zeros(4, 1, 10), torch.tensor([1]), torch.zeros(1, 8), torch.zeros(1, 4))
