"""Tiny checkpoints briefly trained on real text, for tests that need a model with confident outputs.

A randomly initialised tiny model (`make_tiny_checkpoint`) has flat or erratic next-token
distributions: its top two tokens are often within one bf16 rounding of each other, so bf16
parity bars written for trained models cannot hold on it. A few hundred steps of training on
Python source give peaked, well-separated distributions instead.

    train_tiny_checkpoint(path, arch, steps=300, device="cuda") -> str
    python_source_ids(tokenizer, split, num_tokens) -> list[int]

Text: the top-level modules of the running interpreter's standard library (`*.py` under
`sysconfig`'s stdlib path), in name order; every `HELD_OUT_EVERY`-th file is held out for
evaluation (`split="held_out"`), the rest is trained on (`split="train"`). The same interpreter
gives the same text, so the same seed on the same device gives the same weights.

Training: the test tokenizer and the `TINY_ARCHS` row's config (caller's overrides on top),
transformers' own initialisation, AdamW with a linear warm-up and cosine decay, random windows
of `seq_len` tokens. The loss adds relu(|logit| - `logit_bound`)^2, summed over the vocabulary
and averaged over positions. Softmax does not care where its logits sit, so this costs the model
little (a top token can still reach p = 0.68 at bound 3.5) but keeps every logit within about
`logit_bound` of zero. bf16's errors are relative, so the logprob errors of a bf16 forward scale
with the logits' range. Both implementations round the LM head's output to bf16, whose step is
2^-6 for magnitudes in [2, 4) and 2^-5 in [4, 8): one rounding flip of a logit at 4 or above moves
a logprob by 0.031 alone. Bound 3.5 keeps logits below 4. Measured on CPU (llama, hidden 512, 4
layers, head_dim 128, 80 steps of 8 x 256 tokens; 1,969 held-out prompt tokens; worst |diff|):

    bound   engine vs transformers-bf16   transformers eager vs SDPA   bf16 vs float32 LM head
    4.0     0.028                         0.028                        0.016
    3.5     0.017                         0.021                        0.009
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import sysconfig
from typing import Any, Optional

HELD_OUT_EVERY = 8
MIN_TRAIN_TOKENS = 300_000  # even a short run samples from many files, not the first few


def _source_files(split: str) -> list[str]:
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    if not files:
        raise RuntimeError("no standard library sources found (a zipped stdlib?)")
    held = split == "held_out"
    return [f for i, f in enumerate(files) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held]


def python_source_ids(tokenizer: Any, split: str, num_tokens: int) -> list[int]:
    """The first `num_tokens` token ids of the split's files, concatenated in name order
    (fewer if the split is shorter). `tokenizer` is a transformers tokenizer."""
    ids: list[int] = []
    for file in _source_files(split):
        with open(file, encoding="utf-8", errors="replace") as f:
            ids.extend(tokenizer.encode(f.read(), verbose=False))
        if len(ids) >= num_tokens:
            break
    return ids[:num_tokens]


def train_tiny_checkpoint(
    path: str | os.PathLike,
    arch: str,
    steps: int = 300,
    device: str = "cpu",
    *,
    seed: int = 0,
    batch_size: int = 16,
    seq_len: int = 1024,
    lr: float = 2e-3,
    logit_bound: float = 3.5,
    log_every: Optional[int] = None,
    **config_overrides: Any,
) -> str:
    """Writes a tiny `arch` checkpoint trained for `steps` AdamW steps to directory `path`; returns it.

    `config_overrides` replace config fields of the `TINY_ARCHS` row (e.g. `hidden_size=512,
    head_dim=128, num_hidden_layers=4`). Training runs in float32 on `device` (bf16 autocast on
    CUDA); the checkpoint is saved in float32 with the test tokenizer. `log_every` prints the
    loss every that many steps. Raises ValueError for an unknown arch or a non-positive `steps`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lmlang.testing.checkpoints import _progress_bars_off, make_tiny_checkpoint

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    path = make_tiny_checkpoint(path, arch, seed, **config_overrides)  # tokenizer, config, generation config
    config = AutoConfig.from_pretrained(path)
    config.max_position_embeddings = max(config.max_position_embeddings, seq_len)
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = torch.tensor(python_source_ids(tokenizer, "train", max(steps * batch_size * seq_len // 2, MIN_TRAIN_TOKENS)))
    if data.numel() <= seq_len + 1:
        raise ValueError(f"the training text has {data.numel()} tokens; seq_len {seq_len} needs more")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    on_cuda = torch.device(device).type == "cuda"
    for step in range(steps):
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=generator)
        window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).to(device)  # [batch, seq_len + 1]
        with torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext():
            logits = model(window[:, :-1]).logits.float()  # [batch, seq_len, vocab]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        total = loss + torch.relu(logits.abs() - logit_bound).pow(2).sum(-1).mean()  # per position
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step}: loss {loss.item():.3f}, max |logit| {logits.detach().abs().max().item():.1f}")
    model.eval().to("cpu")
    with _progress_bars_off():
        model.save_pretrained(path)
    return path
