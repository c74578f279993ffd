"""Load test of `lmlang serve`: many concurrent streaming clients on loopback.

    python benchmarks/serve_load.py                       # 200 clients, a tiny model made on the fly
    python benchmarks/serve_load.py --model PATH --clients 500 --max-tokens 64
    python benchmarks/serve_load.py --url http://127.0.0.1:30000   # an already running server

Every client streams one `/v1/completions` request (SSE) with its own prompt. The run passes
when every stream ends with a finish reason and `[DONE]`, with no HTTP or stream error, and
the server goes back to idle afterwards: no running or queued request and no KV slot in use
(from `GET /stats`). It prints p50 / p99 of end-to-end latency and time to first token, and
the throughput. Exit status 0 on pass, 1 on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import httpx


@dataclass
class ClientResult:
    ok: bool
    e2e_s: float = 0.0
    ttft_s: float = 0.0
    tokens: int = 0
    error: str = ""


@dataclass
class LoadReport:
    results: list
    wall_s: float
    idle_stats: dict = field(default_factory=dict)
    idle: bool = False

    @property
    def errors(self) -> list:
        return [r.error for r in self.results if not r.ok]

    @property
    def passed(self) -> bool:
        return not self.errors and self.idle

    def summary(self) -> str:
        ok = [r for r in self.results if r.ok]
        lines = [f"clients: {len(self.results)}  completed: {len(ok)}  errors: {len(self.errors)}  "
                 f"wall: {self.wall_s:.2f}s"]
        if ok:
            e2e = sorted(r.e2e_s for r in ok)
            ttft = sorted(r.ttft_s for r in ok)
            tokens = sum(r.tokens for r in ok)
            for label, values in (("e2e latency", e2e), ("first token", ttft)):
                lines.append(f"{label:<13} p50 {percentile(values, 50) * 1e3:8.1f} ms   "
                             f"p99 {percentile(values, 99) * 1e3:8.1f} ms")
            lines.append(f"throughput    {tokens / self.wall_s:8.1f} generated tokens/s "
                         f"({statistics.mean(r.tokens for r in ok):.1f} tokens per request)")
        stats = self.idle_stats
        lines.append(f"after the run: running {stats.get('num_running')}  queued {stats.get('num_waiting')}  "
                     f"KV in use {stats.get('kv_in_use')}  -> {'idle' if self.idle else 'NOT IDLE'}")
        for error in sorted(set(self.errors))[:5]:
            lines.append(f"error: {error}")
        return "\n".join(lines)


def percentile(sorted_values: list, q: float) -> float:
    """The q-th percentile (nearest rank) of an ascending list."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def one_client(client: httpx.AsyncClient, index: int, max_tokens: int, model: str) -> ClientResult:
    body = {"model": model, "prompt": f"Request {index}: tell me about the number {index * 7919 % 1000}.",
            "max_tokens": max_tokens, "temperature": 0.7, "seed": index, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first: Optional[float] = None
    tokens, finish, done = 0, None, False
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return ClientResult(False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return ClientResult(False, error=f"stream error: {event['error'].get('message')}")
                if first is None:
                    first = time.perf_counter()
                for choice in event.get("choices", []):
                    finish = choice.get("finish_reason") or finish
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        return ClientResult(False, error=f"{type(exc).__name__}: {exc}")
    if not done or finish is None:
        return ClientResult(False, error=f"stream ended early (done={done}, finish_reason={finish})")
    end = time.perf_counter()
    return ClientResult(True, end - start, (first or end) - start, tokens)


async def wait_idle(client: httpx.AsyncClient, timeout: float) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        stats = (await client.get("/stats")).json()
        idle = stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["kv_in_use"] == 0
        if idle or time.monotonic() > deadline:
            return stats, idle
        await asyncio.sleep(0.1)


async def run_load(url: str, clients: int, max_tokens: int, api_key: Optional[str] = None) -> LoadReport:
    """Runs `clients` concurrent streaming requests against the server at `url`."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    timeout = httpx.Timeout(600.0, connect=60.0)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, i, max_tokens, model) for i in range(clients)))
        wall = time.perf_counter() - start
        stats, idle = await wait_idle(client, timeout=30.0)
    return LoadReport(list(results), wall, stats, idle)


@contextlib.contextmanager
def local_server(model: str, max_running_requests: int) -> Iterator[str]:
    """`lmlang serve` in a child process on a free loopback port; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "lmlang", "serve", "--model", model, "--port", str(port), "--log-level", "warning",
           "--max-running-requests", str(max_running_requests)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("lmlang serve did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description="Concurrent streaming clients against lmlang serve.")
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--model", help="checkpoint to serve (default: a tiny random Llama made on the fly)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-running-requests", type=int, default=128)
    parser.add_argument("--api-key", default=os.environ.get("LMLANG_API_KEY"))
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            model = args.model
            if model is None:
                from lmlang.testing import make_tiny_checkpoint

                model = make_tiny_checkpoint(stack.enter_context(tempfile.TemporaryDirectory()), "llama")
            url = stack.enter_context(local_server(model, args.max_running_requests))
        report = asyncio.run(run_load(url, args.clients, args.max_tokens, args.api_key))
    print(f"serve_load: {args.clients} streaming clients x {args.max_tokens} tokens; {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()} {os.cpu_count()} cpus, commit {_commit()}")
    print(report.summary())
    print("PASS" if report.passed else "FAIL")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
