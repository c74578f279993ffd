"""Decode-size linear layers: cuBLAS (`F.linear`) against lmlang's GEMV kernel, its tuned table,
and what PDL and the fused inputs buy.

    python benchmarks/gemv_bench.py --out gemv.json [--m 1,2,4,8] [--shapes qkv,o,gate_up,down,lm_head]
                                    [--sections tune,fused,chain] [--chain-layers 8] [--tuned earlier.json]
    python benchmarks/gemv_bench.py --fp8 --out gemv_fp8.json [--m 1,2,4,8] [--fp8-shapes v3.q_kv_a,...]
                                    [--fp8-merge kernels/configs/gemv_fp8_<device>.json]

`--fp8` tunes the W8A16 FP8 GEMV on DeepSeek's shapes instead (see `gemv_fp8_tune.py`).

Every time is taken as the model runs the kernels: inside a CUDA graph, back to back over enough
copies of the weights (>= 1 GiB and >= 4 copies per replay, so nothing is served from the 50 MB
L2), median per-call time over replays. Rates are weight bytes / time, against the copy
bandwidth measured in the same run (`benchmarks/limits.py`). Sections:
- tune: for Llama-3.1-8B's weight shapes (qkv 4096->6144, o 4096->4096, gate_up 4096->28672,
  down 14336->4096, lm_head 4096->128256) and M rows of x, times cuBLAS and every candidate
  `GemvConfig` (each first checked against cuBLAS, relative error < 1e-2) with programmatic
  dependent launch on, then the fastest config again with PDL off (`$LMLANG_PDL=0`). The fastest
  config per (shape, M) goes into the table written to `--out` (`lmlang.kernels.gemv.parse_table`
  reads it), or null where cuBLAS is at least as fast, and the fastest config regardless into its
  `ours` map (`fused_gemv_config`: for gated / normalized inputs); point `LMLANG_GEMV_CONFIG` at
  it, or commit it as `kernels/configs/gemv_<device>.json`.
- fused: the down projection with a gated input against silu_and_mul + GEMV (and + cuBLAS), and
  qkv / gate_up with the residual-add + RMSNorm input against fused_add_rmsnorm + GEMV (and +
  cuBLAS), PDL on.
- chain: the weight products and glue kernels of a decoder layer (no attention) over
  `--chain-layers` layers of distinct weights, against the layer's weight-read floor: today's
  kernels, unfused (norm, GEMV or cuBLAS per the table, rotary, KV store, silu_and_mul), with PDL off and
  on, and the fused ones (norm-fused qkv and gate_up, rotary + KV store, gated down) with PDL off
  and on.
Prints the limits first and the tables last; `--out` is rewritten after every section.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from limits import measure_limits, print_limits, run_info  # noqa: E402

from lmlang.kernels.activation import silu_and_mul  # noqa: E402
from lmlang.kernels.gemv import (  # noqa: E402
    GemvConfig, NormInput, fused_gemv_config, gemv, gemv_config, table_key,
)
from lmlang.kernels.kv_store import store_kv  # noqa: E402
from lmlang.kernels.launch import pdl_forced  # noqa: E402
from lmlang.kernels.rmsnorm import fused_add_rmsnorm  # noqa: E402
from lmlang.kernels.rotary import apply_rotary, rotary_and_store_kv  # noqa: E402

SHAPES = {  # name -> (N, K) of the weight [N, K]
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTER = 32, 8, 128, 4096, 14336
BYTES_PER_REPLAY = 1 << 30
MIN_COPIES = 4
FMA_MAX_M = 4  # the FMA path reads the weight strip once per row (through L2): not past this
FMA_TILES = [  # (block_n, block_k, num_warps, num_stages)
    (4, 512, 4, 1), (8, 256, 4, 1), (8, 512, 4, 1), (16, 256, 4, 1), (16, 512, 8, 1), (32, 256, 8, 1),
    (32, 512, 16, 1), (64, 256, 16, 1), (8, 512, 4, 3), (16, 256, 4, 3),
]
DOT_TILES = [(16, 256, 4, 4), (32, 256, 4, 4), (64, 128, 4, 4), (64, 256, 4, 3), (128, 128, 4, 4), (128, 128, 8, 3),
             (128, 256, 8, 2), (256, 128, 8, 2), (256, 64, 8, 4)]
DEFAULT = GemvConfig(block_n=16, block_k=512, num_warps=8)  # where neither this run nor the table has one
MIN_GAIN = 0.01  # ours must beat cuBLAS by this fraction to enter the table (timing noise)
EPS = 1e-5
DEV = "cuda"
BF16 = dict(device=DEV, dtype=torch.bfloat16)


def split_choices(programs: int, k: int, block_k: int, sms: int) -> list:
    """1, and the smallest power-of-two split giving >= 4 programs per SM (>= 2 K steps each)."""
    split = 1
    while programs * split < 4 * sms and k // (block_k * split * 2) >= 1:
        split *= 2
    return sorted({1, split})


def candidates(n: int, k: int, m: int, sms: int, fma_tiles: list = FMA_TILES, dot_tiles: list = DOT_TILES,
               fma_max_m: int = FMA_MAX_M) -> list:
    """Every config of these tiles (FMA tiles up to `fma_max_m` rows) with its split-K choices."""
    out = []
    for use_dot, tiles in ((False, fma_tiles if m <= fma_max_m else []), (True, dot_tiles)):
        for bn, bk, warps, stages in tiles:
            programs = math.ceil(n / bn) * (1 if use_dot else m)
            for split in split_choices(programs, k, bk, sms):
                out.append(GemvConfig(block_n=bn, block_k=bk, split_k=split, use_dot=use_dot,
                                      num_warps=warps, num_stages=stages))
    return out


def time_graph(calls: list[Callable[[], object]], reps: int) -> float:
    """Median seconds per replay of a CUDA graph that runs `calls` in order."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls[:2]:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    seconds = statistics.median(time_replays(graph, reps))
    del graph
    return seconds


