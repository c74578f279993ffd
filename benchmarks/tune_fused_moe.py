"""Tunes the fused MoE kernel's launch config on this GPU and writes the tables it reads.

    python benchmarks/tune_fused_moe.py --models dsv2-lite,dsv3 --dtypes bf16,fp8_w8a8 \
        --out-dir "$OUT/fused_moe" --out "$OUT/tune_fused_moe.json"
    python benchmarks/tune_fused_moe.py --experts 8 --top-k 2 --hidden 4096 --intermediate 14336 --dtypes bf16
    python benchmarks/tune_fused_moe.py --dry-run      # candidate counts only; no GPU needed

For each model, dtype and batch size M it times the whole `fused_experts` call (both grouped
GEMMs, which share one config) and keeps the fastest config, in two stages: tile shapes
(BLOCK_SIZE_M/N/K, chosen from the tokens per expert M * top_k / E) at default warps and stages,
then warps, pipeline stages and GROUP_SIZE_M around the best tile. Each candidate is timed by
replaying a CUDA graph of several calls with different routings (no host launch overhead; the
weights of the experts hit exceed L2, as in a real decode step). Compilation dominates a naive
search, so each stage's candidates are first compiled in parallel by `--jobs` worker processes
(on two-expert copies of the weights, which give the kernel the same specialization), which
fill Triton's on-disk cache for the timing process.

The table goes to `--out-dir` as `E=..,N=..,K=..,dtype=..,device=...json` (see
`lmlang.kernels.moe_config`; copy it to `kernels/configs/fused_moe/`), rewritten after every M,
so a run cut off by `--budget-s` keeps its work. `--out` gets every timing as JSON; a summary
table is printed last.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import itertools
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time
from dataclasses import dataclass, replace

import torch

from lmlang.kernels import fp8
from lmlang.kernels.fused_moe import fused_experts
from lmlang.kernels.moe_config import CONFIG_DIR, FusedMoEConfig, config_file_name

MODELS = {  # experts, top_k, hidden, moe intermediate
    "dsv2-lite": (64, 6, 2048, 1408),
    "dsv3": (256, 8, 7168, 2048),
    "mixtral": (8, 2, 4096, 14336),
    "qwen3-30b-a3b": (128, 8, 2048, 768),
}
DTYPES = ("bf16", "fp16", "fp32", "fp8_w8a8")
DEFAULT_BATCH_SIZES = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
L2_FLUSH_BYTES = 250e6  # weights streamed per timed replay: several times the H200's 50 MB L2
MAX_ROTATIONS = 8


@dataclass(frozen=True)
class Shape:
    experts: int
    top_k: int
    hidden: int
    intermediate: int
    dtype_name: str

    @property
    def expert_bytes(self) -> int:
        return 3 * self.hidden * self.intermediate * (1 if self.dtype_name == "fp8_w8a8" else 2)


def tile_candidates(tokens_per_expert: float, dtype_name: str) -> list[FusedMoEConfig]:
    """Stage 1: tile shapes that suit this many tokens per expert, default warps/stages/group."""
    if tokens_per_expert <= 8:
        block_m, block_n = (16,), (32, 64, 128)
    elif tokens_per_expert <= 32:
        block_m, block_n = (16, 32, 64), (64, 128, 256)
    elif tokens_per_expert <= 128:
        block_m, block_n = (32, 64, 128), (64, 128, 256)
    else:
        block_m, block_n = (64, 128), (64, 128, 256)
    block_k = (128,) if dtype_name == "fp8_w8a8" else (64, 128)  # fp8: one scale block per k step
    out = []
    for bm, bn, bk in itertools.product(block_m, block_n, block_k):
        if bn == 256 and bm < 64:
            continue  # a thin, wide tile: 64 x 128 covers it with more programs
        warps = 8 if bm * bn >= 128 * 128 else 4
        stages = 3 if bk * (bm + bn) >= 128 * 256 else 4
        out.append(FusedMoEConfig(bm, bn, bk, 1 if tokens_per_expert <= 32 else 8, warps, stages))
    return out


def refinements(best: FusedMoEConfig, tokens_per_expert: float) -> list[FusedMoEConfig]:
    """Stage 2: warps, pipeline depth and (with several blocks per expert) grouping around `best`."""
    out = [replace(best, num_warps=w, num_stages=s) for w, s in itertools.product((4, 8), (2, 3, 4, 5))]
    if tokens_per_expert > 8:
        out += [replace(best, GROUP_SIZE_M=g) for g in (1, 8, 32)]
    return [c for c in dict.fromkeys(out) if c != best]


def make_weights(shape: Shape, experts: int) -> dict:
    """Random expert weights ([E, 2I, H] and [E, H, I]) and the `fused_experts` keyword arguments."""
    e, h, inter = experts, shape.hidden, shape.intermediate

    def rand(*dims):
        return torch.randn(*dims, device="cuda") * dims[-1] ** -0.5

    if shape.dtype_name != "fp8_w8a8":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[shape.dtype_name]
        return dict(w13=rand(e, 2 * inter, h).to(dtype), w2=rand(e, h, inter).to(dtype), dtype=dtype, kw={})
    q13 = [fp8.quant_weight_block_fp8(rand(2 * inter, h)) for _ in range(e)]  # one expert at a time
    q2 = [fp8.quant_weight_block_fp8(rand(h, inter)) for _ in range(e)]
    return dict(
        w13=torch.stack([q for q, _ in q13]), w2=torch.stack([q for q, _ in q2]), dtype=torch.bfloat16,
        kw=dict(use_fp8=True, w13_scale=torch.stack([s for _, s in q13]), w2_scale=torch.stack([s for _, s in q2])),
    )


def make_routings(m: int, experts: int, top_k: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` random routings (weights [m, top_k] float32, ids [m, top_k] int32), distinct experts per token."""
    out = []
    for _ in range(count):
        weights, ids = torch.softmax(torch.randn(m, experts, device="cuda"), -1).topk(top_k, -1)
        out.append((weights, ids.to(torch.int32)))
    return out


