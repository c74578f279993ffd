"""Constrained decoding inside the engine core: compile, mask, advance, jump forward.

Constraints are compiled on a worker thread (never on the scheduler's), through one
`GrammarCompiler` whose cache is keyed by (constraint, tokenizer); a request waits in the
scheduler's grammar queue until its grammar is ready. Masks for a batch are filled on the same
worker while the model's forward runs, so their cost hides behind the GPU (or the CPU's BLAS).

Interplay with the other limits (documented for users in `SamplingParams`): EOS is allowed only
where the grammar can end; `max_new_tokens` still cuts the output (the text may then be an
incomplete match, finish reason "length"); stop strings and stop token ids are checked on the
constrained output as usual; a request ends with reason "stop" once the grammar admits nothing
more. Jump-forward: when the grammar forces a text (e.g. a fixed JSON key), its tokens are
appended in one step without a forward each; disabled for requests that return logprobs.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Optional, Sequence

import torch

from lmlang.runtime.protocol import SamplingParams


class GrammarBackend:
    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._compiler: Any = None
        self.words = (vocab_size + 31) // 32
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmlang-grammar")
        self.jump_forward_tokens = 0

    @property
    def compiler(self) -> Any:
        """The tokenizer's `GrammarCompiler`, built on first use (on the worker thread)."""
        if self._compiler is None:
            from lmlang.grammar import GrammarCompiler, TokenizerInfo

            self._compiler = GrammarCompiler(TokenizerInfo.from_huggingface(self.tokenizer, self.vocab_size))
        return self._compiler

    def compile_async(self, params: SamplingParams) -> concurrent.futures.Future:
        """Compiles the request's constraint off the scheduler thread; the future holds a matcher."""
        kind, source = params.constraint

        def build() -> Any:
            if kind == "json_schema":
                compiled = self.compiler.compile_json_schema(source, params.whitespace_pattern)
            else:
                compiled = self.compiler.compile(kind, source)
            return compiled.matcher()

        return self._worker.submit(build)

    def fill_async(self, reqs: Sequence[Any]) -> Optional[concurrent.futures.Future]:
        """Starts filling the batch's bitmask (None if no request is constrained)."""
        if not any(r.grammar is not None for r in reqs):
            return None
        return self._worker.submit(self.fill_bitmasks, list(reqs))

    def fill_bitmasks(self, reqs: Sequence[Any]) -> torch.Tensor:  # [batch, words] int32
        buf = torch.full((len(reqs), self.words), -1, dtype=torch.int32)
        for i, r in enumerate(reqs):
            if r.grammar is not None:
                r.grammar.fill_bitmask(buf, i)
        return buf

    def accept(self, req: Any, token: int) -> None:
        if not req.grammar.accept(token):
            raise RuntimeError(f"grammar rejected sampled token {token} for request {req.rid}")

    def forced_tokens(self, req: Any, budget: int) -> list:
        """Tokens for the text the grammar forces next (accepted into the matcher), at most `budget`."""
        if req.return_logprob or budget <= 0 or req.grammar.is_done():
            return []
        text = req.grammar.forced_text()
        if not text:
            return []
        ids = self.tokenizer.encode(text, add_special_tokens=False)[:budget]
        accepted = 0
        for t in ids:
            if not req.grammar.accept(t):
                break
            accepted += 1
        # only whole-text tokenizations are kept: a partial one could leave the boundary odd
        if accepted < len(ids) and accepted:
            req.grammar.rollback(accepted)
            return []
        self.jump_forward_tokens += accepted
        return ids[:accepted]

    def release(self, req: Any) -> None:
        req.grammar = None


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Disallowed tokens -> -inf in place: the Triton kernel on CUDA, plain torch elsewhere."""
    bitmask = bitmask.to(logits.device, non_blocking=True)
    if logits.is_cuda:
        from lmlang.kernels.bitmask import apply_token_bitmask_

        apply_token_bitmask_(logits, bitmask)
        return
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:, :, None] >> shifts) & 1).flatten(1)[:, : logits.shape[1]].bool()
    logits.masked_fill_(~allowed, float("-inf"))
