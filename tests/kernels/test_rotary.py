"""Rotary embedding kernel against its torch reference: neox and GPT-J pairing, partial rotary;
rotary fused with the KV-pool store against rotating and then storing."""

import pytest
import torch

from lmlang.kernels.kv_store import ref_store_kv, ref_store_mla_kv
from lmlang.kernels.rmsnorm import ref_rmsnorm
from lmlang.kernels.rotary import apply_rotary, ref_apply_rotary, rotary_and_store_kv, rotary_and_store_mla_kv


def _cache(max_pos: int, rotary_dim: int, base: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    freqs = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)  # [max_pos, rotary_dim]


CASES = [
    # device, dtype, tokens, q heads, k heads, head_dim, rotary_dim, neox
    pytest.param("cpu", torch.float32, 5, 4, 2, 16, 16, True, id="cpu-neox"),
    pytest.param("cpu", torch.float32, 3, 3, 1, 24, 8, True, id="cpu-neox-partial"),
    pytest.param("cpu", torch.float32, 4, 2, 1, 12, 12, False, id="cpu-gptj"),
    pytest.param("cpu", torch.float32, 2, 10, 2, 8, 8, True, id="cpu-neox-two-head-blocks"),
    pytest.param("cpu", torch.bfloat16, 3, 2, 2, 16, 8, False, id="cpu-gptj-partial-bf16"),
    pytest.param("cuda", torch.bfloat16, 300, 32, 8, 128, 128, True, id="gpu-llama8b", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 77, 128, 1, 64, 64, False, id="gpu-deepseek-rope", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 64, 16, 16, 128, 32, True, id="gpu-partial", marks=pytest.mark.gpu),
]


def _tol(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)


@pytest.mark.parametrize("device,dtype,tokens,hq,hk,head_dim,rotary_dim,neox", CASES)
def test_apply_rotary_matches_reference(device, dtype, tokens, hq, hk, head_dim, rotary_dim, neox):
    g = torch.Generator().manual_seed(0)
    cache = _cache(4096, rotary_dim).to(device)
    # q and k as strided views of one fused projection, the layout the model produces
    qkv = torch.randn(tokens, (hq + 2 * hk) * head_dim, generator=g).to(device, dtype)
    q = qkv[:, : hq * head_dim].view(tokens, hq, head_dim)
    k = qkv[:, hq * head_dim : (hq + hk) * head_dim].view(tokens, hk, head_dim)
    positions = torch.randint(0, 4096, (tokens,), generator=g).to(device)
    ref_q, ref_k = ref_apply_rotary(q, k, positions, cache, is_neox=neox)

    out_q, out_k = apply_rotary(q, k, positions, cache, is_neox=neox)
    torch.testing.assert_close(out_q, ref_q, **_tol(dtype))
    torch.testing.assert_close(out_k, ref_k, **_tol(dtype))

    apply_rotary(q, k, positions, cache, is_neox=neox, inplace=True)
    torch.testing.assert_close(q, ref_q, **_tol(dtype))
    torch.testing.assert_close(k, ref_k, **_tol(dtype))


def test_position_zero_is_identity_and_rotation_preserves_norm():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 2, 8, generator=g), torch.randn(2, 1, 8, generator=g)
    out_q, out_k = apply_rotary(q, k, torch.tensor([0, 7]), _cache(16, 8), is_neox=False)
    torch.testing.assert_close(out_q[0], q[0])
    torch.testing.assert_close(out_k.norm(dim=-1), k.norm(dim=-1))


def test_apply_rotary_rejects_bad_rotary_dim():
    q = torch.randn(2, 2, 8)
    with pytest.raises(ValueError, match="rotary_dim"):
        apply_rotary(q, q.clone(), torch.tensor([0, 1]), _cache(4, 10))
    with pytest.raises(ValueError, match="positions"):
        apply_rotary(q, q.clone(), torch.tensor([0.0, 1.0]), _cache(4, 8))


