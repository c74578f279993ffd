"""Owns the model, the KV pool and the attention backend; runs one forward per scheduled batch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from lmlang.runtime.attention.base import create_backend
from lmlang.runtime.cache.kv_pool import KVPool, MHAKVPool
from lmlang.runtime.config import EngineConfig
from lmlang.runtime.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger(__name__)

CPU_DEFAULT_SLOTS = 32768


@dataclass
class SeqChunk:
    """The part of one sequence a forward computes: tokens [prefix_len, seq_len) of `token_ids`."""

    token_ids: Sequence[int]  # the sequence's tokens, at least seq_len of them
    prefix_len: int
    seq_len: int
    slots: torch.Tensor  # [seq_len] int64, KV slots of positions 0..seq_len-1


class ModelRunner:
    def __init__(self, cfg: EngineConfig) -> None:
        from lmlang.runtime.model_loader import load_model

        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.model, self.hf_config = load_model(
            cfg.model_path, dtype=cfg.dtype, device=self.device, load_format=cfg.load_format, seed=cfg.seed,
            quantization=cfg.quantization,
        )
        self.dtype = next(self.model.parameters()).dtype
        self.model.eval()
        self.num_slots = self._pool_size()
        self.kv_pool = self._make_pool(self.num_slots)
        self.attn_backend = create_backend(self._backend_name(), kv_pool=self.kv_pool, device=self.device)
        self.forward_passes = 0

    def _backend_name(self) -> str:
        if self.cfg.attention_backend:
            return self.cfg.attention_backend
        return "flashinfer" if self.device.type == "cuda" else "torch"

    def _pool_size(self) -> int:
        if self.cfg.max_total_tokens is not None:
            return self.cfg.max_total_tokens
        if self.device.type != "cuda":
            return CPU_DEFAULT_SLOTS
        free, _ = torch.cuda.mem_get_info(self.device)
        per_slot = self._make_pool(1).bytes_per_slot()
        budget = free * self.cfg.mem_fraction_static
        return max(int(budget // per_slot), 16)

    def _make_pool(self, num_slots: int) -> KVPool:
        spec = self.model.kv_cache_spec()
        make = getattr(spec, "make_pool", None)
        if make is not None:
            return make(num_slots, self.dtype, self.device)
        return MHAKVPool(
            num_slots, spec.num_layers, spec.num_kv_heads, spec.head_dim, self.dtype, self.device, spec.v_head_dim
        )

    @torch.inference_mode()
    def forward(
        self,
        mode: ForwardMode,
        seqs: Sequence[SeqChunk],
        logit_rows: Sequence[int],  # token rows (in the ragged batch) whose logits are returned
        custom_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:  # [len(logit_rows), vocab] float32
        batch = self.build_batch(mode, seqs, custom_mask)
        self.attn_backend.plan(batch)
        hidden = self.model(batch)  # [num_tokens, hidden]
        self.forward_passes += 1
        rows = torch.tensor(list(logit_rows), dtype=torch.long, device=self.device)
        if rows.numel() == 0:
            return torch.empty(0, 0)
        return self.model.compute_logits(hidden.index_select(0, rows)).float()

    def build_batch(self, mode: ForwardMode, seqs: Sequence[SeqChunk], custom_mask=None) -> ForwardBatch:
        ids, pos, out_loc, kv_idx = [], [], [], []
        qo_indptr, kv_indptr = [0], [0]
        for s in seqs:
            ids.extend(s.token_ids[s.prefix_len : s.seq_len])
            pos.append(torch.arange(s.prefix_len, s.seq_len))
            out_loc.append(s.slots[s.prefix_len : s.seq_len])
            kv_idx.append(s.slots[: s.seq_len])
            qo_indptr.append(qo_indptr[-1] + s.seq_len - s.prefix_len)
            kv_indptr.append(kv_indptr[-1] + s.seq_len)
        dev = self.device
        return ForwardBatch(
            mode=mode,
            input_ids=torch.tensor(ids, dtype=torch.long).to(dev, non_blocking=True),
            positions=torch.cat(pos).to(dev, non_blocking=True),
            out_cache_loc=torch.cat(out_loc).to(dev, non_blocking=True),
            seq_lens=torch.tensor([s.seq_len for s in seqs], dtype=torch.int32).to(dev),
            prefix_lens=torch.tensor([s.prefix_len for s in seqs], dtype=torch.int32).to(dev),
            qo_indptr=torch.tensor(qo_indptr, dtype=torch.int32).to(dev),
            kv_indptr=torch.tensor(kv_indptr, dtype=torch.int32).to(dev),
            kv_indices=torch.cat(kv_idx).to(dev, non_blocking=True),
            seq_lens_cpu=[s.seq_len for s in seqs],
            prefix_lens_cpu=[s.prefix_len for s in seqs],
            kv_pool=self.kv_pool,
            attn_backend=self.attn_backend,
            custom_mask=custom_mask,
        )
