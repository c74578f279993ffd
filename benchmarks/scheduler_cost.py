"""Scheduler cost at a full decode batch: host CPU time per step and the GPU's idle time between steps.

    python benchmarks/scheduler_cost.py --config benchmarks/configs/llama31_8b.json --out scheduler_cost.json
    python benchmarks/scheduler_cost.py --tiny --out /tmp/scheduler_cost.json      # CPU, a tiny checkpoint

Builds the engine core in-process (model runner + scheduler, as the engine core process does, without
the ZMQ loop) on a dummy-weight model, submits `--batch` streaming requests of `--ctx` random prompt
tokens (greedy, `ignore_eos`, long enough outputs) and, once every request is decoding, measures
`--steps` decode steps with overlap scheduling off, then on. Per mode, in separate windows:

- step: wall time per decode step (median), and tok/s at the batch;
- host CPU per step: `time.thread_time` of the scheduler thread over `Scheduler.step()` plus packing
  its stream outputs for the wire (`engine_core.pack`) — batch selection, batch build, attention
  planning, launches, sampling post-processing, stop checks, outputs. Measured with the CUDA context
  in blocking-sync mode (`cuCtxSetFlags`), so that waiting on the GPU sleeps instead of spinning and
  is not counted; `cpu_spin_ms` is the same figure in the default mode, where waits spin (on CPU
  the two are the same run). `detok_ms`: the front end's incremental detokenization of one step's
  tokens for every request (in the engine it runs in the front-end process, beside the core); the
  dummy model's ids are folded into the tokenizer's vocabulary so that each one decodes to text;
- GPU idle (CUDA only): torch.profiler's device timeline over the window (kernels, copies, memsets).
  Each step ends with one device-to-host copy (the sampled tokens); the idle time of a step is its
  period between consecutive such copies minus the time the device was busy in it. Reported:
  p50 / p99 of per-step idle and the idle fraction of the window.
Prints a table last; writes JSON to `--out`. About 2 minutes on an H200 for Llama-3.1-8B.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from lmlang.runtime.config import EngineConfig  # noqa: E402
from lmlang.runtime.engine_core import EngineCore, pack  # noqa: E402
from lmlang.runtime.protocol import GenerateReq  # noqa: E402
from lmlang.runtime.tokenizer import IncrementalDetokenizer  # noqa: E402

CU_CTX_SCHED_MASK = 0x07
CU_CTX_SCHED_BLOCKING_SYNC = 0x04


def percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


@contextlib.contextmanager
def blocking_sync(enabled: bool):
    """Puts the current CUDA context in blocking-sync mode (a waiting thread sleeps); yields whether
    it could (CUDA driver 12.1+), and restores the previous scheduling flags."""
    if not enabled:
        yield False
        return
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        get_flags, set_flags = driver.cuCtxGetFlags, driver.cuCtxSetFlags
    except (OSError, AttributeError):
        yield False
        return
    old = ctypes.c_uint(0)
    if get_flags(ctypes.byref(old)) != 0:
        yield False
        return
    new = (old.value & ~CU_CTX_SCHED_MASK) | CU_CTX_SCHED_BLOCKING_SYNC
    ok = set_flags(ctypes.c_uint(new)) == 0
    try:
        yield ok
    finally:
        if ok:
            set_flags(ctypes.c_uint(old.value))


class Driver:
    """The engine core's scheduler, driven step by step the way the core's loop drives it."""

    def __init__(self, core: EngineCore, vocab_text: int) -> None:
        self.core = core
        self.scheduler = core.scheduler
        self.cuda = core.runner.device.type == "cuda"
        self.vocab_text = vocab_text  # ids below this decode to text
        self.detok: dict = {}

    def submit(self, prompts: list, max_new_tokens: int) -> None:
        params = dict(max_new_tokens=max_new_tokens, temperature=0, ignore_eos=True)
        tokenizer = self.scheduler.stop_checker.tokenizer
        for i, ids in enumerate(prompts):
            rid = f"r{i}"
            assert self.core.handle(GenerateReq(rid=rid, input_ids=ids, sampling_params=params, stream=True)) == []
            self.detok[rid] = IncrementalDetokenizer(tokenizer)

    def fill(self, batch: int) -> int:
        """Steps until every request is decoding; returns the steps taken."""
        s, steps = self.scheduler, 0
        while s.waiting or s.chunked is not None or len(s.running) < batch:
            if not s.has_work():
                raise RuntimeError("requests finished before the batch filled: raise max_new_tokens")
            s.step()
            steps += 1
        return steps

    def step(self) -> tuple:
        """One scheduler step and its wire packing; returns (cpu s, wall s, outputs)."""
        c0, w0 = time.thread_time(), time.perf_counter()
        outputs = self.scheduler.step()
        if outputs:
            pack(outputs)
        return time.thread_time() - c0, time.perf_counter() - w0, outputs

    def detokenize(self, outputs: list) -> float:
        """Thread CPU seconds of the front end's incremental detokenization of `outputs`."""
        c0 = time.thread_time()
        for out in outputs:
            self.detok[out.rid].add([t % self.vocab_text for t in out.token_ids])
        return time.thread_time() - c0

    def window(self, steps: int) -> dict:
        """`steps` decode steps: per-step host CPU, wall and detokenization seconds."""
        counters = self.scheduler.counters
        decode0, overlapped0 = counters["decode_steps"], counters["overlapped_steps"]
        cpu, wall, detok = [], [], []
        for _ in range(steps):
            c, w, outputs = self.step()
            cpu.append(c)
            wall.append(w)
            detok.append(self.detokenize(outputs))
        if self.cuda:
            torch.cuda.synchronize()
        return dict(cpu=cpu, wall=wall, detok=detok, decode_steps=counters["decode_steps"] - decode0,
                    overlapped_steps=counters["overlapped_steps"] - overlapped0)