STORE_CASES = [
    # device, dtype, pool dtype, tokens, q heads, kv heads, head_dim, rotary_dim, v_head_dim, neox, inplace
    pytest.param("cpu", torch.float32, torch.float32, 3, 10, 2, 16, 16, 16, True, False, id="cpu-neox"),
    pytest.param("cpu", torch.float16, torch.float32, 2, 3, 1, 24, 8, 12, False, True, id="cpu-gptj-partial-cast"),
    pytest.param("cuda", torch.bfloat16, torch.bfloat16, 1, 32, 8, 128, 128, 128, True, True, id="gpu-llama8b-decode",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, torch.bfloat16, 300, 32, 8, 128, 128, 128, True, False, id="gpu-llama8b",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, torch.float8_e4m3fn, 33, 16, 16, 128, 32, 128, True, True, id="gpu-fp8-partial",
                 marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,pool_dtype,tokens,hq,hk,head_dim,rotary_dim,dv,neox,inplace", STORE_CASES)
def test_rotary_and_store_kv_matches_rotate_then_store(device, dtype, pool_dtype, tokens, hq, hk, head_dim,
                                                       rotary_dim, dv, neox, inplace):
    g = torch.Generator().manual_seed(2)
    slots = 4 * tokens + 8
    cache = _cache(4096, rotary_dim).to(device)
    qkv = torch.randn(tokens, (hq + hk) * head_dim + hk * dv, generator=g).to(device, dtype)
    q = qkv[:, : hq * head_dim].view(tokens, hq, head_dim)
    k = qkv[:, hq * head_dim : (hq + hk) * head_dim].view(tokens, hk, head_dim)
    v = qkv[:, (hq + hk) * head_dim :].view(tokens, hk, dv)
    positions = torch.randint(0, 4096, (tokens,), generator=g).to(device)
    loc = torch.randperm(slots, generator=g)[:tokens].to(device, torch.int32)
    ref_q, ref_k = ref_apply_rotary(q, k, positions, cache, is_neox=neox)
    k_ref = torch.zeros(slots, hk, head_dim, dtype=pool_dtype, device=device)
    v_ref = torch.zeros(slots, hk, dv, dtype=pool_dtype, device=device)
    ref_store_kv(k_ref, v_ref, loc, ref_k, v)
    v_before = v.clone()
    k_buf, v_buf = torch.zeros_like(k_ref), torch.zeros_like(v_ref)

    out_q, out_k = rotary_and_store_kv(q, k, v, positions, cache, k_buf, v_buf, loc, is_neox=neox, inplace=inplace)
    torch.testing.assert_close(out_q, ref_q, **_tol(dtype))
    torch.testing.assert_close(out_k, ref_k, **_tol(dtype))
    # the pool holds exactly the rotated k the kernel returned (cast), and v; other slots untouched
    assert torch.equal(k_buf[loc.long()].view(torch.uint8), out_k.to(pool_dtype).view(torch.uint8))
    assert torch.equal(v_buf.view(torch.uint8), v_ref.view(torch.uint8))
    # an fp8 pool may round a value that differs from the reference by a bf16 ulp one fp8 step away
    pool_tol = dict(atol=1e-2, rtol=0.13) if pool_dtype == torch.float8_e4m3fn else _tol(dtype)
    torch.testing.assert_close(k_buf.float(), k_ref.float(), **pool_tol)
    untouched = torch.ones(slots, dtype=torch.bool, device=device)
    untouched[loc.long()] = False
    assert not k_buf[untouched].float().any()
    assert torch.equal(v, v_before)


def test_rotary_and_store_kv_rejects_mismatched_pool():
    q, k, v = torch.randn(2, 2, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    pos, loc, cache = torch.tensor([0, 1]), torch.tensor([3, 4]), _cache(4, 8)
    buf = torch.zeros(6, 1, 8)
    with pytest.raises(ValueError, match="do not fit"):
        rotary_and_store_kv(q, k, v, pos, cache, torch.zeros(6, 2, 8), buf.clone(), loc)
    with pytest.raises(ValueError, match="loc"):
        rotary_and_store_kv(q, k, v, pos, cache, buf, buf.clone(), loc.float())
    with pytest.raises(ValueError, match="rows"):
        rotary_and_store_kv(q, k, v[:1], pos, cache, buf, buf.clone(), loc)
    with pytest.raises(ValueError, match="positions"):
        rotary_and_store_kv(q, k, v, pos[:1], cache, buf, buf.clone(), loc)


MLA_CASES = [
    # device, dtype, tokens, heads, kv_lora_rank, rope_dim
    pytest.param("cpu", torch.float32, 3, 4, 32, 16, id="cpu"),
    pytest.param("cpu", torch.bfloat16, 2, 3, 24, 8, id="cpu-bf16-odd-rank"),
    pytest.param("cuda", torch.bfloat16, 5, 16, 512, 64, id="gpu-v2-lite", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 130, 128, 512, 64, id="gpu-v3-prefill", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,tokens,heads,rank,rope", MLA_CASES)
def test_rotary_and_store_mla_kv_matches_rotate_then_store(device, dtype, tokens, heads, rank, rope):
    """The MLA layer's layout: q_rope split from q, k_rope and the latent from one projection."""
    g = torch.Generator().manual_seed(4)
    slots = 3 * tokens + 5
    cache = _cache(4096, rope).to(device)
    q = torch.randn(tokens, heads, 2 * rope, generator=g).to(device, dtype)
    q_rope = q[..., rope:]  # [T, H, P], strided
    kv_a = torch.randn(tokens, rank + rope, generator=g).to(device, dtype)
    latent, k_rope = kv_a[:, :rank].contiguous(), kv_a[:, rank:].unsqueeze(1)  # [T, R], [T, 1, P]
    positions = torch.randint(0, 4096, (tokens,), generator=g).to(device)
    loc = torch.randperm(slots, generator=g)[:tokens].to(device)
    ref_q, ref_k = ref_apply_rotary(q_rope, k_rope, positions, cache, is_neox=False)
    ref_buf = torch.zeros(slots, 1, rank + rope, dtype=dtype, device=device)
    ref_store_mla_kv(ref_buf, loc, latent, ref_k)
    buf = torch.zeros_like(ref_buf)

    out_q, out_k = rotary_and_store_mla_kv(q_rope, k_rope, latent, positions, cache, buf, loc, is_neox=False)
    torch.testing.assert_close(out_q, ref_q, **_tol(dtype))
    assert torch.equal(buf[loc, 0, rank:], out_k[:, 0].to(dtype))  # the pool holds the returned rotated key
    torch.testing.assert_close(buf.float(), ref_buf.float(), **_tol(dtype))
    untouched = torch.ones(slots, dtype=torch.bool, device=device)
    untouched[loc] = False
    assert not buf[untouched].float().any()

    # with the layer's latent RMSNorm folded in: the latent part is what rmsnorm would give
    weight = (1 + 0.1 * torch.randn(rank, generator=g)).to(device, dtype)
    normed_buf = torch.zeros_like(ref_buf)
    raw = kv_a[:, :rank]  # the strided view the layer passes
    rotary_and_store_mla_kv(q_rope, k_rope, raw, positions, cache, normed_buf, loc, latent_norm=(weight, 1e-6))
    torch.testing.assert_close(normed_buf[loc, 0, :rank].float(), ref_rmsnorm(raw, weight, 1e-6).float(), **_tol(dtype))
    assert torch.equal(normed_buf[:, :, rank:], buf[:, :, rank:])


def test_rotary_and_store_mla_kv_rejects_mismatched_pool():
    q, k, latent = torch.randn(2, 2, 8), torch.randn(2, 1, 8), torch.randn(2, 16)
    pos, loc, cache = torch.tensor([0, 1]), torch.tensor([3, 4]), _cache(4, 8)
    with pytest.raises(ValueError, match="buffer width"):
        rotary_and_store_mla_kv(q, k, latent, pos, cache, torch.zeros(6, 1, 20), loc)
    with pytest.raises(ValueError, match="contiguous"):
        rotary_and_store_mla_kv(q, k, latent, pos, cache, torch.zeros(6, 1, 48)[:, :, :24], loc)
    with pytest.raises(ValueError, match="loc"):
        rotary_and_store_mla_kv(q, k, latent, pos, cache, torch.zeros(6, 1, 24), loc[:1])