def time_replays(graph: torch.cuda.CUDAGraph, reps: int) -> list[float]:
    """Seconds of each of `reps` replays of a captured graph (after three untimed ones)."""
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def time_per_call(fn: Callable, weights: list, reps: int) -> float:
    """Median seconds per fn(w) call over a CUDA graph that calls it once per weight copy."""
    return time_graph([lambda w=w: fn(w) for w in weights], reps) / len(weights)


def weight_copies(n: int, k: int) -> list:
    copies = max(MIN_COPIES, math.ceil(BYTES_PER_REPLAY / (n * k * 2)))
    return [torch.randn(n, k, **BF16) for _ in range(copies)]


def config_name(cfg: Optional[GemvConfig]) -> str:
    if cfg is None:
        return "cuBLAS"
    kind = "dot" if cfg.use_dot else "fma"
    return f"{kind} n{cfg.block_n} k{cfg.block_k} s{cfg.split_k} w{cfg.num_warps} st{cfg.num_stages}"


def linear_fn(x: torch.Tensor, cfg: Optional[GemvConfig]) -> Callable:
    return (lambda w: F.linear(x, w)) if cfg is None else (lambda w: gemv(x, w, None, cfg))


def bench_shape(name: str, n: int, k: int, ms: list, reps: int, copy_GBps: float, sms: int) -> list:
    wbytes = n * k * 2
    weights = weight_copies(n, k)
    rows = []

    def entry(cfg, sec, **extra):
        return dict(config=None if cfg is None else cfg.to_json(), name=config_name(cfg), us=sec * 1e6,
                    TBps=wbytes / sec / 1e12, of_copy=wbytes / sec / 1e9 / copy_GBps, **extra)

    for m in ms:
        x = torch.randn(m, k, **BF16)
        ref = F.linear(x, weights[0]).float()
        results = []
        for cfg in [None, *candidates(n, k, m, sms)]:
            fn = linear_fn(x, cfg)
            t0 = time.perf_counter()
            try:
                with pdl_forced(True):
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
            results.append(entry(cfg, sec, first_call_s=first_s))
        cublas = results[0]
        ours = min(results[1:], key=lambda r: r["us"]) if len(results) > 1 else None
        wins = ours is not None and ours["us"] < cublas["us"] * (1 - MIN_GAIN)
        ours_off = None
        if ours is not None:
            with pdl_forced(False):
                cfg = GemvConfig(**ours["config"])
                ours_off = entry(cfg, time_per_call(linear_fn(x, cfg), weights, reps))
        rows.append(dict(shape=name, n=n, k=k, m=m, cublas=cublas, best=ours, best_pdl_off=ours_off, use_ours=wins,
                         all=results))
        print(f"{name:<8} M={m}: cuBLAS {cublas['us']:7.1f} us {cublas['of_copy']:6.1%}; best ours "
              + (f"{ours['us']:7.1f} us {ours['of_copy']:6.1%} (PDL off {ours_off['us']:7.1f}) ({ours['name']})"
                 if ours else "none"), flush=True)
    del weights
    torch.cuda.empty_cache()
    return rows


