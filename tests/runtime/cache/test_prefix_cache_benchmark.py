"""Acceptance 8 at tiny sizes: radix never prefills more than block, and strictly less when
siblings branch inside a block (the benchmark itself is benchmarks/prefix_cache.py)."""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _benchmark():
    name = "lmlang_benchmarks_prefix_cache"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "prefix_cache.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_radix_computes_no_more_than_block_and_less_on_branches():
    bench = _benchmark()
    results = bench.run_scenarios(bench.TINY)
    for scenario in bench.SCENARIOS:
        radix, block, none = (results[scenario, c] for c in ("radix", "block", "none"))
        assert radix.computed_tokens <= block.computed_tokens <= none.computed_tokens, scenario
        assert none.computed_tokens == none.prompt_tokens
    assert results["C agent", "radix"].computed_tokens < results["C agent", "block"].computed_tokens
    assert results["B chat", "radix"].hit_rate > 0.5
    assert results["A independent", "radix"].hit_rate == 0.0


def test_lookup_cost_is_measured_for_both_caches():
    bench = _benchmark()
    for cache_name in ("radix", "block"):
        us, mean_len = bench.lookup_cost_us(cache_name, bench.TINY)
        assert us > 0 and mean_len > bench.TINY.b_system
