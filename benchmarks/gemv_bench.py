"""Decode-size linear layers: cuBLAS (`F.linear`) against lmlang's GEMV kernel, and its tuned table.

    python benchmarks/gemv_bench.py --out gemv.json [--m 1,2,4,8] [--shapes qkv,o,gate_up,down,lm_head]

For Llama-3.1-8B's weight shapes (qkv 4096->6144, o 4096->4096, gate_up 4096->28672, down
14336->4096, lm_head 4096->128256) and M rows of x, times cuBLAS and every candidate
`GemvConfig` as the model runs them: inside a CUDA graph, back to back over enough copies of the
weight (>= 1 GiB per replay, so nothing is served from the 50 MB L2), median per-call time over
replays. Each candidate is first checked against cuBLAS (relative error < 1e-2) on random data.
Rates are weight bytes / time, against the copy bandwidth measured in the same run
(`benchmarks/limits.py`). The fastest config per (shape, M) goes into the table written to
`--out` (`lmlang.kernels.gemv.parse_table` reads it), or null where cuBLAS is at least as fast:
point `LMLANG_GEMV_CONFIG` at it, or commit it as `kernels/configs/gemv_<device>.json`.
Prints the limits first and a table last.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from limits import measure_limits, print_limits, run_info  # noqa: E402

from lmlang.kernels.gemv import GemvConfig, gemv, table_key  # noqa: E402

SHAPES = {  # name -> (N, K) of the weight [N, K]
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
BYTES_PER_REPLAY = 1 << 30
FMA_MAX_M = 4  # the FMA path reads the weight strip once per row (through L2): not past this
FMA_TILES = [  # (block_n, block_k, num_warps, num_stages)
    (4, 512, 4, 1), (8, 256, 4, 1), (8, 512, 4, 1), (16, 256, 4, 1), (16, 512, 8, 1), (32, 256, 8, 1),
    (8, 512, 4, 3), (16, 256, 4, 3),
]
DOT_TILES = [(16, 256, 4, 4), (32, 256, 4, 4), (64, 128, 4, 4), (64, 256, 4, 3), (128, 128, 4, 4), (128, 128, 8, 3)]
MIN_GAIN = 0.01  # ours must beat cuBLAS by this fraction to enter the table (timing noise)


def split_choices(programs: int, k: int, block_k: int, sms: int) -> list:
    """1, and the smallest power-of-two split giving >= 4 programs per SM (>= 2 K steps each)."""
    split = 1
    while programs * split < 4 * sms and k // (block_k * split * 2) >= 1:
        split *= 2
    return sorted({1, split})


def candidates(n: int, k: int, m: int, sms: int) -> list:
    out = []
    for use_dot, tiles in ((False, FMA_TILES if m <= FMA_MAX_M else []), (True, DOT_TILES)):
        for bn, bk, warps, stages in tiles:
            programs = math.ceil(n / bn) * (1 if use_dot else m)
            for split in split_choices(programs, k, bk, sms):
                out.append(GemvConfig(block_n=bn, block_k=bk, split_k=split, use_dot=use_dot,
                                      num_warps=warps, num_stages=stages))
    return out


def time_per_call(fn, weights: list, reps: int) -> float:
    """Median seconds per call of fn(w) over a CUDA graph that calls it once per weight copy."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in weights[:2]:
            fn(w)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in weights:
            fn(w)
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(weights))
    del graph
    return statistics.median(times)


def config_name(cfg: GemvConfig | None) -> str:
    if cfg is None:
        return "cuBLAS"
    kind = "dot" if cfg.use_dot else "fma"
    return f"{kind} n{cfg.block_n} k{cfg.block_k} s{cfg.split_k} w{cfg.num_warps} st{cfg.num_stages}"


