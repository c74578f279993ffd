"""benchmarks/grammar_soundness.py at a tiny limit: constrained outputs of the real token-mask
pipeline (GrammarCompiler, random logits), of the engine, and of a peer's masks parse and
validate on the test data; the validation worker's time limit."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "grammar_soundness.py"
_DATA = Path(os.environ.get("LMLANG_TEST_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
_NEEDS_DATA = pytest.mark.skipif(not (_DATA / "jsonschemabench").is_dir(), reason="test data not present")


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("grammar_soundness", _BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("grammar_soundness", module)
    spec.loader.exec_module(module)
    return module


@_NEEDS_DATA
def test_tiny_soundness_run_has_no_invalid_output(capsys):
    bench = _load_benchmark()
    results = bench.main(["--mode", "core", "--limit", "1", "--samples", "3", "--max-tokens", "400", "--data", str(_DATA)])
    out = capsys.readouterr().out
    assert "TOTAL" in out
    compiled = sum(s.regex + s.lark for s in results.values())
    assert compiled >= len(results) // 2
    assert sum(s.samples for s in results.values()) > 0
    assert all(s.invalid_outputs == 0 and s.invalid_instances_accepted == 0 for s in results.values()), out
    assert not any(s.errors for s in results.values()), out


def test_bench_split_names():
    bench = _load_benchmark()
    assert bench.bench_split("Github_easy---o123.json") == "Github_easy"
    assert bench.bench_split("BFCL_parallel_multiple_3.json") == "BFCL"
    assert bench.bench_split("JME_15.json") == "JME"
    assert bench.refusal_keyword("oneOf at #/oneOf: cannot prove ...") == "oneOf"
    assert bench.refusal_keyword("format 'ipv9' at #/format is not supported") == "format 'ipv9'"


@_NEEDS_DATA
def test_engine_mode_batches_a_schemas_samples_through_the_engine(capsys):
    bench = _load_benchmark()
    args = ["--mode", "engine", "--source", "suite", "--limit", "2", "--samples", "3", "--max-tokens", "300", "--concurrency", "2"]
    results = bench.main(args + ["--data", str(_DATA)])
    out = capsys.readouterr().out
    assert sum(s.compiled for s in results.values()) >= 2, out
    assert sum(s.samples + s.cut for s in results.values()) == 3 * sum(s.compiled for s in results.values())
    assert all(s.invalid_outputs == 0 and s.stuck == 0 and not s.errors for s in results.values()), out
    assert "| **total** |" in out


@_NEEDS_DATA
def test_peer_mode_runs_a_peer_in_its_worker(capsys):
    pytest.importorskip("llguidance")
    bench = _load_benchmark()
    results = bench.main(["--mode", "peer", "--engine", "llguidance", "--source", "suite", "--limit", "2", "--samples", "2",
                          "--max-tokens", "300", "--data", str(_DATA)])
    out = capsys.readouterr().out
    total = sum(s.compiled + sum(s.refused.values()) + s.timeouts for s in results.values())
    assert total == sum(s.schemas for s in results.values()) == 4, out
    assert sum(s.samples + s.cut for s in results.values()) > 0, out


def test_validation_past_its_time_limit_is_not_judged():
    _load_benchmark()
    from grammar_soundness_validate import ValidatorPool

    pool = ValidatorPool(timeout_s=1.0)
    try:
        schema = {"pattern": "^(a+)+$"}
        assert pool.validate("s", schema, '"aaa"') is True
        assert pool.validate("s", schema, "3") is True  # a pattern constrains strings only
        assert pool.validate("s", schema, '"a' + "a" * 40 + '!"') is None  # backtracks for ages
        assert pool.validate("s", schema, '"b"') is False  # a fresh worker, the schema sent again
        assert pool.validate("t", {"$ref": "https://example.invalid/x.json"}, "1").startswith("error")
    finally:
        pool.close()
