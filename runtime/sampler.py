"""Turns a batch of next-token logits into tokens (and logprobs).

Order of operations per row: penalties (repetition, frequency, presence) → hard masks (grammar
bitmask, EOS/stop ids before `min_new_tokens`) → logprobs (log-softmax of these logits, before
temperature) → greedy argmax, or temperature → top-k → top-p → min-p → sampling. Rows with a
`seed` draw from their own generator, so their tokens do not depend on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from lmlang.runtime.request import Req


@dataclass
class SampleOutput:
    token_ids: list  # [batch] int
    logprobs: Optional[list] = None  # [batch] float, logprob of the chosen token
    top_logprobs: Optional[list] = None  # [batch] list of (logprob, token_id)


def top_logprobs_of(logprobs: torch.Tensor, k: int) -> list:
    """[(logprob, token_id)] * k for one row of log-probabilities."""
    if k <= 0:
        return []
    vals, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
    return list(zip(vals.tolist(), ids.tolist()))


class Sampler:
    def __init__(self, vocab_size: int, eos_token_ids: Sequence[int], seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.inference_mode()
    def sample(
        self,
        logits: torch.Tensor,  # [batch, vocab] float32
        reqs: Sequence[Req],
        bitmask: Optional[torch.Tensor] = None,  # [batch, ceil(vocab/32)] int32, or None
    ) -> SampleOutput:
        logits = logits.float()
        if logits.shape[-1] > self.vocab_size:
            logits = logits[:, : self.vocab_size]
        self._apply_penalties(logits, reqs)
        self._apply_min_tokens(logits, reqs)
        if bitmask is not None:
            from lmlang.runtime.grammar_backend import apply_bitmask_

            apply_bitmask_(logits, bitmask)
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = self._choose(logits, reqs)
        out = SampleOutput(token_ids=tokens.tolist())
        if any(r.return_logprob for r in reqs):
            chosen = logprobs.gather(1, tokens.view(-1, 1).to(logprobs.device)).view(-1).tolist()
            out.logprobs = chosen
            out.top_logprobs = [top_logprobs_of(logprobs[i], r.top_logprobs_num) for i, r in enumerate(reqs)]
        return out

    def _apply_penalties(self, logits: torch.Tensor, reqs: Sequence[Req]) -> None:
        for i, r in enumerate(reqs):
            p = r.params
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(r.fill_ids)), dtype=torch.long, device=logits.device)
                seen = seen[seen < logits.shape[1]]
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if (p.frequency_penalty != 0.0 or p.presence_penalty != 0.0) and r.output_ids:
                counts = torch.bincount(
                    torch.tensor(r.output_ids, dtype=torch.long), minlength=logits.shape[1]
                )[: logits.shape[1]].to(logits.device, logits.dtype)
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)

    def _apply_min_tokens(self, logits: torch.Tensor, reqs: Sequence[Req]) -> None:
        for i, r in enumerate(reqs):
            p = r.params
            if len(r.output_ids) < p.min_new_tokens:
                banned = list(p.stop_token_ids or [])
                if not p.ignore_eos:
                    banned += self.eos_token_ids
                banned = [t for t in banned if t < logits.shape[1]]
                if banned:
                    logits[i, banned] = float("-inf")

    def _choose(self, logits: torch.Tensor, reqs: Sequence[Req]) -> torch.Tensor:
        tokens = torch.argmax(logits, dim=-1)
        sample_rows = [i for i, r in enumerate(reqs) if not r.params.is_greedy]
        if not sample_rows:
            return tokens
        probs = self._filtered_probs(logits[sample_rows], [reqs[i] for i in sample_rows])
        for j, i in enumerate(sample_rows):
            gen = reqs[i].generator or self.generator
            row = probs[j].cpu() if gen.device.type == "cpu" else probs[j]
            tokens[i] = torch.multinomial(row, 1, generator=gen).to(tokens.device)[0]
        return tokens

    @torch.inference_mode()
    def sample_on_device(self, logits: torch.Tensor, reqs: Sequence[Req]) -> torch.Tensor:  # [batch] int64
        """Tokens for rows that need no host-side state (see `Scheduler._chainable`), without a
        host sync: greedy rows take the argmax, the others race exponential noise (equivalent
        to sampling from the filtered distribution) using the device's default generator."""
        logits = logits.float()[:, : self.vocab_size]
        tokens = torch.argmax(logits, dim=-1)
        sample_rows = [i for i, r in enumerate(reqs) if not r.params.is_greedy]
        if not sample_rows:
            return tokens
        rows = torch.tensor(sample_rows, dtype=torch.long, device=logits.device)
        probs = self._filtered_probs(logits.index_select(0, rows), [reqs[i] for i in sample_rows])
        noise = torch.empty_like(probs).exponential_()
        tokens[rows] = torch.argmax(probs / noise, dim=-1)
        return tokens

    @staticmethod
    def _filtered_probs(logits: torch.Tensor, reqs: Sequence[Req]) -> torch.Tensor:
        """Temperature, then top-k, top-p and min-p filtering; rows sum to 1. No host sync."""
        device = logits.device
        temps = torch.tensor([r.params.temperature for r in reqs], device=device).view(-1, 1)
        logits = logits / temps
        top_k = [r.params.top_k for r in reqs]
        if any(k > 0 for k in top_k):
            ks = torch.tensor([k if k > 0 else logits.shape[1] for k in top_k], device=device)
            sorted_vals = torch.sort(logits, dim=-1, descending=True).values
            kth = sorted_vals.gather(1, (ks - 1).clamp(max=logits.shape[1] - 1).view(-1, 1))
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if any(r.params.top_p < 1.0 for r in reqs):
            top_p = torch.tensor([r.params.top_p for r in reqs], device=device)
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            cum = torch.cumsum(sorted_probs, dim=-1)
            drop = (cum - sorted_probs) > top_p.view(-1, 1)  # keep the smallest set reaching top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
        if any(r.params.min_p > 0 for r in reqs):
            min_p = torch.tensor([r.params.min_p for r in reqs], device=device)
            threshold = probs.max(dim=-1, keepdim=True).values * min_p.view(-1, 1)
            probs = probs.masked_fill(probs < threshold, 0.0)
        return probs / probs.sum(dim=-1, keepdim=True)