def bench_shape(name: str, n: int, k: int, ms: list, reps: int, copy_GBps: float, sms: int) -> list:
    wbytes = n * k * 2
    copies = max(2, math.ceil(BYTES_PER_REPLAY / wbytes))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    rows = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = F.linear(x, weights[0]).float()
        results = []
        for cfg in [None, *candidates(n, k, m, sms)]:
            fn = (lambda w, x=x: F.linear(x, w)) if cfg is None else (lambda w, x=x, cfg=cfg: gemv(x, w, None, cfg))
            t0 = time.perf_counter()
            try:
                out = fn(weights[0]).float()
                err = ((out - ref).norm() / ref.norm()).item()
                if not err < 1e-2:
                    print(f"  {name} M={m} {config_name(cfg)}: rel err {err:.2e}, skipped", flush=True)
                    continue
                first_s = time.perf_counter() - t0
                sec = time_per_call(fn, weights, reps)
            except Exception as exc:  # a config the compiler cannot build (e.g. out of shared memory)
                print(f"  {name} M={m} {config_name(cfg)}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            results.append(dict(config=None if cfg is None else cfg.to_json(), name=config_name(cfg), us=sec * 1e6,
                                TBps=wbytes / sec / 1e12, of_copy=wbytes / sec / 1e9 / copy_GBps, first_call_s=first_s))
        cublas = results[0]
        ours = min(results[1:], key=lambda r: r["us"]) if len(results) > 1 else None
        wins = ours is not None and ours["us"] < cublas["us"] * (1 - MIN_GAIN)
        rows.append(dict(shape=name, n=n, k=k, m=m, cublas=cublas, best=ours, use_ours=wins, all=results))
        print(f"{name:<8} M={m}: cuBLAS {cublas['us']:7.1f} us {cublas['of_copy']:6.1%}; best ours "
              + (f"{ours['us']:7.1f} us {ours['of_copy']:6.1%} ({ours['name']})" if ours else "none"), flush=True)
    del weights
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--m", default="1,2,4,8", help="row counts of x")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"any of {','.join(SHAPES)}")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gemv_bench.py needs a CUDA device")
    ms = [int(v) for v in args.m.split(",") if v]
    names = [s for s in args.shapes.split(",") if s]
    unknown = set(names) - set(SHAPES)
    if unknown or not ms or not all(1 <= m <= 8 for m in ms):
        sys.exit(f"unknown shapes {sorted(unknown)} or row counts {ms} outside 1..8")
    t_start = time.perf_counter()
    limits, info = measure_limits(rep_ms=100), run_info()
    print_limits(limits, info)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for name in names:
        rows += bench_shape(name, *SHAPES[name], ms, args.reps, limits["copy_GBps"], sms)
    shapes: dict = {}
    for r in rows:
        shapes.setdefault(table_key(r["n"], r["k"], torch.bfloat16), {})[str(r["m"])] = (
            r["best"]["config"] if r["use_ours"] else None)
    out = dict(device=info["device"], info=info, limits=limits, shapes=shapes, results=rows,
               seconds=time.perf_counter() - t_start)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\n== gemv {info['device']}  commit {info['commit']}  copy {limits['copy_GBps']:,.0f} GB/s  "
          f"({out['seconds']:.0f} s) ==")
    print(f"{'shape':<8} {'M':>2} {'cuBLAS us':>9} {'TB/s':>5} {'%copy':>6} {'ours us':>8} {'TB/s':>5} {'%copy':>6} "
          f"{'gain':>6}  best config")
    for r in rows:
        c, b = r["cublas"], r["best"]
        if b is None:
            print(f"{r['shape']:<8} {r['m']:>2} {c['us']:>9.1f} {c['TBps']:>5.2f} {c['of_copy']:>6.1%}  (no candidate ran)")
            continue
        print(f"{r['shape']:<8} {r['m']:>2} {c['us']:>9.1f} {c['TBps']:>5.2f} {c['of_copy']:>6.1%} {b['us']:>8.1f} "
              f"{b['TBps']:>5.2f} {b['of_copy']:>6.1%} {c['us'] / b['us']:>5.2f}x  {b['name']}"
              + ("" if r["use_ours"] else "  (cuBLAS kept)"))
    print(f"table -> {args.out}")


if __name__ == "__main__":
    main()