class Configs:
    """The config per (shape, M) for the fused and chain sections: this run's tuning where it ran,
    else the table (`fused_gemv_config`), else DEFAULT; `table` is what `linear` would run (None:
    cuBLAS)."""

    def __init__(self, tuned: list, device: str) -> None:
        self.tuned = {(r["shape"], r["m"]): r for r in tuned}
        self.device = device

    def ours(self, shape: str, m: int) -> GemvConfig:
        row = self.tuned.get((shape, m))
        if row is not None and row["best"] is not None:
            return GemvConfig(**row["best"]["config"])
        return fused_gemv_config(m, *SHAPES[shape], torch.bfloat16, self.device) or DEFAULT

    def table(self, shape: str, m: int) -> Optional[GemvConfig]:
        row = self.tuned.get((shape, m))
        if row is not None:
            return self.ours(shape, m) if row["use_ours"] else None
        return gemv_config(m, *SHAPES[shape], torch.bfloat16, self.device)


def bench_fused(configs: Configs, ms: list, reps: int, copy_GBps: float) -> list:
    """Gated down projection and norm-fused qkv / gate_up against their two-kernel forms."""
    rows = []
    for shape in ("down", "qkv", "gate_up"):
        n, k = SHAPES[shape]
        weights = weight_copies(n, k)
        for m in ms:
            cfg = configs.ours(shape, m)
            if shape == "down":
                x = torch.randn(m, 2 * k, **BF16)
                variants = {
                    "silu_and_mul + cuBLAS": lambda w: F.linear(silu_and_mul(x), w),
                    "silu_and_mul + gemv": lambda w: gemv(silu_and_mul(x), w, None, cfg),
                    "gated gemv": lambda w: gemv(x, w, None, cfg, gated=True),
                }
            else:
                x, res = (torch.randn(m, k, **BF16) for _ in range(2))
                nw, res_out = torch.rand(k, **BF16), torch.empty_like(res)
                variants = {
                    "add_rmsnorm + cuBLAS": lambda w: F.linear(fused_add_rmsnorm(x, res, nw, EPS)[0], w),
                    "add_rmsnorm + gemv": lambda w: gemv(fused_add_rmsnorm(x, res, nw, EPS)[0], w, None, cfg),
                    "norm-fused gemv": lambda w: gemv(x, w, None, cfg, norm=NormInput(res, nw, EPS, res_out)),
                }
            with pdl_forced(True):
                times = {label: time_per_call(fn, weights, reps) for label, fn in variants.items()}
            wbytes = n * k * 2
            row = dict(shape=shape, m=m, config=config_name(cfg),
                       us={label: t * 1e6 for label, t in times.items()},
                       of_copy={label: wbytes / t / 1e9 / copy_GBps for label, t in times.items()})
            rows.append(row)
            print(f"fused {shape:<8} M={m}: " + ", ".join(f"{lbl} {us:.1f} us" for lbl, us in row["us"].items()),
                  flush=True)
        del weights
        torch.cuda.empty_cache()
    return rows


