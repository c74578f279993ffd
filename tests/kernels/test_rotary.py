"""Rotary embedding kernel against its torch reference: neox and GPT-J pairing, partial rotary."""

import pytest
import torch

from lmlang.kernels.rotary import apply_rotary, ref_apply_rotary


def _cache(max_pos: int, rotary_dim: int, base: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    freqs = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)  # [max_pos, rotary_dim]


CASES = [
    # device, dtype, tokens, q heads, k heads, head_dim, rotary_dim, neox
    pytest.param("cpu", torch.float32, 5, 4, 2, 16, 16, True, id="cpu-neox"),
    pytest.param("cpu", torch.float32, 3, 3, 1, 24, 8, True, id="cpu-neox-partial"),
    pytest.param("cpu", torch.float32, 4, 2, 1, 12, 12, False, id="cpu-gptj"),
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
