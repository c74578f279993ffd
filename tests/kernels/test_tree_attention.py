"""Tree attention (ragged new tokens over paged KV, custom or causal mask) against its torch reference."""

import pytest
import torch

from lmlang.kernels.tree_attention import ref_tree_attention, tree_attention


def _tree_mask(prefix_len: int, parents: list[int]) -> torch.Tensor:
    """[n, prefix_len + n] bool: draft token i sees the prefix, its ancestors and itself."""
    n = len(parents)
    mask = torch.zeros(n, prefix_len + n, dtype=torch.bool)
    mask[:, :prefix_len] = True
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, prefix_len + j] = True
            j = parents[j]
    return mask


def _batch(device, dtype, prefix_lens, trees, hq, hk, d, dv, g):
    """Sequences whose new tokens are draft trees (parent lists) after a cached prefix."""
    news = [len(p) for p in trees]
    seq_lens = [p + n for p, n in zip(prefix_lens, news)]
    slots = sum(seq_lens) + 8
    k_buf = torch.randn(slots, hk, d, generator=g).to(device, dtype)
    v_buf = torch.randn(slots, hk, dv, generator=g).to(device, dtype)
    kv_indices = torch.randperm(slots, generator=g)[: sum(seq_lens)].to(device)
    qo_indptr = torch.tensor([0, *torch.tensor(news).cumsum(0).tolist()], dtype=torch.int32, device=device)
    kv_indptr = torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q = torch.randn(sum(news), hq, d, generator=g).to(device, dtype)
    mask = torch.zeros(sum(news), max(seq_lens), dtype=torch.bool)
    for b, (p, parents) in enumerate(zip(prefix_lens, trees)):
        mask[qo_indptr[b] : qo_indptr[b + 1], : seq_lens[b]] = _tree_mask(p, parents)
    return q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, mask.to(device)


CASES = [
    # device, dtype, prefix lengths, draft trees (parent of each node, -1 = root), Hq, Hk, D, Dv
    pytest.param("cpu", torch.float32, [7, 0], [[-1, 0, 0, 1, 2], [-1, 0, 1]], 4, 2, 16, 16, id="cpu-fp32-gqa"),
    pytest.param("cpu", torch.bfloat16, [40], [[-1, 0, 1, 1, 0, 4] * 3], 2, 1, 24, 8, id="cpu-bf16-odd-dims"),
    pytest.param("cuda", torch.bfloat16, [4000, 130, 9000], [[-1] + list(range(63))] * 3, 32, 8, 128, 128,
                 id="gpu-llama8b-chain64", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, [2000] * 4, [[-1, 0, 0, 1, 1, 2, 2, 3] * 4] * 4, 128, 128, 192, 128,
                 id="gpu-deepseek-mha-heads", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype,prefix_lens,trees,hq,hk,d,dv", CASES)
@pytest.mark.parametrize("masked", [True, False], ids=["tree-mask", "causal"])
def test_tree_attention_matches_reference(device, dtype, prefix_lens, trees, hq, hk, d, dv, masked):
    g = torch.Generator().manual_seed(0)
    batch = _batch(device, dtype, prefix_lens, trees, hq, hk, d, dv, g)
    q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, mask = batch
    mask = mask if masked else None
    args = (q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, d**-0.5, mask)
    out = tree_attention(*args, max_qo_len=max(len(t) for t in trees))
    ref = ref_tree_attention(*args)
    assert out.shape == (q.shape[0], hq, dv)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, ref, **tol)


def test_chain_tree_equals_causal_and_masked_out_rows_are_zero():
    g = torch.Generator().manual_seed(1)
    q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, mask = _batch("cpu", torch.float32, [5], [[-1, 0, 1, 2]],
                                                                      2, 2, 16, 16, g)
    args = (q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, 0.25)
    torch.testing.assert_close(tree_attention(*args, mask), tree_attention(*args))  # a chain is causal
    mask[2] = False
    assert torch.equal(tree_attention(*args, mask)[2], torch.zeros(2, 16))


def test_tree_attention_rejects_bad_head_grouping():
    q = torch.zeros(1, 3, 8)
    buf = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError, match="multiple"):
        tree_attention(q, buf, buf, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1]), 1.0)