def bench_chain(configs: Configs, ms: list, layers: int, reps: int, copy_GBps: float) -> list:
    """A decoder layer's weight products and glue kernels (no attention) over `layers` layers."""
    names = ("qkv", "o", "gate_up", "down")
    weights = [{s: torch.randn(*SHAPES[s], **BF16) for s in names} for _ in range(layers)]
    norm_w = torch.rand(HIDDEN, **BF16)
    cache = torch.rand(4096, HEAD_DIM, device=DEV)
    k_buf = torch.zeros(4096, KV_HEADS, HEAD_DIM, **BF16)
    v_buf = torch.zeros_like(k_buf)
    floor_s = sum(SHAPES[s][0] * SHAPES[s][1] * 2 for s in names) / (copy_GBps * 1e9)
    rows = []
    for m in ms:
        hidden, res_a, res_b = (torch.randn(m, HIDDEN, **BF16) for _ in range(3))
        positions = torch.arange(m, device=DEV) + 100
        loc = torch.arange(m, device=DEV) + 7

        def split_qkv(qkv):
            q = qkv[:, : HEADS * HEAD_DIM].view(m, HEADS, HEAD_DIM)
            k = qkv[:, HEADS * HEAD_DIM: (HEADS + KV_HEADS) * HEAD_DIM].view(m, KV_HEADS, HEAD_DIM)
            v = qkv[:, (HEADS + KV_HEADS) * HEAD_DIM:].view(m, KV_HEADS, HEAD_DIM)
            return q, k, v

        def lin(shape, x, w):
            cfg = configs.table(shape, m)
            return F.linear(x, w) if cfg is None else gemv(x, w, None, cfg)

        def unfused(w):  # the kernels a decode step runs now (attention left out: q stands in for its output)
            normed, res = fused_add_rmsnorm(hidden, res_a, norm_w, EPS)
            q, k, v = split_qkv(lin("qkv", normed, w["qkv"]))
            apply_rotary(q, k, positions, cache, inplace=True)
            store_kv(k_buf, v_buf, loc, k, v)
            o = lin("o", q.reshape(m, -1), w["o"])
            normed, res = fused_add_rmsnorm(o, res, norm_w, EPS)
            return lin("down", silu_and_mul(lin("gate_up", normed, w["gate_up"])), w["down"])

        def fused(w):
            qkv = gemv(hidden, w["qkv"], None, configs.ours("qkv", m), norm=NormInput(res_a, norm_w, EPS, res_b))
            q, k, v = split_qkv(qkv)
            rotary_and_store_kv(q, k, v, positions, cache, k_buf, v_buf, loc, inplace=True)
            o = gemv(q.reshape(m, -1), w["o"], None, configs.ours("o", m))
            gate_up = gemv(o, w["gate_up"], None, configs.ours("gate_up", m), norm=NormInput(res_b, norm_w, EPS, res_a))
            return gemv(gate_up, w["down"], None, configs.ours("down", m), gated=True)

        row = dict(m=m, layers=layers, floor_us=floor_s * 1e6, us={}, of_floor={})
        for label, fn in (("unfused", unfused), ("fused", fused)):
            for on in (False, True):
                with pdl_forced(on):
                    sec = time_graph([lambda w=w: fn(w) for w in weights], reps) / layers
                key = f"{label}, PDL {'on' if on else 'off'}"
                row["us"][key], row["of_floor"][key] = sec * 1e6, sec / floor_s
        rows.append(row)
        print(f"chain M={m}: floor {row['floor_us']:.1f} us/layer; "
              + ", ".join(f"{key} {us:.1f} us ({row['of_floor'][key]:.3f}x)" for key, us in row["us"].items()),
              flush=True)
    del weights
    torch.cuda.empty_cache()
    return rows