def gpu_idle(driver: Driver, steps: int) -> dict:
    """Per-step GPU idle time from torch.profiler's device timeline over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        driver.window(steps)
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    return idle_from_trace(events, steps)


def idle_from_trace(events: list, steps: int) -> dict:
    """Per-step idle time from a Chrome trace's device events (`ts`, `dur` in microseconds): a step
    ends with its device-to-host copy of the sampled tokens."""
    busy = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                  if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "ts" in e)
    marks = sorted(e["ts"] + e.get("dur", 0) for e in events
                   if e.get("cat") == "gpu_memcpy" and "DtoH" in e.get("name", ""))
    per_step = max(1, round(len(marks) / steps))  # device-to-host copies per step (1 expected)
    marks = marks[::per_step]
    merged: list = []
    for start, end in busy:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    idle, periods = [], []
    for lo, hi in zip(marks, marks[1:]):
        covered = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in merged if s < hi and e > lo)
        periods.append(hi - lo)
        idle.append(hi - lo - covered)
    return dict(
        device_events=len(busy), step_marks=len(marks), copies_per_step=per_step, steps=steps,
        idle_us=[round(x, 2) for x in idle],
        idle_p50_us=percentile(idle, 50), idle_p99_us=percentile(idle, 99),
        idle_fraction=sum(idle) / sum(periods) if periods else float("nan"),
        period_p50_us=percentile(periods, 50),
    )


def measure(driver: Driver, overlap: bool, steps: int, warmup: int) -> dict:
    s = driver.scheduler
    s.overlap = overlap
    driver.window(warmup)
    default = driver.window(steps)
    with blocking_sync(driver.cuda) as sleeping:
        blocking = driver.window(steps) if sleeping else default
    row = dict(
        overlap=overlap, batch=len(s.running), decode_steps=default["decode_steps"],
        step_ms=statistics.median(default["wall"]) * 1e3,
        cpu_ms=statistics.median(blocking["cpu"]) * 1e3,
        cpu_p99_ms=percentile(blocking["cpu"], 99) * 1e3,
        cpu_spin_ms=statistics.median(default["cpu"]) * 1e3,
        cpu_blocking_sync=sleeping,
        detok_ms=statistics.median(default["detok"]) * 1e3,
        overlapped_steps=default["overlapped_steps"],
    )
    row["tok_per_s"] = row["batch"] / row["step_ms"] * 1e3
    if driver.cuda:
        row["gpu"] = gpu_idle(driver, steps)
    return row


def build(args: argparse.Namespace) -> tuple:
    """(EngineCore, run info) for the dummy model (CUDA) or a tiny checkpoint (`--tiny`, CPU)."""
    tmp = tempfile.mkdtemp(prefix="lmlang-sched-cost-")
    steps_needed = 2 * (args.warmup + 3 * args.steps) + 64
    max_new = steps_needed + 64
    common = dict(max_running_requests=args.batch, chunked_prefill_size=args.chunked_prefill_size,
                  overlap_schedule=False, seed=0)
    if args.tiny:
        from lmlang.testing import make_tiny_checkpoint

        path = make_tiny_checkpoint(tmp, "llama")
        cfg = EngineConfig(path, device="cpu", dtype="float32",
                           max_total_tokens=args.batch * (args.ctx + max_new) + 1024, **common)
        info = dict(device="cpu", model="tiny llama", torch=torch.__version__)
    else:
        if not torch.cuda.is_available():
            sys.exit("scheduler_cost.py needs a CUDA device (or --tiny)")
        from dummy_checkpoint import make_dummy_checkpoint
        from limits import run_info

        path = make_dummy_checkpoint(args.config, tmp)
        cfg = EngineConfig(path, device="cuda", dtype="bfloat16", load_format="dummy",
                           cuda_graph_max_batch=args.batch, **common)
        info = run_info() | dict(model=pathlib.Path(args.config).stem)
    t0 = time.perf_counter()
    core = EngineCore(cfg)
    info["load_s"] = time.perf_counter() - t0
    return core, info, max_new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="benchmarks/configs/llama31_8b.json")
    parser.add_argument("--tiny", action="store_true", help="CPU run on a tiny checkpoint (no GPU figures)")
    parser.add_argument("--batch", type=int, default=None, help="decode batch (default 256; 32 with --tiny)")
    parser.add_argument("--ctx", type=int, default=None, help="prompt tokens (default 1024; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="steps per window (default 100; 20 with --tiny)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--chunked-prefill-size", type=int, default=16384)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.batch = args.batch or (32 if args.tiny else 256)
    args.ctx = args.ctx or (64 if args.tiny else 1024)
    args.steps = args.steps or (20 if args.tiny else 100)

    core, info, max_new = build(args)
    print(f"# {info}", flush=True)
    vocab = core.info.vocab_size
    rng = random.Random(0)
    prompts = [[rng.randrange(3, vocab) for _ in range(args.ctx)] for _ in range(args.batch)]
    driver = Driver(core, len(core.scheduler.stop_checker.tokenizer))
    driver.submit(prompts, max_new)
    t0 = time.perf_counter()
    fill_steps = driver.fill(args.batch)
    print(f"# {args.batch} requests of {args.ctx} tokens decoding after {fill_steps} steps, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    gc.collect()
    gc.freeze()  # as the engine core does after start-up
    rows = []
    for overlap in (False, True):  # off first: a running overlap chain continues by itself once started
        row = measure(driver, overlap, args.steps, args.warmup)
        rows.append(row)
        g = row.get("gpu", {})
        print(f"# overlap {'on' if overlap else 'off'}: {row['overlapped_steps']}/{row['decode_steps']} steps overlapped; "
              f"profiled {g.get('device_events', 0)} device events, {g.get('step_marks', 0)} step ends "
              f"({g.get('copies_per_step', '-')} device-to-host copies per step)", flush=True)
    result = dict(info=info, batch=args.batch, ctx=args.ctx, steps=args.steps, rows=rows)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2))

    if args.tiny:
        note = "CPU run: the scheduler thread's time includes its share of the model's compute"
    elif rows[0]["cpu_blocking_sync"]:
        note = "cpu: scheduler thread, GPU waits excluded (blocking sync)"
    else:
        note = "cpu: scheduler thread, GPU waits INCLUDED (blocking sync unavailable: waits spin)"
    print(f"\nbatch {args.batch}, ctx {args.ctx}, {args.steps} steps per window; {note}")
    print("| overlap | step ms | tok/s | cpu ms/step | cpu p99 | cpu (spin) | detok ms | idle p50 us | idle p99 us | idle % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        g = r.get("gpu")
        gpu = (f"{g['idle_p50_us']:.0f} | {g['idle_p99_us']:.0f} | {100 * g['idle_fraction']:.1f}" if g else "- | - | -")
        print(f"| {'on' if r['overlap'] else 'off'} | {r['step_ms']:.2f} | {r['tok_per_s']:,.0f} | {r['cpu_ms']:.2f} | "
              f"{r['cpu_p99_ms']:.2f} | {r['cpu_spin_ms']:.2f} | {r['detok_ms']:.2f} | {gpu} |")


if __name__ == "__main__":
    main()
