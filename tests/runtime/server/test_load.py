"""Many concurrent streaming clients (benchmarks/serve_load.py's client, scaled down) all complete,
and the engine is idle afterwards."""

import asyncio
import importlib.util
import pathlib
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "benchmarks" / "serve_load.py"


def _serve_load():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_concurrent_streaming_clients_all_complete(server):
    report = asyncio.run(_serve_load().run_load(server.url, clients=48, max_tokens=12))
    assert report.errors == []
    assert len(report.results) == 48 and all(r.tokens == 12 for r in report.results)
    assert report.idle, report.idle_stats
    assert "p99" in report.summary()