def print_tables(out: dict) -> None:
    info, limits = out["info"], out["limits"]
    print(f"\n== gemv {info['device']}  commit {info['commit']}  copy {limits['copy_GBps']:,.0f} GB/s  "
          f"({out['seconds']:.0f} s) ==")
    if out["results"]:
        print(f"{'shape':<8} {'M':>2} {'cuBLAS us':>9} {'%copy':>6} {'ours us':>8} {'%copy':>6} {'gain':>6} "
              f"{'PDL off':>8}  best config")
        for r in out["results"]:
            c, b, off = r["cublas"], r["best"], r["best_pdl_off"]
            if b is None:
                print(f"{r['shape']:<8} {r['m']:>2} {c['us']:>9.1f} {c['of_copy']:>6.1%}  (no candidate ran)")
                continue
            print(f"{r['shape']:<8} {r['m']:>2} {c['us']:>9.1f} {c['of_copy']:>6.1%} {b['us']:>8.1f} {b['of_copy']:>6.1%} "
                  f"{c['us'] / b['us']:>5.2f}x {off['us']:>8.1f}  {b['name']}" + ("" if r["use_ours"] else "  (cuBLAS kept)"))
    if out["fused"]:
        print("\nfused inputs, us per call (PDL on): two kernels vs one")
        for r in out["fused"]:
            print(f"{r['shape']:<8} {r['m']:>2}  " + "  ".join(f"{lbl} {us:7.1f}" for lbl, us in r["us"].items())
                  + f"  [{r['config']}]")
    if out["chain"]:
        keys = list(out["chain"][0]["us"])
        print("\ndecoder layer without attention, us per layer (x the weight-read floor)")
        print(f"{'M':>2} {'floor':>6}  " + "  ".join(f"{key:>18}" for key in keys))
        for r in out["chain"]:
            print(f"{r['m']:>2} {r['floor_us']:>6.1f}  "
                  + "  ".join(f"{r['us'][key]:>9.1f} ({r['of_floor'][key]:.3f}x)" for key in keys))
    print(f"table -> {out['out']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--m", default="1,2,4,8", help="row counts of x")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"shapes to tune, any of {','.join(SHAPES)}")
    parser.add_argument("--sections", default="tune,fused,chain", help="any of tune,fused,chain")
    parser.add_argument("--chain-layers", type=int, default=8)
    parser.add_argument("--tuned", type=pathlib.Path,
                        help="without the tune section: take the configs from this earlier --out JSON")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--fp8", action="store_true",
                        help="tune the W8A16 FP8 GEMV on DeepSeek's shapes instead (gemv_fp8_tune.py)")
    parser.add_argument("--fp8-shapes", default="",
                        help="with --fp8: only these DeepSeek shapes (e.g. v2lite.q_kv_a,v3.q_kv_a); default all")
    parser.add_argument("--fp8-merge", type=pathlib.Path,
                        help="with --fp8: start from this table (e.g. the shipped one) and replace only the tuned shapes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gemv_bench.py needs a CUDA device")
    ms = [int(v) for v in args.m.split(",") if v]
    names = [s for s in args.shapes.split(",") if s]
    sections = {s for s in args.sections.split(",") if s}
    unknown = (set(names) - set(SHAPES)) | (sections - {"tune", "fused", "chain"})
    if unknown or not ms or not all(1 <= m <= 8 for m in ms):
        sys.exit(f"unknown shapes or sections {sorted(unknown)}, or row counts {ms} outside 1..8")
    if args.fp8:
        from gemv_fp8_tune import run_fp8

        run_fp8(args.out, ms, args.reps, [s for s in args.fp8_shapes.split(",") if s] or None, args.fp8_merge)
        return
    t_start = time.perf_counter()
    limits, info = measure_limits(rep_ms=100), run_info()
    print_limits(limits, info)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = dict(device=info["device"], info=info, limits=limits, shapes={}, ours={}, results=[], fused=[], chain=[],
               out=str(args.out), seconds=0.0)

    def save() -> None:
        out["seconds"] = time.perf_counter() - t_start
        args.out.write_text(json.dumps(out, indent=1))

    if "tune" in sections:
        for name in names:
            out["results"] += bench_shape(name, *SHAPES[name], ms, args.reps, limits["copy_GBps"], sms)
            for r in out["results"]:
                key = table_key(r["n"], r["k"], torch.bfloat16)
                out["shapes"].setdefault(key, {})[str(r["m"])] = r["best"]["config"] if r["use_ours"] else None
                out["ours"].setdefault(key, {})[str(r["m"])] = r["best"]["config"] if r["best"] else None
            save()
    tuned = out["results"] or (json.loads(args.tuned.read_text())["results"] if args.tuned else [])
    configs = Configs(tuned, info["device"])
    if "fused" in sections:
        out["fused"] = bench_fused(configs, ms, args.reps, limits["copy_GBps"])
        save()
    if "chain" in sections:
        out["chain"] = bench_chain(configs, ms, args.chain_layers, args.reps, limits["copy_GBps"])
        save()
    print_tables(out)


if __name__ == "__main__":
    main()
