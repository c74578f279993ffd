"""MLA decode (split-K over a latent cache) against its torch reference."""

import pytest
import torch

from lmlang.kernels import mla_decode as mla_module
from lmlang.kernels.mla_decode import MLADecodeConfig, default_num_splits, mla_decode, ref_mla_decode

WIDE = MLADecodeConfig(block_h=32, block_n=16)

CASES = [
    # device, dtype, context lengths, heads, kv_lora_rank, rope_dim, splits (None: default), config (None: default)
    pytest.param("cpu", torch.float32, [5, 40, 1], 3, 32, 16, 2, None, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, [70, 0, 9], 20, 64, 16, 3, None, id="cpu-bf16-empty-context"),
    pytest.param("cpu", torch.float32, [33, 2], 40, 32, 16, None, WIDE, id="cpu-default-splits-two-head-blocks"),
    pytest.param("cpu", torch.float32, [20, 300], 4, 32, 16, 8, MLADecodeConfig(16, 16),
                 id="cpu-short-context-leaves-splits-empty"),
    pytest.param("cuda", torch.bfloat16, [1, 517, 4096, 33], 128, 512, 64, 8, None, id="gpu-deepseek-v3",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, [8192] * 32, 16, 512, 64, 4, None, id="gpu-tp8-batch32",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, [4096], 16, 512, 64, None, None, id="gpu-v2-lite-batch1-default-splits",
                 marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, [1, 4000, 77], 128, 512, 64, None, MLADecodeConfig(64, 32, 8, 2),
                 id="gpu-v3-wide-head-block", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,lens,heads,rank,rope,splits,config", CASES)
def test_mla_decode_matches_reference(device, dtype, lens, heads, rank, rope, splits, config):
    g = torch.Generator().manual_seed(0)
    b, total = len(lens), sum(lens)
    slots = total + 16
    kv_cache = torch.randn(slots, 1, rank + rope, generator=g).to(device, dtype)
    kv_indices = torch.randperm(slots, generator=g)[:total].to(device)  # scattered pages
    kv_indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q_nope = torch.randn(b, heads, rank, generator=g).to(device, dtype)
    q_pe = torch.randn(b, heads, rope, generator=g).to(device, dtype)
    scale = (rank + rope) ** -0.5
    out = mla_decode(q_nope, q_pe, kv_cache, kv_indptr, kv_indices, scale, num_kv_splits=splits, config=config)
    ref = ref_mla_decode(q_nope, q_pe, kv_cache, kv_indptr, kv_indices, scale)
    assert out.shape == (b, heads, rank)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, ref, **tol)


def test_mla_decode_rejects_mismatched_cache_width():
    q = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="kv_cache"):
        mla_decode(q, torch.zeros(1, 2, 4), torch.zeros(3, 1, 10), torch.tensor([0, 1]), torch.tensor([0]), 1.0)


def test_default_splits_fill_the_device_and_ignore_context_lengths(monkeypatch):
    monkeypatch.setattr(mla_module, "_multiprocessors", lambda device: 132)
    cfg, cuda = MLADecodeConfig(block_h=16), torch.device("cuda")
    assert default_num_splits(1, 16, cfg, cuda) == mla_module.MAX_SPLITS  # batch 1: as many splits as allowed
    assert default_num_splits(32, 16, cfg, cuda) == 9  # ceil(2 * 132 / 32) programs per request
    assert default_num_splits(128, 128, cfg, cuda) == 1  # 128 x 8 head blocks already fill the device


def test_config_rejects_blocks_tl_dot_cannot_take():
    with pytest.raises(ValueError, match="block_n"):
        MLADecodeConfig(block_n=8)
    with pytest.raises(ValueError, match="block_h"):
        MLADecodeConfig(block_h=24)
