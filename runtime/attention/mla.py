"""Multi-head latent attention over an `MLAKVPool`, in its two equivalent forms.

Notation (per layer): H heads; each cached token j holds `c_j` (kv_lora_rank R) and the rotated
rope key `kr_j` (rope dim P), shared by all heads. `kv_b_proj` maps `c_j` to per-head
`k_nope[h, j] = W_UK[h] c_j` (nope dim D) and `v[h, j] = W_UV[h] c_j` (value dim V).

- Expanded (`mla_expanded`, used for prefill): materialise k = [k_nope | kr] and v for every
  context token, then ordinary attention with q = [q_nope | q_rope]. Cost grows with H * (D + V)
  per context token, which is cheap next to a long prompt's own projections.
- Absorbed (`mla_absorbed`, used for decode): since q_nope[h] . W_UK[h] c_j = (W_UK[h]^T q_nope[h]) . c_j,
  the query is projected into the latent space once (`q_latent`, [H, R]) and attends directly
  over the cached rows; the output stays latent (`sum_j p_j c_j`) and the caller applies W_UV.
  Each step reads only R + P values per context token, which is what makes decode fast.

Both take the ragged batch layout of `ForwardBatch` (`qo_indptr`, `kv_indptr` / `kv_indices`,
causal offset by each sequence's prefix, and `custom_mask` where given). The new tokens' rows
must already be in the pool. On CUDA, a pure decode batch runs the 'mla' backend's planned
decode kernel (FlashInfer's MLA kernel, else the Triton `lmlang.kernels.mla_decode`; CUDA-graph
safe, see `mla_backend.py`), or the Triton kernel over the batch's own layout under any other
backend; everything else runs the torch code here (eager only: it loops over sequences on the host).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from lmlang.runtime.attention.mla_backend import MLAAttentionBackend
from lmlang.runtime.forward_batch import ForwardBatch


def _sequences(batch: ForwardBatch) -> Iterator[tuple[int, int, int, int, torch.Tensor | None]]:
    """Per sequence: (first new-token row, new tokens, first kv_indices entry, context length,
    attention mask [n_new, seq_len] bool, or None when plain causal attention with no prefix)."""
    device = batch.input_ids.device
    kv_start, qo = 0, 0
    for seq_len, prefix_len in zip(batch.seq_lens_cpu, batch.prefix_lens_cpu):
        n_new = seq_len - prefix_len
        mask = None
        if prefix_len or batch.custom_mask is not None:
            q_pos = torch.arange(prefix_len, seq_len, device=device)[:, None]
            mask = torch.arange(seq_len, device=device)[None, :] <= q_pos  # [n_new, seq_len]
            if batch.custom_mask is not None:
                mask = mask & batch.custom_mask[qo : qo + n_new, :seq_len]
        yield qo, n_new, kv_start, seq_len, mask
        qo += n_new
        kv_start += seq_len


def mla_expanded(
    q_nope: torch.Tensor,  # [n, H, D]
    q_rope: torch.Tensor,  # [n, H, P]
    kv_buffer: torch.Tensor,  # [slots, 1, R + P], this layer's pool buffer
    kv_b_proj: Callable[[torch.Tensor], torch.Tensor],  # [m, R] -> [m, H * (D + V)]
    v_head_dim: int,
    scaling: float,
    batch: ForwardBatch,
) -> torch.Tensor:  # [n, H, V]
    """Attention with keys and values expanded from the latent cache (see the module docstring)."""
    n, num_heads, nope_dim = q_nope.shape
    rank = kv_buffer.shape[2] - q_rope.shape[2]
    rows = kv_buffer[batch.kv_indices, 0].to(q_nope.dtype)  # [sum(seq_lens), R + P]
    kv = kv_b_proj(rows[:, :rank]).view(-1, num_heads, nope_dim + v_head_dim)  # one GEMM for every context
    k_nope, v = kv.split([nope_dim, v_head_dim], dim=-1)
    k_rope = rows[:, None, rank:].expand(-1, num_heads, -1)  # [sum(seq_lens), H, P]
    k = torch.cat([k_nope, k_rope], dim=-1)  # [sum(seq_lens), H, D + P]
    q = torch.cat([q_nope, q_rope], dim=-1)  # [n, H, D + P]
    out = q.new_empty(n, num_heads, v_head_dim)
    for qo, n_new, kv_start, seq_len, mask in _sequences(batch):
        qi = q[qo : qo + n_new].transpose(0, 1)  # [H, n_new, D + P]
        ki = k[kv_start : kv_start + seq_len].transpose(0, 1)  # [H, seq_len, D + P]
        vi = v[kv_start : kv_start + seq_len].transpose(0, 1)  # [H, seq_len, V]
        oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, is_causal=mask is None, scale=scaling)
        out[qo : qo + n_new] = oi.transpose(0, 1)
    return out


def mla_absorbed(
    q_latent: torch.Tensor,  # [n, H, R]: q_nope projected through W_UK
    q_rope: torch.Tensor,  # [n, H, P]
    kv_buffer: torch.Tensor,  # [slots, 1, R + P]
    scaling: float,
    batch: ForwardBatch,
) -> torch.Tensor:  # [n, H, R]: attention-weighted latent rows, before W_UV
    """Attention in the latent space (see the module docstring)."""
    if q_latent.is_cuda and batch.mode.is_decode and batch.custom_mask is None:
        if isinstance(batch.attn_backend, MLAAttentionBackend):
            return batch.attn_backend.decode(q_latent, q_rope, kv_buffer, scaling, batch)
        from lmlang.kernels.mla_decode import mla_decode

        return mla_decode(q_latent, q_rope, kv_buffer, batch.kv_indptr, batch.kv_indices, scaling)
    rank = q_latent.shape[2]
    out = torch.empty_like(q_latent)
    for qo, n_new, kv_start, seq_len, mask in _sequences(batch):
        rows = kv_buffer[batch.kv_indices[kv_start : kv_start + seq_len], 0].float()  # [seq_len, R + P]
        latent, k_rope = rows[:, :rank], rows[:, rank:]
        qi, qr = q_latent[qo : qo + n_new].float(), q_rope[qo : qo + n_new].float()  # [n_new, H, *]
        scores = (torch.einsum("qhr,kr->hqk", qi, latent) + torch.einsum("qhp,kp->hqk", qr, k_rope)) * scaling
        if mask is None:
            mask = torch.ones(n_new, seq_len, dtype=torch.bool, device=rows.device).tril(seq_len - n_new)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # [H, n_new, seq_len]
        out[qo : qo + n_new] = torch.einsum("hqk,kr->qhr", probs, latent).to(out.dtype)
    return out
