"""benchmarks/grammar_soundness.py at a tiny limit: constrained outputs of the real token-mask
pipeline (GrammarCompiler, random logits) parse and validate, on both test-data sources."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "grammar_soundness.py"
_DATA = Path(os.environ.get("LMLANG_TEST_DATA", "/work/shared/data"))


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("grammar_soundness", _BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("grammar_soundness", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (_DATA / "jsonschemabench").is_dir(), reason="test data not present")
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
