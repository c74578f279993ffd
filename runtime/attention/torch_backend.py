"""Reference attention in plain torch: one SDPA call per sequence. CPU default, test oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlang.runtime.attention.base import AttentionBackend, register_backend
from lmlang.runtime.forward_batch import ForwardBatch


@register_backend("torch")
class TorchAttentionBackend(AttentionBackend):
    def __init__(self, **_: object) -> None:
        self._masks: list = []

    def plan(self, batch: ForwardBatch) -> None:
        # causal mask per sequence: new token j (position prefix + j) sees kv positions <= prefix + j
        self._masks = []
        qo = 0
        device = batch.input_ids.device
        for seq_len, prefix_len in zip(batch.seq_lens_cpu, batch.prefix_lens_cpu):
            n_new = seq_len - prefix_len
            q_pos = torch.arange(prefix_len, seq_len, device=device)[:, None]
            kv_pos = torch.arange(seq_len, device=device)[None, :]
            mask = kv_pos <= q_pos  # [n_new, seq_len]
            if batch.custom_mask is not None:
                mask = mask & batch.custom_mask[qo : qo + n_new, :seq_len]
            self._masks.append(mask)
            qo += n_new

    def forward(self, q, k, v, layer_id: int, scaling: float, batch: ForwardBatch) -> torch.Tensor:
        pool = batch.kv_pool
        pool.store(layer_id, batch.out_cache_loc, k, v)
        k_buf, v_buf = pool.k_buffer[layer_id], pool.v_buffer[layer_id]
        num_heads, num_kv_heads = q.shape[1], k_buf.shape[1]
        out = q.new_empty(q.shape[0], num_heads, v_buf.shape[2])
        kv_indptr = batch.kv_indptr.tolist()
        qo = 0
        for i, (seq_len, prefix_len) in enumerate(zip(batch.seq_lens_cpu, batch.prefix_lens_cpu)):
            n_new = seq_len - prefix_len
            idx = batch.kv_indices[kv_indptr[i] : kv_indptr[i + 1]]
            qi = q[qo : qo + n_new].transpose(0, 1)  # [heads, n_new, head_dim]
            ki = k_buf[idx].transpose(0, 1).to(q.dtype)  # [kv_heads, seq_len, head_dim]
            vi = v_buf[idx].transpose(0, 1).to(q.dtype)
            if num_heads != num_kv_heads:
                ki = ki.repeat_interleave(num_heads // num_kv_heads, dim=0)
                vi = vi.repeat_interleave(num_heads // num_kv_heads, dim=0)
            oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=self._masks[i], scale=scaling)
            out[qo : qo + n_new] = oi.transpose(0, 1)
            qo += n_new
        return out
