"""Token bitmask kernel against its torch reference, and the bit layout users rely on."""

import pytest
import torch

from lmlang.kernels.bitmask import apply_token_bitmask_, ref_apply_token_bitmask


def _random_bitmask(rows, vocab, g, device):
    words = (vocab + 31) // 32
    return torch.randint(-(2**31), 2**31 - 1, (rows, words), generator=g, dtype=torch.int32).to(device)


CASES = [
    pytest.param("cpu", torch.float32, 3, 77, id="cpu-ragged-vocab"),
    pytest.param("cpu", torch.bfloat16, 2, 4100, id="cpu-two-blocks"),
    pytest.param("cuda", torch.float32, 64, 128256, id="gpu-llama3-vocab", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 16, 129280, id="gpu-deepseek-vocab", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,rows,vocab", CASES)
@pytest.mark.parametrize("with_indices", [False, True])
def test_apply_token_bitmask_matches_reference(device, dtype, rows, vocab, with_indices):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=g).to(device, dtype)
    bitmask = _random_bitmask(rows, vocab, g, device)
    indices = torch.tensor([rows - 1, 0], device=device) if with_indices else None
    expected = ref_apply_token_bitmask(logits, bitmask, indices)
    for use_triton in (True, False):
        out = logits.clone()
        apply_token_bitmask_(out, bitmask, indices, use_triton=use_triton)
        assert torch.equal(out, expected)


def test_bit_j_of_word_w_is_token_32w_plus_j():
    logits = torch.zeros(1, 70)
    bitmask = torch.zeros(1, 3, dtype=torch.int32)
    bitmask[0, 0] = 1 << 5  # token 5
    bitmask[0, 1] = -(2**31)  # bit 31 of word 1: token 63
    bitmask[0, 2] = 1 << 1  # token 65
    apply_token_bitmask_(logits, bitmask, use_triton=True)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [5, 63, 65]


def test_apply_token_bitmask_rejects_short_mask():
    with pytest.raises(ValueError, match="cover"):
        apply_token_bitmask_(torch.zeros(1, 70), torch.zeros(1, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="int32"):
        apply_token_bitmask_(torch.zeros(1, 70), torch.zeros(1, 3, dtype=torch.int64))