def rotations(shape: Shape, m: int) -> int:
    """Calls per timed replay, each with another routing, so the weights read exceed L2."""
    hit_bytes = min(shape.experts, m * shape.top_k) * shape.expert_bytes
    return max(1, min(MAX_ROTATIONS, math.ceil(L2_FLUSH_BYTES / hit_bytes)))


def time_config(cfg: FusedMoEConfig, x: torch.Tensor, weights: dict, routings: list, rep_ms: float) -> float:
    """Microseconds per `fused_experts` call, from CUDA-graph replays of one call per routing."""
    calls = [functools.partial(fused_experts, x, weights["w13"], weights["w2"], w, ids, config=cfg, **weights["kw"])
             for w, ids in routings]
    for call in calls:
        call()  # compile (or load from the cache) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    reps = max(3, min(200, int(rep_ms / max(start.elapsed_time(end), 1e-3))))
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * len(calls))


_worker_weights: dict[Shape, dict] = {}


def _compile_in_worker(shape: Shape, m: int, cfg: FusedMoEConfig) -> None:
    """Runs `cfg` once on a two-expert copy of `shape` (same strides, so the same kernel
    specialization as the real weights), filling Triton's on-disk cache."""
    if shape not in _worker_weights:
        _worker_weights[shape] = make_weights(shape, 2)
    weights = _worker_weights[shape]
    x = torch.randn(m, shape.hidden, device="cuda").to(weights["dtype"])
    ids = torch.randint(0, 2, (m, shape.top_k), device="cuda", dtype=torch.int32)
    topk_w = torch.rand(m, shape.top_k, device="cuda")
    try:
        fused_experts(x, weights["w13"], weights["w2"], topk_w, ids, config=cfg, **weights["kw"])
        torch.cuda.synchronize()
    except Exception:  # too much shared memory for this tile: the timing process skips it too
        pass


def precompile(pool, shape: Shape, m: int, configs: list[FusedMoEConfig]) -> None:
    if pool is not None:
        list(pool.map(_compile_in_worker, itertools.repeat(shape), itertools.repeat(m), configs))


