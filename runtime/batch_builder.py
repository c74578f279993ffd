"""Builds a `ForwardBatch`'s tensors from the scheduled sequence chunks, cheaply on the host.

Everything is computed with a handful of numpy operations over the batch (no per-token Python,
no per-sequence device work), packed into two host buffers (int64: token ids, positions, output
slots, context slots; int32: lengths and indptrs) and moved with one copy each. On CUDA the host
buffers are pinned and reused, alternating between two so that building batch N + 1 never
overwrites a buffer whose copy for batch N may still be in flight (each reuse first waits for its
copy's event).

Padding (`pad_to`): a decode batch replayed from a CUDA graph captured for a larger batch size
gets extra sequences of one token (id 0, position 0) whose K/V go to the dummy slot 0 and whose
context is that slot alone; their outputs are discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from lmlang.runtime.forward_batch import ForwardBatch, ForwardMode


@dataclass
class SeqChunk:
    """The part of one sequence a forward computes: tokens [prefix_len, seq_len) of `token_ids`."""

    token_ids: Sequence[int]  # the sequence's tokens from position ids_offset on, up to seq_len at least
    prefix_len: int
    seq_len: int
    slots: torch.Tensor  # [seq_len] int64 (CPU), KV slots of positions 0..seq_len-1
    ids_offset: int = 0  # position of token_ids[0]: a decode step passes only its new tokens


class _Staging:
    """A reusable host buffer (pinned on CUDA) and the event of its last copy to the device."""

    def __init__(self, dtype: torch.dtype, pinned: bool) -> None:
        self.dtype, self.pinned = dtype, pinned
        self.host = torch.empty(0, dtype=dtype)
        self.event: Optional[torch.cuda.Event] = None

    def take(self, n: int) -> np.ndarray:
        """A writable [n] view, once the previous copy out of this buffer has finished."""
        if self.event is not None:
            self.event.synchronize()
        if self.host.numel() < n:
            self.host = torch.empty(max(n, 2 * self.host.numel()), dtype=self.dtype, pin_memory=self.pinned)
        return self.host[:n].numpy()

    def to_device(self, n: int, device: torch.device) -> torch.Tensor:
        out = torch.empty(n, dtype=self.dtype, device=device)
        out.copy_(self.host[:n], non_blocking=True)
        if self.event is None:
            self.event = torch.cuda.Event()
        self.event.record()
        return out


class BatchBuilder:
    def __init__(self, device: torch.device, kv_pool, attn_backend) -> None:
        self.device = device
        self.kv_pool = kv_pool
        self.attn_backend = attn_backend
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._staging = [(_Staging(torch.int64, True), _Staging(torch.int32, True)) for _ in range(2)]
            self._turn = 0

    def build(
        self, mode: ForwardMode, seqs: Sequence[SeqChunk], custom_mask: Optional[torch.Tensor] = None, pad_to: int = 0
    ) -> ForwardBatch:
        n = len(seqs)
        pad = max(pad_to - n, 0)
        seq_lens = np.fromiter((s.seq_len for s in seqs), np.int64, n)
        prefix_lens = np.fromiter((s.prefix_len for s in seqs), np.int64, n)
        ids: list = []
        for s in seqs:
            ids.extend(s.token_ids[s.prefix_len - s.ids_offset : s.seq_len - s.ids_offset])
        kv = torch.cat([s.slots[: s.seq_len] for s in seqs]).numpy() if n else np.zeros(0, np.int64)
        if pad:
            seq_lens = np.concatenate([seq_lens, np.ones(pad, np.int64)])
            prefix_lens = np.concatenate([prefix_lens, np.zeros(pad, np.int64)])
            ids.extend([0] * pad)
            kv = np.concatenate([kv, np.zeros(pad, np.int64)])
        ext = seq_lens - prefix_lens
        qo_indptr = np.concatenate([[0], np.cumsum(ext)])
        kv_indptr = np.concatenate([[0], np.cumsum(seq_lens)])
        num_tokens, num_kv = int(qo_indptr[-1]), int(kv_indptr[-1])
        # position of new token t of sequence b: prefix_b + (t - qo_start_b); its slot is kv[kv_start_b + position]
        positions = np.arange(num_tokens) + np.repeat(prefix_lens - qo_indptr[:-1], ext)
        out_loc = kv[np.repeat(kv_indptr[:-1], ext) + positions]

        bsz = n + pad
        long_parts = (np.asarray(ids, np.int64), positions, out_loc, kv)
        int_parts = (seq_lens, prefix_lens, qo_indptr, kv_indptr)
        longs = self._to_device(long_parts, 0, 3 * num_tokens + num_kv)
        ints = self._to_device(int_parts, 1, 4 * bsz + 2)
        t = num_tokens
        return ForwardBatch(
            mode=mode,
            input_ids=longs[:t],
            positions=longs[t : 2 * t],
            out_cache_loc=longs[2 * t : 3 * t],
            kv_indices=longs[3 * t :],
            seq_lens=ints[:bsz],
            prefix_lens=ints[bsz : 2 * bsz],
            qo_indptr=ints[2 * bsz : 3 * bsz + 1],
            kv_indptr=ints[3 * bsz + 1 :],
            seq_lens_cpu=seq_lens.tolist(),
            prefix_lens_cpu=prefix_lens.tolist(),
            kv_pool=self.kv_pool,
            attn_backend=self.attn_backend,
            custom_mask=custom_mask,
        )

    def _to_device(self, parts: tuple, which: int, total: int) -> torch.Tensor:
        """Concatenates `parts` into one device tensor (int64 for which=0, int32 for which=1)."""
        if not self._cuda:
            dtype = np.int64 if which == 0 else np.int32
            return torch.from_numpy(np.concatenate(parts).astype(dtype, copy=False))
        staging = self._staging[self._turn][which]
        if which == 1:
            self._turn ^= 1  # the int32 part is built last: the next batch uses the other pair
        buf = staging.take(total)
        at = 0
        for part in parts:
            buf[at : at + len(part)] = part
            at += len(part)
        return staging.to_device(total, self.device)
