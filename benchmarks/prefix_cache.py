"""Acceptance 8: prompt tokens each prefix cache saves, and the CPU cost of one lookup.

    python benchmarks/prefix_cache.py [--tiny]

Simulates, at the cache level, the lifecycle the scheduler gives every request: match the prompt
(all but its last token, which is always computed for its logits), lock the match, allocate slots
for the rest, hand the prompt to the cache after its prefill (`cache_unfinished`), allocate the
output's slots, and `cache_finished` on prompt + output. Requests of a wave are prefilled one
after another and then decode together, so a wave's later requests can reuse an earlier one's
prompt. Three workloads, the same token streams for every cache:

  A  independent long prompts, no sharing (enough of them that the pool must evict);
  B  a linear multi-turn chat: each turn's prompt = previous prompt + previous answer + a new
     user message;
  C  agent/tool branching: siblings = a long shared prefix + a few distinct tokens, for several
     rounds; the next round's prefix extends the first sibling's prompt + answer with a tool result.

Prints, for `radix`, `block` and `none`, the prefill tokens computed (prompt tokens not matched)
and the hit rate, then the median CPU time of one `match_prefix` over scenario B's prompts with
the cache holding the whole chat. `run_scenarios` and `lookup_cost_us` are what a test calls.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

import torch

from lmlang.runtime.cache.allocator import SlotAllocator
from lmlang.runtime.cache.base import PrefixCache, create_prefix_cache

CACHES = ("radix", "block", "none")
VOCAB = 32000


@dataclass(frozen=True)
class Scale:
    num_slots: int  # KV pool size, in tokens
    a_prompts: int  # A: independent prompts ...
    a_len: int  # ... of this many tokens, in waves of `a_wave`
    a_wave: int
    b_turns: int  # B: chat turns
    b_system: int  # system prompt tokens
    b_user: int  # tokens per user message
    b_answer: int  # tokens per answer
    c_prefix: int  # C: first shared prefix
    c_siblings: int  # branches per round
    c_branch: int  # distinct tokens per branch
    c_rounds: int
    c_answer: int  # tokens each branch generates
    c_tool: int  # tool-result tokens appended before the next round
    lookup_rounds: int  # passes over B's prompts when timing match_prefix


FULL = Scale(num_slots=65536, a_prompts=48, a_len=2048, a_wave=8, b_turns=24, b_system=251, b_user=57,
             b_answer=187, c_prefix=1000, c_siblings=8, c_branch=5, c_rounds=6, c_answer=24, c_tool=40,
             lookup_rounds=200)
TINY = Scale(num_slots=2048, a_prompts=6, a_len=64, a_wave=2, b_turns=4, b_system=20, b_user=7, b_answer=9,
             c_prefix=40, c_siblings=3, c_branch=3, c_rounds=2, c_answer=5, c_tool=6, lookup_rounds=3)


@dataclass
class Stats:
    prompt_tokens: int = 0
    computed_tokens: int = 0  # prompt tokens prefilled (not matched in the cache)

    @property
    def hit_rate(self) -> float:
        return 1.0 - self.computed_tokens / max(self.prompt_tokens, 1)


Wave = list  # [(prompt tokens, output tokens)], prefilled in order, then decoded together


def _tokens(rng: random.Random, n: int) -> list:
    return [rng.randrange(VOCAB) for _ in range(n)]


def scenario_independent(s: Scale, rng: random.Random) -> list:
    reqs = [(_tokens(rng, s.a_len), _tokens(rng, 16)) for _ in range(s.a_prompts)]
    return [reqs[i : i + s.a_wave] for i in range(0, len(reqs), s.a_wave)]


def scenario_chat(s: Scale, rng: random.Random) -> list:
    waves = []
    context = _tokens(rng, s.b_system)
    for _ in range(s.b_turns):
        prompt = context + _tokens(rng, s.b_user)
        answer = _tokens(rng, s.b_answer)
        waves.append([(prompt, answer)])
        context = prompt + answer
    return waves


def scenario_agent(s: Scale, rng: random.Random) -> list:
    waves = []
    prefix = _tokens(rng, s.c_prefix)
    for _ in range(s.c_rounds):
        wave = [(prefix + _tokens(rng, s.c_branch), _tokens(rng, s.c_answer)) for _ in range(s.c_siblings)]
        waves.append(wave)
        prompt, answer = wave[0]
        prefix = prompt + answer + _tokens(rng, s.c_tool)
    return waves


SCENARIOS = {"A independent": scenario_independent, "B chat": scenario_chat, "C agent": scenario_agent}


def _alloc(alloc: SlotAllocator, cache: PrefixCache, n: int, last_slot: int | None) -> torch.Tensor:
    slots = alloc.alloc(n, last_slot)
    if slots is None:
        cache.evict(n)
        slots = alloc.alloc(n, last_slot)
    if slots is None:
        raise RuntimeError(f"KV pool too small: {n} slots needed, {alloc.available()} free")
    return slots


def simulate(cache_name: str, waves: list, num_slots: int) -> tuple[Stats, PrefixCache]:
    """Runs `waves` through a fresh cache; returns the counts and the cache (holding what it kept)."""
    alloc = SlotAllocator(num_slots)
    cache = create_prefix_cache(cache_name, alloc)
    stats = Stats()
    for wave in waves:
        prefilled = []
        for prompt, output in wave:
            m = cache.match_prefix(prompt[:-1])
            cache.lock(m.node)
            own = _alloc(alloc, cache, len(prompt) - m.length, None)
            stats.prompt_tokens += len(prompt)
            stats.computed_tokens += len(prompt) - m.length
            prefilled.append(cache.cache_unfinished(prompt, torch.cat([m.slots, own]), m.node))
        for (prompt, output), r in zip(wave, prefilled):
            own = _alloc(alloc, cache, len(output), int(r.slots[-1]))
            cache.cache_finished(prompt + output, torch.cat([r.slots, own]), r.node)
        if alloc.available() + cache.evictable_size() + cache.protected_size() != alloc.total:
            raise AssertionError(f"{cache_name}: KV accounting broken")
    return stats, cache


def run_scenarios(scale: Scale = FULL, seed: int = 0) -> dict:
    """{(scenario, cache name): Stats} over the same token streams for every cache."""
    results = {}
    for name, make in SCENARIOS.items():
        waves = make(scale, random.Random(seed))
        for cache_name in CACHES:
            results[name, cache_name] = simulate(cache_name, waves, scale.num_slots)[0]
    return results


def lookup_cost_us(cache_name: str, scale: Scale = FULL, seed: int = 0) -> tuple[float, int]:
    """Median µs of one `match_prefix` over scenario B's prompts, the cache holding the whole
    chat; also the mean prompt length. The prompts are rebuilt through a tensor so that, as for a
    request from the tokenizer, their ints are not the very objects the cache stored."""
    waves = scenario_chat(scale, random.Random(seed))
    _, cache = simulate(cache_name, waves, scale.num_slots)
    prompts = [torch.tensor(wave[0][0]).tolist() for wave in waves]
    times = []
    for _ in range(scale.lookup_rounds):
        for prompt in prompts:
            t0 = time.perf_counter_ns()
            cache.match_prefix(prompt)
            times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000, sum(map(len, prompts)) // len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the test's small sizes")
    args = parser.parse_args()
    scale = TINY if args.tiny else FULL
    results = run_scenarios(scale)
    print(f"{'scenario':<15}{'cache':<7}{'prompt tok':>12}{'computed':>11}{'hit rate':>10}")
    for (scenario, cache_name), st in results.items():
        print(f"{scenario:<15}{cache_name:<7}{st.prompt_tokens:>12}{st.computed_tokens:>11}{st.hit_rate:>10.1%}")
    radix_us, mean_len = lookup_cost_us("radix", scale)
    block_us, _ = lookup_cost_us("block", scale)
    print(f"match_prefix on B's prompts (mean {mean_len} tokens, median over "
          f"{scale.lookup_rounds * scale.b_turns} calls): radix {radix_us:.1f} µs, block {block_us:.1f} µs "
          f"(block / radix = {block_us / radix_us:.1f}x)")


if __name__ == "__main__":
    main()
