"""Reference attention in plain torch. CPU default and test oracle.

Decode batches run as one padded SDPA call (padding reads the dummy slot and is masked out);
extend batches run one SDPA call per sequence with a causal mask offset by its cached prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlang.runtime.attention.base import AttentionBackend, register_backend
from lmlang.runtime.forward_batch import ForwardBatch


@register_backend("torch")
class TorchAttentionBackend(AttentionBackend):
    def __init__(self, **_: object) -> None:
        self._masks: list = []
        self._padded_idx = None  # [batch, max_len] slots, decode only
        self._padded_mask = None  # [batch, 1, 1, max_len]

    def plan(self, batch: ForwardBatch) -> None:
        device = batch.input_ids.device
        self._masks, self._padded_idx, self._padded_mask = [], None, None
        if batch.mode.is_decode and batch.custom_mask is None:
            lens = batch.seq_lens.to(device=device, dtype=torch.long)
            max_len = max(batch.seq_lens_cpu)
            pos = torch.arange(max_len, device=device)[None, :]
            valid = pos < lens[:, None]  # [batch, max_len]
            starts = batch.kv_indptr[:-1].to(device=device, dtype=torch.long)[:, None]
            flat = (starts + pos).clamp(max=max(batch.kv_indices.numel() - 1, 0))
            self._padded_idx = torch.where(valid, batch.kv_indices[flat], torch.zeros_like(flat))
            self._padded_mask = valid[:, None, None, :]
            return
        # causal mask per sequence: new token j (position prefix + j) sees kv positions <= prefix + j
        qo = 0
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
        group = q.shape[1] // k_buf.shape[1]
        if self._padded_idx is not None:
            return self._decode(q, k_buf, v_buf, group, scaling)
        out = q.new_empty(q.shape[0], q.shape[1], v_buf.shape[2])
        kv_indptr = batch.kv_indptr.tolist()
        qo = 0
        for i, (seq_len, prefix_len) in enumerate(zip(batch.seq_lens_cpu, batch.prefix_lens_cpu)):
            n_new = seq_len - prefix_len
            idx = batch.kv_indices[kv_indptr[i] : kv_indptr[i + 1]]
            qi = q[qo : qo + n_new].transpose(0, 1)  # [heads, n_new, head_dim]
            ki = _expand(k_buf[idx].transpose(0, 1).to(q.dtype), group)  # [heads, seq_len, head_dim]
            vi = _expand(v_buf[idx].transpose(0, 1).to(q.dtype), group)
            oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=self._masks[i], scale=scaling)
            out[qo : qo + n_new] = oi.transpose(0, 1)
            qo += n_new
        return out

    def _decode(self, q, k_buf, v_buf, group: int, scaling: float) -> torch.Tensor:
        ki = _expand(k_buf[self._padded_idx].transpose(1, 2).to(q.dtype), group, dim=1)  # [b, heads, len, d]
        vi = _expand(v_buf[self._padded_idx].transpose(1, 2).to(q.dtype), group, dim=1)
        out = F.scaled_dot_product_attention(q[:, :, None, :], ki, vi, attn_mask=self._padded_mask, scale=scaling)
        return out[:, :, 0, :]  # [batch, heads, v_head_dim]


def _expand(x: torch.Tensor, group: int, dim: int = 0) -> torch.Tensor:
    """Repeats KV heads for grouped-query attention."""
    return x if group == 1 else x.repeat_interleave(group, dim=dim)
