"""Driving a runtime model directly, without an engine: hand-built `ForwardBatch`es over its own pool.

    driver = ForwardDriver(model, num_seqs=3)
    logits = driver.forward({0: prompt_a, 2: prompt_b})   # ragged extend; one logits tensor per sequence
    logits = driver.forward({0: [tok], 2: [tok]})          # decode (every sequence one token past its prefix)

Each sequence owns `max_seq_len` fixed, shuffled KV slots; the pool is the one the model's
`kv_cache_spec()` asks for (MHA, or e.g. MLA's latent pool through the spec's `make_pool`), with
the attention backend the spec names (`attention_backend`), else the torch reference backend. For tests of models and
layers; imports torch and the runtime when used.
"""

from __future__ import annotations

from typing import Any, Optional


class ForwardDriver:
    def __init__(self, model: Any, num_seqs: int, max_seq_len: int = 256, dtype: Any = None) -> None:
        import torch

        from lmlang.runtime.attention.base import create_backend
        from lmlang.runtime.cache.kv_pool import MHAKVPool

        param = next(model.parameters())
        dtype = dtype or param.dtype
        self.device = param.device
        spec = model.kv_cache_spec()
        num_slots = num_seqs * max_seq_len
        if hasattr(spec, "make_pool"):
            self.pool = spec.make_pool(num_slots, dtype, self.device)
        else:
            self.pool = MHAKVPool(
                num_slots, spec.num_layers, spec.num_kv_heads, spec.head_dim, dtype, self.device, spec.v_head_dim
            )
        self.model = model
        self.backend = create_backend(getattr(spec, "attention_backend", "torch"), device=self.device)
        slots = torch.randperm(num_slots, generator=torch.Generator().manual_seed(0)) + 1  # slots 1..num_slots
        self.slot_table = slots.view(num_seqs, max_seq_len).to(self.device)
        self.lens = [0] * num_seqs

    def batch(self, new_tokens: dict, custom_mask: Optional[Any] = None) -> Any:
        """The `ForwardBatch` for `{sequence index: new token ids}` (planned; lengths not advanced)."""
        import torch

        from lmlang.runtime.forward_batch import ForwardBatch, ForwardMode

        seqs = list(new_tokens)
        prefix = [self.lens[i] for i in seqs]
        seq_lens = [p + len(new_tokens[i]) for i, p in zip(seqs, prefix)]
        if max(seq_lens) > self.slot_table.shape[1]:
            raise ValueError(f"a sequence would hold {max(seq_lens)} tokens; max_seq_len is {self.slot_table.shape[1]}")
        extend = [s - p for p, s in zip(prefix, seq_lens)]
        decode = all(n == 1 for n in extend) and all(prefix)

        def ints(values: list, dtype: Any = torch.int32) -> Any:
            return torch.tensor(values, dtype=dtype, device=self.device)

        batch = ForwardBatch(
            mode=ForwardMode.DECODE if decode else ForwardMode.EXTEND,
            input_ids=ints([t for i in seqs for t in new_tokens[i]], torch.int64),
            positions=torch.cat([torch.arange(p, s, device=self.device) for p, s in zip(prefix, seq_lens)]),
            out_cache_loc=torch.cat([self.slot_table[i, p:s] for i, p, s in zip(seqs, prefix, seq_lens)]),
            seq_lens=ints(seq_lens),
            prefix_lens=ints(prefix),
            qo_indptr=ints([0, *torch.tensor(extend).cumsum(0).tolist()]),
            kv_indptr=ints([0, *torch.tensor(seq_lens).cumsum(0).tolist()]),
            kv_indices=torch.cat([self.slot_table[i, :s] for i, s in zip(seqs, seq_lens)]),
            seq_lens_cpu=seq_lens,
            prefix_lens_cpu=prefix,
            kv_pool=self.pool,
            attn_backend=self.backend,
            custom_mask=custom_mask,
        )
        self.backend.plan(batch)
        return batch

    def advance(self, new_tokens: dict) -> None:
        for i, ids in new_tokens.items():
            self.lens[i] += len(ids)

    def forward(self, new_tokens: dict) -> list:
        """Runs the model over `{sequence index: new token ids}`; returns each sequence's float32 logits."""
        import torch

        batch = self.batch(new_tokens)
        with torch.no_grad():
            logits = self.model.compute_logits(self.model(batch))
        self.advance(new_tokens)
        return list(logits.split(batch.extend_lens_cpu))