def tune_shape(shape: Shape, args, pool, deadline: float, log: list) -> None:
    """The table for one shape: M -> best config, written to `--out-dir` after every M."""
    weights = make_weights(shape, shape.experts)
    device = torch.cuda.get_device_name()
    out_path = args.out_dir / config_file_name(shape.experts, 2 * shape.intermediate, shape.hidden,
                                               shape.dtype_name, device)
    table: dict[str, dict] = {}
    print(f"{device}: {shape} -> {out_path}", flush=True)
    for m in args.batch_sizes:
        x = torch.randn(m, shape.hidden, device="cuda").to(weights["dtype"])
        routings = make_routings(m, shape.experts, shape.top_k, rotations(shape, m))
        per_expert = m * shape.top_k / shape.experts
        timings: dict[FusedMoEConfig, float] = {}
        for stage in (tile_candidates(per_expert, shape.dtype_name), None):
            if stage is None:
                if not timings:
                    break
                stage = refinements(min(timings, key=timings.get), per_expert)
            precompile(pool, shape, m, stage)
            for cfg in stage:
                if time.monotonic() > deadline:
                    break
                try:
                    timings[cfg] = time_config(cfg, x, weights, routings, args.rep_ms)
                except Exception as err:  # out of shared memory / registers: not a candidate
                    print(f"  M={m} skip {cfg}: {type(err).__name__}", file=sys.stderr)
        if not timings:
            print(f"M={m}: time budget spent before any config ran; stopping", flush=True)
            break
        best = min(timings, key=timings.get)
        table[str(m)] = best.to_json()
        log.append(dict(shape=shape.__dict__, m=m, best_us=timings[best], best=best.to_json(),
                        tried=[dict(config=c.to_json(), us=us) for c, us in timings.items()]))
        print(f"  M={m}: {timings[best]:.1f} us ({len(timings)} configs) {best}", flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(table, indent=1) + "\n")
        del routings
        torch.cuda.empty_cache()
    print(f"wrote {out_path} ({len(table)} batch sizes)", flush=True)


def shapes_from_args(args) -> list[Shape]:
    dtypes = [d for d in args.dtypes.split(",") if d]
    if any(d not in DTYPES for d in dtypes):
        sys.exit(f"--dtypes: each of {dtypes} must be one of {DTYPES}")
    custom = (args.experts, args.top_k, args.hidden, args.intermediate)
    if any(v is not None for v in custom):
        if None in custom:
            sys.exit("give all of --experts --top-k --hidden --intermediate, or --models")
        specs = [custom]
    else:
        names = [n for n in args.models.split(",") if n]
        if any(n not in MODELS for n in names):
            sys.exit(f"--models: each of {names} must be one of {sorted(MODELS)}")
        specs = [MODELS[n] for n in names]
    return [Shape(*spec, dtype_name=d) for spec in specs for d in dtypes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dsv2-lite,dsv3", help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--experts", type=int)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--dtypes", default="bf16,fp8_w8a8", help=f"comma-separated, of {DTYPES}")
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument("--rep-ms", type=float, default=10.0, help="replay time per candidate")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop after this many seconds (0: no limit)")
    parser.add_argument("--jobs", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)),
                        help="parallel compile processes (0: compile in the timing process)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=CONFIG_DIR, help="where the tables go")
    parser.add_argument("--out", type=pathlib.Path, help="JSON of every timing")
    parser.add_argument("--dry-run", action="store_true", help="print the candidates per shape and M, run nothing")
    args = parser.parse_args()
    args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s]
    shapes = shapes_from_args(args)
    if args.dry_run:
        for shape in shapes:
            for m in args.batch_sizes:
                per_expert = m * shape.top_k / shape.experts
                stage1 = tile_candidates(per_expert, shape.dtype_name)
                print(f"{shape} M={m}: {len(stage1)} tiles + <= {len(refinements(stage1[0], per_expert))} "
                      f"refinements, {rotations(shape, m)} routings per replay")
        return
    if not torch.cuda.is_available():
        sys.exit("tune_fused_moe.py needs a CUDA device")

    start = time.monotonic()
    deadline = start + args.budget_s if args.budget_s else math.inf
    pool = None
    if args.jobs:
        pool = concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
    log: list[dict] = []
    try:
        for shape in shapes:
            if time.monotonic() > deadline:
                print(f"time budget spent; {shape} not tuned", flush=True)
                continue
            tune_shape(shape, args, pool, deadline, log)
            torch.cuda.empty_cache()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if args.out:
        args.out.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), seconds=time.monotonic() - start,
                                            results=log), indent=1))
    print(f"\n{'shape':<44} {'M':>5} {'best us':>9}  config  ({time.monotonic() - start:.0f} s)")
    for row in log:
        s = row["shape"]
        name = f"E={s['experts']} top{s['top_k']} H={s['hidden']} I={s['intermediate']} {s['dtype_name']}"
        cfg = row["best"]
        print(f"{name:<44} {row['m']:>5} {row['best_us']:>9.1f}  M{cfg['BLOCK_SIZE_M']} N{cfg['BLOCK_SIZE_N']} "
              f"K{cfg['BLOCK_SIZE_K']} G{cfg['GROUP_SIZE_M']} w{cfg['num_warps']} s{cfg['num_stages']}")


if __name__ == "__main__":
    main()
