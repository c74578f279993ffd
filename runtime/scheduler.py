"""Continuous batching over the prefix cache: admission, chunked prefill, decode, retraction.

One `step()` runs one forward. Prefill has priority: if requests wait (or a chunked prefill is
in progress) and fit, the step is an extend batch of up to `chunked_prefill_size` new tokens;
otherwise it is a decode step over every running request.

KV pressure never crashes or deadlocks: admission reserves room for the running requests'
future tokens (`new_token_ratio` of what they may still generate); if decode still runs out of
slots, requests are retracted — their KV goes to the prefix cache as evictable, they return to
the waiting queue and later recompute whatever was evicted. A waiting request of higher priority
than some running one preempts it the same way when the batch or the pool is full.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Optional

import torch

from lmlang.runtime.cache.allocator import SlotAllocator
from lmlang.runtime.cache.base import MatchResult, create_prefix_cache
from lmlang.runtime.config import EngineConfig
from lmlang.runtime.forward_batch import ForwardMode
from lmlang.runtime.model_runner import ModelRunner, SeqChunk
from lmlang.runtime.protocol import FinishReason, GenerateReq, SamplingParams, TokenOut
from lmlang.runtime.request import Req
from lmlang.runtime.sampler import Sampler, top_logprobs_of
from lmlang.runtime.schedule_policy import create_policy
from lmlang.runtime.scheduler_control import SchedulerControl
from lmlang.runtime.stop import StopChecker

logger = logging.getLogger(__name__)

INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.2
NEW_TOKEN_RATIO_DECAY = 0.002


class Scheduler(SchedulerControl):
    def __init__(self, cfg: EngineConfig, runner: ModelRunner, stop_checker: StopChecker, vocab_size: int,
                 context_length: int, grammar_backend: Any = None) -> None:
        self.cfg = cfg
        self.runner = runner
        self.stop_checker = stop_checker
        self.context_length = context_length
        self.allocator = SlotAllocator(runner.num_slots, cfg.page_size)
        self.cache = create_prefix_cache(cfg.prefix_cache, self.allocator, cfg.page_size)
        self.policy = create_policy(cfg.schedule_policy)
        self.sampler = Sampler(vocab_size, stop_checker.eos_token_ids, cfg.seed)
        self.grammar_backend = grammar_backend
        self.waiting: list = []
        self.grammar_queue: list = []  # [(req, future of its matcher)] while grammars compile
        self.running: list = []
        self.chunked: Optional[Req] = None
        self.reqs: dict = {}
        self.arrivals = 0
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.pins: dict = {}
        self.next_pin = 1
        self.start_order: list = []
        self._pending_outputs: list = []
        # overlap: a decode step launched whose tokens are still on the device
        self.inflight: Optional[InflightDecode] = None
        self.overlap = cfg.overlap_schedule if cfg.overlap_schedule is not None else runner.device.type == "cuda"
        self.counters = dict(
            prefill_tokens_computed=0, cached_tokens_hit=0, forward_passes=0, decode_steps=0,
            max_decode_batch_size=0, retractions=0, preemptions=0, requests_finished=0,
            generated_tokens=0, prompt_tokens=0, overlapped_steps=0,
        )

    # ---- requests in and out -------------------------------------------------------------

    def add_request(self, msg: GenerateReq) -> Optional[TokenOut]:
        """Queues a request; returns an immediate abort output if it cannot be served."""
        try:
            params = SamplingParams.from_dict(msg.sampling_params)
            if not msg.input_ids:
                raise ValueError("prompt is empty")
            if len(msg.input_ids) >= self.context_length:
                raise ValueError(f"prompt has {len(msg.input_ids)} tokens; the context length is {self.context_length}")
        except ValueError as e:
            return self._reject(msg.rid, str(e))
        room = self.context_length - len(msg.input_ids)
        if params.max_new_tokens > room:
            params = params.replace(max_new_tokens=room, min_new_tokens=min(params.min_new_tokens, room))
        req = Req(msg, params, self.arrivals)
        req.stream = msg.stream
        self.arrivals += 1
        if params.constraint is not None:
            if self.grammar_backend is None:
                return self._reject(msg.rid, "constrained decoding (regex / json_schema / grammar) is unavailable")
            self.grammar_queue.append((req, self.grammar_backend.compile_async(params)))
        else:
            self.waiting.append(req)
        self.reqs[req.rid] = req
        self.counters["prompt_tokens"] += len(req.input_ids)
        return None

    @staticmethod
    def _reject(rid: str, message: str) -> TokenOut:
        reason = FinishReason("abort", message=message, invalid_request=True)
        return TokenOut(rid=rid, token_ids=[], finished=reason.to_dict())

    def _poll_grammars(self) -> list:
        """Moves requests whose grammar finished compiling to the waiting queue."""
        outputs, still = [], []
        for req, fut in self.grammar_queue:
            if not fut.done():
                still.append((req, fut))
                continue
            try:
                req.grammar = fut.result()
                self.waiting.append(req)
            except ValueError as e:
                self.reqs.pop(req.rid, None)
                outputs.append(self._reject(req.rid, str(e)))
        self.grammar_queue = still
        return outputs

    def abort(self, rid: str) -> Optional[TokenOut]:
        req = self.reqs.get(rid)
        if req is None:
            return None
        if req in self.waiting:
            self.waiting.remove(req)
        self.grammar_queue = [(r, f) for r, f in self.grammar_queue if r is not req]
        if req in self.running:
            self.running.remove(req)
        if self.chunked is req:
            self.chunked = None
        req.finished = FinishReason("abort", message="aborted")
        self._release(req)
        return self._output(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked or self.grammar_queue or self.inflight)

    # ---- one step ------------------------------------------------------------------------

    def step(self) -> list:
        """Runs at most one forward (two with overlap); returns the outputs for the front end."""
        if self.inflight is not None:
            outputs = self._advance_chain()
        else:
            if self.grammar_queue:
                self._pending_outputs.extend(self._poll_grammars())
            batch = self._schedule_extend()
            if batch:
                outputs = self._run_extend(batch)
            elif self.running:
                outputs = self._run_decode()
            else:
                outputs = []
        outputs, self._pending_outputs = self._pending_outputs + outputs, []
        return outputs

    # ---- admission -----------------------------------------------------------------------

    def _alloc(self, n: int, last_slot: Optional[int]) -> Optional[torch.Tensor]:
        if n == 0:
            return torch.empty(0, dtype=torch.int64)
        short = n + self.cfg.page_size - self.allocator.available()
        if short > 0:
            self.cache.evict(short)
        return self.allocator.alloc(n, last_slot)

    def _alloc_decode(self, batch: list, counts: list) -> list:
        """Slots for `counts[i]` new positions of each running request (room ensured by
        `_ensure_decode_room`); with one-slot pages, one allocation for the whole batch."""
        if self.cfg.page_size == 1:
            return list(torch.split(self._alloc(sum(counts), None), counts))
        return [self._alloc(n, self._own_last_slot(req)) for req, n in zip(batch, counts)]

    def _own_last_slot(self, req: Req) -> Optional[int]:
        return int(req.slots[-1]) if req.num_computed > req.num_cached_owned else None

    def _headroom(self) -> int:
        """Slots free or evictable, minus what running requests are expected to still need."""
        reserve = sum(
            min(r.params.max_new_tokens - len(r.output_ids), 4096) * self.new_token_ratio for r in self.running
        )
        if self.chunked is not None:
            reserve += (self.chunked.fill_len - self.chunked.num_computed) + self.chunked.params.max_new_tokens * self.new_token_ratio
        return int(self.allocator.available() + self.cache.evictable_size() - reserve)

    def _match(self, req: Req) -> MatchResult:
        return self.cache.match_prefix(req.fill_ids[: req.max_prefix_match])

    def _schedule_extend(self) -> list:
        """Picks the extend batch: [(req, SeqChunk)], the in-progress chunked request first."""
        budget = self.cfg.chunked_prefill_size
        batch: list = []
        if self.chunked is not None:
            req = self.chunked
            n = min(budget, req.fill_len - req.num_computed)
            slots = self._alloc(n, self._own_last_slot(req))
            if slots is None:
                return []
            prefix = req.num_computed
            req.append_slots(slots)
            batch.append((req, SeqChunk(req.fill_ids, prefix, prefix + n, req.slots)))
            budget -= n
            if req.num_computed < req.fill_len:
                return batch
            self.chunked = None
        if not self.waiting or budget <= 0:
            return batch
        matches: dict = {}

        def match_len(r: Req) -> int:
            if r.rid not in matches:
                matches[r.rid] = self._match(r)
            return matches[r.rid].length

        ordered = self.policy.order(self.waiting, match_len)
        self._preempt_for(ordered[0], match_len)
        reserved = 0.0
        for req in ordered:
            if budget <= 0 or self.chunked is not None:
                break
            if len(self.running) + len(batch) >= self.cfg.max_running_requests:
                break
            # match again: an allocation above may have evicted what the ordering pass matched
            m = self._match(req)
            if self._shares_uncached_prefix(req, m.length, [c for _, c in batch]):
                continue  # in-batch prefix sharing: reuse the other request's prefill next round
            need = req.fill_len - m.length
            n = min(need, budget)
            if (self.running or batch) and n + reserved > self._headroom():
                break
            self.cache.lock(m.node)
            slots = self._alloc(n, None)
            if slots is None:
                self.cache.unlock(m.node)
                break
            self.waiting.remove(req)
            req.slots = torch.cat([m.slots, slots])
            req.last_node = m.node
            req.num_cached_owned = m.length
            self.counters["cached_tokens_hit"] += m.length
            if not req.admitted_once:
                req.admitted_once = True
                req.cached_tokens = m.length
                req.started_at = time.time()
                self.start_order.append(req.rid)
            batch.append((req, SeqChunk(req.fill_ids, m.length, m.length + n, req.slots)))
            reserved += (need - n) + req.params.max_new_tokens * self.new_token_ratio
            budget -= n
            if n < need:
                self.chunked = req
        return batch

    def _shares_uncached_prefix(self, req: Req, matched: int, chunks: list) -> bool:
        """Whether `req` shares >= min_shared_prefix uncached tokens with a chunk being prefilled."""
        if self.cfg.prefix_cache == "none":
            return False  # nothing would be reused: waiting only delays it
        ids = req.fill_ids
        for chunk in chunks:
            other = chunk.token_ids
            limit = min(len(ids) - 1, len(other))
            common = matched
            while common < limit and ids[common] == other[common]:
                common += 1
            if common - matched >= self.cfg.min_shared_prefix:
                return True
        return False

    def _preempt_for(self, head: Req, match_len) -> None:
        """Retracts lower-priority running requests while `head` cannot be admitted."""
        def blocked() -> bool:
            need = head.fill_len - match_len(head)
            full = len(self.running) >= self.cfg.max_running_requests
            return full or min(need, self.cfg.chunked_prefill_size) > self._headroom()

        while self.running and blocked():
            victim = min(self.running, key=lambda r: (r.priority, -r.arrival))
            if victim.priority >= head.priority:
                return
            self.running.remove(victim)
            self._retract(victim)
            self.counters["preemptions"] += 1

    # ---- forwards ------------------------------------------------------------------------

    def _run_extend(self, batch: list) -> list:
        reqs = [r for r, _ in batch]
        seqs = [c for _, c in batch]
        rows, sample_rows, lp_rows = [], [], []
        offset = 0
        for req, s in zip(reqs, seqs):
            n_new = s.seq_len - s.prefix_len
            if req.needs_input_logprobs:
                lo = max(s.prefix_len, max(req.logprob_start_len, 1) - 1)
                hi = min(s.seq_len, len(req.input_ids) - 1)
                positions = list(range(lo, hi))
                lp_rows.append((req, positions, len(rows)))
                rows.extend(offset + p - s.prefix_len for p in positions)
            if s.seq_len == req.fill_len:
                sample_rows.append((req, len(rows)))
                rows.append(offset + n_new - 1)
            offset += n_new
            self.counters["prefill_tokens_computed"] += n_new
        to_sample = [(r, i) for r, i in sample_rows if len(r.output_ids) < r.params.max_new_tokens]
        masks = self._start_masks([r for r, _ in to_sample])
        logits = self.runner.forward(ForwardMode.EXTEND, seqs, rows)
        self.counters["forward_passes"] += 1
        for req, positions, start in lp_rows:
            self._collect_input_logprobs(req, positions, logits[start : start + len(positions)])
        done_prefill = {id(r) for r, _ in sample_rows}
        for req, s in zip(reqs, seqs):
            if id(req) not in done_prefill:
                self._cache_progress(req, s.seq_len)
        outputs = []
        for req, _ in sample_rows:
            if len(req.output_ids) >= req.params.max_new_tokens:
                req.finished = FinishReason("length")  # max_new_tokens == 0: prompt logprobs only
        if to_sample:
            idx = torch.tensor([i for _, i in to_sample], dtype=torch.long, device=logits.device)
            self._sample_and_append([r for r, _ in to_sample], logits.index_select(0, idx), masks)
        for req, _ in sample_rows:
            if req.finished is not None:
                self._release(req)
            else:
                self._cache_progress(req, req.num_computed)
                self.running.append(req)
            outputs.append(self._output(req))
        return [o for o in outputs if o is not None]

    def _run_decode(self) -> list:
        """One step for every running request: its pending tokens (1, or more after a jump-forward)."""
        self._ensure_decode_room()
        if not self.running:
            return []
        batch = list(self.running)
        if self.overlap and self._chainable(batch):
            self.inflight = self._launch_decode(batch)
            return []
        seqs = []
        pendings = [req.fill_len - req.num_computed for req in batch]
        for req, pending, slots in zip(batch, pendings, self._alloc_decode(batch, pendings)):
            n = req.num_computed
            req.append_slots(slots)
            seqs.append(SeqChunk(req.fill_tail(n), n, n + pending, req.slots, ids_offset=n))
        lens = [c.seq_len - c.prefix_len for c in seqs]
        rows = list(itertools.accumulate(lens, initial=-1))[1:] if max(lens) > 1 else list(range(len(seqs)))
        mode = ForwardMode.DECODE if max(lens) == 1 else ForwardMode.EXTEND
        masks = self._start_masks(batch)
        logits = self.runner.forward(mode, seqs, rows)
        self._count_decode(len(batch))
        self._sample_and_append(batch, logits, masks)
        return self._finish_step(batch)

    def _count_decode(self, batch_size: int) -> None:
        self.counters["forward_passes"] += 1
        self.counters["decode_steps"] += 1
        self.counters["max_decode_batch_size"] = max(self.counters["max_decode_batch_size"], batch_size)
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)

    def _finish_step(self, batch: list) -> list:
        outputs = []
        for req in batch:
            if req.finished is not None:
                self.running.remove(req)
                self._release(req)
            outputs.append(self._output(req))
        return [o for o in outputs if o is not None]

    # ---- overlap: decode step N + 1 runs on the device while the host finishes step N ----

    def _chainable(self, batch: list, ahead: int = 0) -> bool:
        """Whether a decode step for `batch` may be launched before the host has its inputs.

        `ahead` is the number of tokens per request still on the device (0 or 1). Only plain
        decode qualifies: nothing waiting to be admitted, one pending token per request, sampling
        that needs no host-side state (no grammar, penalties, seeds, logprobs, min_new_tokens
        still to enforce), no request about to reach max_new_tokens, and a free slot for each.
        """
        if self.waiting or self.chunked is not None or self.grammar_queue:
            return False
        for r in batch:
            p = r.params
            produced = len(r.output_ids) + ahead  # tokens before the one this step samples
            if (r.grammar is not None or r.return_logprob or p.seed is not None or p.repetition_penalty != 1.0
                    or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
                    or produced < p.min_new_tokens or produced + 1 >= p.max_new_tokens
                    or r.fill_len + ahead - r.num_computed != 1):
                return False
        need = len(batch) * self.cfg.page_size
        return self.allocator.available() + self.cache.evictable_size() >= need

    def _launch_decode(self, batch: list, input_ids: Optional[torch.Tensor] = None) -> "InflightDecode":
        """Enqueues a decode step without waiting for it. With `input_ids` (the in-flight step's
        tokens, on the device) each request's last token is not on the host yet."""
        seqs = []
        for req, slots in zip(batch, self._alloc_decode(batch, [1] * len(batch))):
            n = req.num_computed
            req.append_slots(slots)
            ids = req.fill_tail(n) if input_ids is None else [0]  # placeholder, set on device
            seqs.append(SeqChunk(ids, n, n + 1, req.slots, ids_offset=n))
        logits = self.runner.forward(ForwardMode.DECODE, seqs, list(range(len(seqs))), input_ids=input_ids)
        self._count_decode(len(batch))
        tokens = self.sampler.sample_on_device(logits, batch)  # [batch] on the device
        return InflightDecode(batch, tokens)

    def _advance_chain(self) -> list:
        """Launches decode step N + 1 on step N's device tokens if it can, then completes N."""
        current, self.inflight = self.inflight, None
        done_before = {id(r) for r in current.reqs if r.finished is not None}  # aborted meanwhile
        live = [r for r in current.reqs if id(r) not in done_before]
        if live and self._chainable(live, ahead=1):
            self.inflight = self._launch_decode(live, current.tokens_for(live))
            self.counters["overlapped_steps"] += 1
        for req, token in zip(current.reqs, current.host_tokens()):
            if id(req) in done_before:
                continue  # its token is dropped
            if not req.output_ids:
                req.first_token_at = time.time()
            req.output_ids.append(token)
            self.counters["generated_tokens"] += 1
            req.finished = self.stop_checker.check(req)
        # a request that ends here may still be in step N + 1: its token there is dropped then
        return self._finish_step([r for r in current.reqs if id(r) not in done_before])

    def _ensure_decode_room(self) -> None:
        """Retracts requests until every running request can get one more slot."""
        while self.running:
            need = sum(r.fill_len - r.num_computed for r in self.running) + len(self.running) * (self.cfg.page_size - 1)
            if self.allocator.available() + self.cache.evictable_size() >= need:
                return
            if len(self.running) == 1:
                req = self.running.pop()
                req.finished = FinishReason("length", message="KV cache too small for this request")
                self._release(req)
                self._pending_outputs.append(self._output(req))
                return
            victim = min(self.running, key=lambda r: (r.priority, -r.arrival))
            self.running.remove(victim)
            self._retract(victim)
            self.new_token_ratio = 1.0

    def _retract(self, req: Req) -> None:
        self.cache.cache_finished(req.fill_ids[: req.num_computed], req.slots, req.last_node)
        req.slots = torch.empty(0, dtype=torch.int64)
        req.last_node = None
        req.num_cached_owned = 0
        req.retractions += 1
        self.counters["retractions"] += 1
        self.waiting.append(req)

    # ---- sampling and results ------------------------------------------------------------

    def _start_masks(self, reqs: list) -> Any:
        return self.grammar_backend.fill_async(reqs) if self.grammar_backend is not None else None

    def _sample_and_append(self, reqs: list, logits: torch.Tensor, masks: Any = None) -> None:
        bitmask = masks.result() if masks is not None else None
        out = self.sampler.sample(logits, reqs, bitmask)
        for i, req in enumerate(reqs):
            token = out.token_ids[i]
            if not req.output_ids:
                req.first_token_at = time.time()
            req.output_ids.append(token)
            if req.return_logprob:
                req.new_output_logprobs.append((out.logprobs[i], token))
                req.new_output_top_logprobs.append(out.top_logprobs[i])
            self.counters["generated_tokens"] += 1
            if req.grammar is not None:
                self.grammar_backend.accept(req, token)
            req.finished = self.stop_checker.check(req)
            if req.grammar is not None and req.finished is None:
                self._jump_forward(req)

    def _jump_forward(self, req: Req) -> None:
        """Appends the tokens the grammar forces next (already accepted by the matcher)."""
        forced = self.grammar_backend.forced_tokens(req, req.params.max_new_tokens - len(req.output_ids))
        if forced:
            req.output_ids.extend(forced)
            self.counters["generated_tokens"] += len(forced)
            req.finished = self.stop_checker.check(req)

    def _collect_input_logprobs(self, req: Req, positions: list, logits: torch.Tensor) -> None:
        if req.logprob_start_len == 0 and not req.input_token_logprobs:
            req.input_token_logprobs.append((None, req.input_ids[0]))
            req.input_top_logprobs.append(None)
        if not positions:
            return
        lps = torch.log_softmax(logits.float(), dim=-1)
        targets = torch.tensor([req.input_ids[p + 1] for p in positions], dtype=torch.long, device=lps.device)
        chosen = lps.gather(1, targets.view(-1, 1)).view(-1).tolist()
        for j, p in enumerate(positions):
            req.input_token_logprobs.append((chosen[j], req.input_ids[p + 1]))
            req.input_top_logprobs.append(top_logprobs_of(lps[j], req.top_logprobs_num))

    def _cache_progress(self, req: Req, num_tokens: int) -> None:
        """Hands the computed prefix to the cache (in-batch sharing and pins rely on it)."""
        result = self.cache.cache_unfinished(req.fill_ids[:num_tokens], req.slots[:num_tokens], req.last_node)
        req.slots = torch.cat([result.slots, req.slots[num_tokens:]])
        req.last_node = result.node
        req.num_cached_owned = self.cache.cached_length(result.node)

    def _release(self, req: Req) -> None:
        if req.num_computed or req.last_node is not None:
            self.cache.cache_finished(req.fill_ids[: req.num_computed], req.slots, req.last_node)
        req.slots = torch.empty(0, dtype=torch.int64)
        req.last_node = None
        req.num_cached_owned = 0
        self.reqs.pop(req.rid, None)
        if req.grammar is not None:
            self.grammar_backend.release(req)
        self.counters["requests_finished"] += 1

    def _output(self, req: Req) -> Optional[TokenOut]:
        finished = req.finished is not None
        if not finished and not getattr(req, "stream", False):
            return None
        new = req.output_ids[req.sent_len :]
        out = TokenOut(
            rid=req.rid,
            token_ids=new,
            finished=req.finished.to_dict() if finished else None,
            prompt_tokens=len(req.input_ids),
            cached_tokens=req.cached_tokens,
            completion_tokens=len(req.output_ids),
            started_at=req.started_at,
            first_token_at=req.first_token_at,
        )
        if req.return_logprob:
            out.output_token_logprobs = req.new_output_logprobs
            out.output_top_logprobs = req.new_output_top_logprobs
            req.new_output_logprobs, req.new_output_top_logprobs = [], []
            if not req.input_logprobs_sent and req.logprob_start_len >= 0 and (finished or req.output_ids):
                out.input_token_logprobs = req.input_token_logprobs
                out.input_top_logprobs = req.input_top_logprobs
                req.input_logprobs_sent = True
        req.sent_len = len(req.output_ids)
        return out


class InflightDecode:
    """A launched decode step: its requests and its sampled tokens, on the device."""

    def __init__(self, reqs: list, tokens: torch.Tensor) -> None:
        self.reqs = reqs
        self.tokens = tokens  # [batch] int64 on the device
        self._host = tokens.to("cpu", non_blocking=True)
        self._event = _record_event(tokens)

    def tokens_for(self, reqs: list) -> torch.Tensor:
        """The device tokens of `reqs` (a subsequence of this step's requests), in their order."""
        if len(reqs) == len(self.reqs):
            return self.tokens
        index = {id(r): i for i, r in enumerate(self.reqs)}
        rows = torch.tensor([index[id(r)] for r in reqs], dtype=torch.long, device=self.tokens.device)
        return self.tokens.index_select(0, rows)

    def host_tokens(self) -> list:
        """The tokens on the host; waits for the step (and its copy) to finish."""
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()


def _record_event(t: torch.Tensor) -> Any:
    if not t.is_cuda:
        return None
    event = torch.cuda.Event()
    event.record()
    return event
