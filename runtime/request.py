"""A request as the scheduler tracks it inside the engine core."""

from __future__ import annotations

import time
from typing import Any, Optional

import torch

from lmlang.runtime.protocol import FinishReason, GenerateReq, SamplingParams


class Req:
    """One sequence being generated.

    `fill_ids` = prompt + output so far: the tokens whose KV the request needs. `slots` holds
    the KV slots of the first `num_computed` of them; the first `num_cached_owned` of those are
    owned by the prefix cache (locked through `last_node`), the rest by the request.
    """

    def __init__(self, msg: GenerateReq, params: SamplingParams, arrival: int) -> None:
        self.rid = msg.rid
        self.input_ids: list = list(msg.input_ids)
        self.params = params
        self.return_logprob = msg.return_logprob
        self.top_logprobs_num = msg.top_logprobs_num
        self.priority = msg.priority
        self.arrival = arrival
        self.output_ids: list = []
        # KV slots of positions 0..num_computed-1: a view of a buffer that grows by doubling, so a
        # decode step appends in place instead of copying the whole context (see `append_slots`)
        self._slot_buf = torch.empty(0, dtype=torch.int64)
        self._num_slots = 0
        self._own_buf = False  # whether _slot_buf is this request's own (writable in place)
        self.last_node: Any = None
        self.num_cached_owned = 0
        self.finished: Optional[FinishReason] = None
        self.cached_tokens = 0  # prompt tokens served from the prefix cache (first admission)
        self.admitted_once = False
        self.started_at: Optional[float] = None
        self.first_token_at: Optional[float] = None
        self.created_at = time.time()
        self.row: int = -1  # row in the request-to-slot table while running
        # logprobs
        start = msg.logprob_start_len
        self.logprob_start_len = -1 if not msg.return_logprob or start < 0 else min(start, len(self.input_ids))
        self.input_token_logprobs: list = []
        self.input_top_logprobs: list = []
        self.input_logprobs_sent = False
        self.new_output_logprobs: list = []
        self.new_output_top_logprobs: list = []
        self.sent_len = 0  # output tokens already sent to the front end
        self.generator: Optional[torch.Generator] = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self.grammar: Any = None  # a GrammarMatcher when the request is constrained
        self.forced_ids: list = []  # jump-forward tokens waiting to be appended
        self.retractions = 0

    @property
    def slots(self) -> torch.Tensor:
        """[num_computed] int64 KV slots (a view; positions beyond it may be written later)."""
        return self._slot_buf[: self._num_slots]

    @slots.setter
    def slots(self, value: torch.Tensor) -> None:
        # the tensor may be shared (e.g. with the prefix cache): never written in place; the next
        # append copies it into a buffer of this request's own
        self._slot_buf, self._num_slots = value, int(value.shape[0])
        self._own_buf = False

    def append_slots(self, new: torch.Tensor) -> None:
        """Appends slots for newly computed positions (amortized O(len(new)))."""
        n, k = self._num_slots, int(new.shape[0])
        if not self._own_buf or n + k > self._slot_buf.shape[0]:
            buf = torch.empty(max(2 * (n + k), 64), dtype=torch.int64)
            buf[:n] = self._slot_buf[:n]
            self._slot_buf, self._own_buf = buf, True
        self._slot_buf[n : n + k] = new
        self._num_slots = n + k

    @property
    def fill_ids(self) -> list:
        return self.input_ids + self.output_ids

    def fill_tail(self, start: int) -> list:
        """`fill_ids[start:]` without building the whole list."""
        num_input = len(self.input_ids)
        if start >= num_input:
            return self.output_ids[start - num_input :]
        return self.input_ids[start:] + self.output_ids

    @property
    def fill_len(self) -> int:
        """`len(fill_ids)` without building the list (the scheduler asks every step)."""
        return len(self.input_ids) + len(self.output_ids)

    @property
    def num_computed(self) -> int:
        return self._num_slots

    @property
    def needs_input_logprobs(self) -> bool:
        return self.logprob_start_len >= 0 and not self.input_logprobs_sent

    @property
    def max_prefix_match(self) -> int:
        """How much of `fill_ids` may come from the cache.

        At least the last token is always computed (its logits are needed), and prompt
        logprobs from `logprob_start_len` need the logits at positions start-1 onward.
        """
        limit = self.fill_len - 1
        if self.needs_input_logprobs and not self.output_ids:
            limit = min(limit, max(self.logprob_start_len - 1, 0))
        return max(limit, 0)

    def __repr__(self) -> str:
        return f"Req({self.rid}, prompt={len(self.input_ids)}, out={len(self.output_ids)}, computed={self.num_computed})"
