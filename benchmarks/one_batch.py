"""Static-batch latency of the model runner on a real config with dummy weights, against the limits.

    python benchmarks/one_batch.py --config benchmarks/configs/llama31_8b.json --out one_batch.json \
        [--batch 1,8,32,64,128,256] [--ctx 1024,2048,4096,8192] [--prefill 1024,4096,8192] \
        [--compare 1,32] [--compare-modes eager,graph,compile]

Drives `ModelRunner` directly (no scheduler, no front end), as SGLang's bench_one_batch does:
- prefill: one sequence of L new tokens; time per forward (host work included), useful FLOPs
  (2 x tokens x linear weights + causal attention) over it, as a fraction of the measured bf16
  matmul rate;
- decode: `batch` sequences each with `ctx` tokens of context already in the KV pool, one new
  token each; wall time per step (batch build, planning, graph replay, logits copy) and, for graph
  replays, the replay alone (the GPU's time). The floor is the larger of (weight bytes + KV bytes
  read) / measured copy bandwidth and FLOPs / measured matmul rate; "x floor" is step / floor.
  Weight bytes are those a decode step reads: every parameter except the embedding table, of
  which only the batch's rows are read. KV contents are whatever the pool holds (zeros): the cost
  of attention does not depend on the values.
- compare: eager vs CUDA graph vs torch.compile + graph at the `--compare` batch sizes: the
  first-run cost (graph capture, compilation) and the decode step time.
- engine (`--engine-itl 1:1024`): the same decode through the whole engine (scheduler, overlap
  scheduling, sampler, detokenizer-free streaming): `bs` requests of `ctx` random prompt tokens,
  `--engine-tokens` outputs each; the time per output token after the first (TPOT, median over the
  requests) is the decode step time a user sees, host work hidden behind the GPU by overlap.
- profile (`--profile 1:1024,64:1024`): for those decode shapes, the host time of each phase of a
  graph step (batch build, attention planning, replay launch) and the GPU time per kernel of a
  replay (torch.profiler over a few replays), largest first. With programmatic dependent launch
  (`LMLANG_PDL`, on by default on Hopper) kernels overlap their neighbours and each one's time
  includes its wait for the previous one, so the per-kernel times no longer add up to the replay;
  profile with `LMLANG_PDL=0` to apportion a step.
Prints the limits first and a table last; writes everything to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from limits import start_dummy_model_run  # noqa: E402

from lmlang.runtime.config import EngineConfig  # noqa: E402
from lmlang.runtime.forward_batch import ForwardMode  # noqa: E402
from lmlang.runtime.model_runner import ModelRunner, SeqChunk  # noqa: E402


def model_costs(runner: ModelRunner) -> dict:
    """Bytes and FLOP counts of the model, per token and per context token."""
    model, cfg = runner.model, runner.hf_config
    elem = torch.tensor([], dtype=runner.dtype).element_size()
    embed = model.model.embed_tokens.weight
    tied = model.lm_head.weight is embed
    params = {id(p): (n, p) for n, p in model.named_parameters()}
    linear = sum(p.numel() for n, p in params.values() if p.dim() == 2 and "embed_tokens" not in n
                 and not n.startswith("lm_head"))
    head = model.lm_head.weight.numel()
    read = sum(p.numel() for n, p in params.values() if "embed_tokens" not in n) + (head if tied else 0)
    spec = runner.attn_spec
    layers = cfg.num_hidden_layers
    return dict(
        weight_bytes=read * elem,  # read per decode step (plus the batch's embedding rows)
        hidden_bytes=cfg.hidden_size * elem,
        linear_params=linear,
        head_params=head,
        kv_bytes_per_token=runner.kv_pool.bytes_per_slot(),
        attn_flops_per_pair=4 * layers * spec.num_heads * spec.head_dim,  # QK^T + PV per (query, key) pair
    )


def timed(fn, warmup: int, reps: int) -> float:
    """Median wall seconds of `fn` (synchronized), after warm-up runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_chunks(bs: int, ctx: int) -> list:
    """bs sequences of ctx cached tokens plus one new token, on disjoint slots."""
    return [SeqChunk([1] * (ctx + 1), ctx, ctx + 1, torch.arange(1 + i * (ctx + 1), 1 + (i + 1) * (ctx + 1)))
            for i in range(bs)]


def bench_prefill(runner: ModelRunner, lengths: list, costs: dict, limits: dict) -> list:
    rows = []
    for n in lengths:
        if n > runner.num_slots:
            continue
        chunk = [SeqChunk([1] * n, 0, n, torch.arange(1, n + 1))]
        sec = timed(lambda chunk=chunk, n=n: runner.forward(ForwardMode.EXTEND, chunk, [n - 1]), 1, 5)
        flops = 2 * n * costs["linear_params"] + 2 * costs["head_params"] + costs["attn_flops_per_pair"] * n * (n + 1) / 2
        tflops = flops / sec / 1e12
        rows.append(dict(kind="prefill", tokens=n, ms=sec * 1e3, tok_per_s=n / sec, tflops=tflops,
                         fraction_of_mm=tflops / limits["bf16_mm_TFLOPs"]))
        print(f"prefill {n:>6} tokens: {sec * 1e3:8.1f} ms  {tflops:6.0f} TFLOP/s  "
              f"{rows[-1]['fraction_of_mm']:6.1%} of matmul", flush=True)
    return rows


def decode_floor(bs: int, ctx: int, costs: dict, limits: dict) -> dict:
    bytes_read = costs["weight_bytes"] + bs * costs["hidden_bytes"] + bs * ctx * costs["kv_bytes_per_token"]
    flops = 2 * bs * (costs["linear_params"] + costs["head_params"]) + costs["attn_flops_per_pair"] * bs * (ctx + 1)
    bw_ms = bytes_read / (limits["copy_GBps"] * 1e9) * 1e3
    mm_ms = flops / (limits["bf16_mm_TFLOPs"] * 1e12) * 1e3
    return dict(bytes=bytes_read, flops=flops, floor_bw_ms=bw_ms, floor_mm_ms=mm_ms, floor_ms=max(bw_ms, mm_ms))


def bench_decode(runner: ModelRunner, bs: int, ctx: int, costs: dict, limits: dict, reps: int) -> dict:
    chunks = decode_chunks(bs, ctx)
    rows = list(range(bs))
    sec = timed(lambda: runner.forward(ForwardMode.DECODE, chunks, rows), 3, reps)
    row = dict(kind="decode", batch=bs, ctx=ctx, ms=sec * 1e3, tok_per_s=bs / sec, **decode_floor(bs, ctx, costs, limits))
    graphs = runner.graph_runner
    if graphs is not None and graphs.can_run(bs, bs * (ctx + 1)):
        bucket = graphs.bucket(bs)
        graphs.replay(runner.builder.build(ForwardMode.DECODE, chunks, pad_to=bucket))  # plans this batch
        row["replay_ms"] = timed(graphs.graphs[bucket].replay, 2, reps) * 1e3
    row["x_floor"] = row["ms"] / row["floor_ms"]
    print(f"decode b={bs:<4} ctx={ctx:<5} {row['ms']:8.2f} ms/step (replay {row.get('replay_ms', float('nan')):6.2f})"
          f"  {row['tok_per_s']:9.0f} tok/s  floor {row['floor_ms']:6.2f} ms  x{row['x_floor']:.2f}", flush=True)
    return row


def profile_decode(runner: ModelRunner, bs: int, ctx: int, reps: int = 5) -> dict:
    """Host phases of one graph decode step and GPU time per kernel of its replay."""
    from torch.profiler import ProfilerActivity, profile

    graphs = runner.graph_runner
    chunks = decode_chunks(bs, ctx)
    bucket = graphs.bucket(bs)
    host = {"build": [], "plan+copy": [], "launch": []}
    for _ in range(reps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = runner.builder.build(ForwardMode.DECODE, chunks, pad_to=bucket)
        t1 = time.perf_counter()
        static = graphs.static_batches[bucket]
        static.input_ids.copy_(batch.input_ids, non_blocking=True)
        static.positions.copy_(batch.positions, non_blocking=True)
        static.out_cache_loc.copy_(batch.out_cache_loc, non_blocking=True)
        runner.attn_backend.plan_cuda_graph(batch)
        t2 = time.perf_counter()
        graphs.graphs[bucket].replay()
        t3 = time.perf_counter()
        for key, dt in zip(host, (t1 - t0, t2 - t1, t3 - t2)):
            host[key].append(dt * 1e6)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graphs.graphs[bucket].replay()
        torch.cuda.synchronize()
    kernels: dict = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            name = evt.name[:90]
            count, total = kernels.get(name, (0, 0.0))
            kernels[name] = (count + 1, total + evt.time_range.elapsed_us())
    rows = sorted(((total / reps, count // reps, name) for name, (count, total) in kernels.items()), reverse=True)
    out = dict(batch=bs, ctx=ctx, host_us={k: statistics.median(v[2:]) for k, v in host.items()},
               gpu_us_total=sum(r[0] for r in rows), kernels=[dict(us=u, calls=c, name=n) for u, c, n in rows[:25]])
    print(f"profile b={bs} ctx={ctx}: host " + ", ".join(f"{k} {v:.0f} us" for k, v in out["host_us"].items())
          + f"; GPU kernels {out['gpu_us_total']:.0f} us per replay")
    for u, c, n in rows[:15]:
        print(f"  {u:9.1f} us  {c:4d} x  {n}")
    return out


def bench_engine_itl(path: str, bs: int, ctx: int, tokens: int, costs: dict, limits: dict,
                     backend: str | None) -> dict:
    """Per-output-token time of `bs` concurrent streamed requests through the engine (see module doc)."""
    import asyncio
    import random

    from lmlang.runtime import Engine

    rng = random.Random(0)
    params = dict(max_new_tokens=tokens, temperature=0, ignore_eos=True)

    async def one(engine, ids: list) -> list:
        stream = await engine.async_generate(input_ids=ids, sampling_params=params, stream=True)
        stamps, seen = [], 0
        async for chunk in stream:
            n = len(chunk["output_ids"])
            stamps.extend([time.perf_counter()] * (n - seen))
            seen = n
        return stamps

    async def run(engine) -> list:
        prompts = [[rng.randrange(3, engine.vocab_size) for _ in range(ctx)] for _ in range(bs)]
        return await asyncio.gather(*[one(engine, ids) for ids in prompts])

    with Engine(path, device="cuda", dtype="bfloat16", load_format="dummy", attention_backend=backend,
                max_running_requests=max(bs, 1), cuda_graph_max_batch=max(bs, 1),
                max_total_tokens=bs * (ctx + tokens) + 1024) as engine:
        asyncio.run(run(engine))  # warm-up: graphs replayed once per bucket, caches touched
        stamps = asyncio.run(run(engine))
    tpot = statistics.median((s[-1] - s[0]) / (len(s) - 1) for s in stamps)
    mid = ctx + tokens // 2  # the average context over the decode
    row = dict(kind="engine", batch=bs, ctx=ctx, tokens=tokens, tpot_ms=tpot * 1e3, tok_per_s=bs / tpot,
               **decode_floor(bs, mid, costs, limits))
    row["x_floor"] = row["tpot_ms"] / row["floor_ms"]
    print(f"engine b={bs:<4} ctx={ctx:<5} {tokens} tokens: {row['tpot_ms']:.2f} ms per token, floor at ctx {mid} "
          f"{row['floor_ms']:.2f} ms, x{row['x_floor']:.2f}", flush=True)
    return row


def make_runner(path: str, **overrides) -> tuple:
    cfg = EngineConfig(model_path=path, device="cuda", dtype="bfloat16", load_format="dummy", **overrides)
    t0 = time.perf_counter()
    runner = ModelRunner(cfg)
    torch.cuda.synchronize()
    return runner, time.perf_counter() - t0


def release_memory() -> None:
    """Returns freed device memory (after the caller dropped its last runner reference)."""
    gc.collect()
    torch.cuda.empty_cache()


def bench_compare(path: str, sizes: list, ctx: int, modes: list, costs: dict, limits: dict, reps: int,
                  backend: str | None) -> list:
    out = []
    for mode in modes:
        runner, init_s = make_runner(
            path, cuda_graph=mode != "eager", torch_compile=mode == "compile", cuda_graph_max_batch=max(sizes),
            max_running_requests=max(sizes), max_total_tokens=max(sizes) * (ctx + 1) + 64,
            attention_backend=backend,
        )
        graphs = runner.graph_runner
        row = dict(kind="compare", mode=mode, init_s=init_s,
                   capture_s=graphs.capture_seconds if graphs else 0.0,
                   warmup_s=graphs.warmup_seconds if graphs else 0.0)
        t0 = time.perf_counter()
        runner.forward(ForwardMode.DECODE, decode_chunks(1, ctx), [0])
        torch.cuda.synchronize()
        row["first_step_s"] = time.perf_counter() - t0
        for bs in sizes:
            row[f"ms_b{bs}"] = bench_decode(runner, bs, ctx, costs, limits, reps)["ms"]
        print(f"compare {mode:<8} init {init_s:6.1f} s  capture {row['capture_s']:5.1f} s  "
              f"warm-up/compile {row['warmup_s']:6.1f} s  " + "  ".join(f"b{b}: {row[f'ms_b{b}']:.2f} ms" for b in sizes),
              flush=True)
        out.append(row)
        del runner, graphs
        release_memory()
    return out


def print_table(results: dict) -> None:
    lim = results["limits"]
    print(f"\n== one_batch {results['model']}  {results['info']['device']}  commit {results['info']['commit']}  "
          f"copy {lim['copy_GBps']:,.0f} GB/s  bf16 {lim['bf16_mm_TFLOPs']:,.0f} TFLOP/s ==")
    print(f"{'what':<28} {'ms':>9} {'replay ms':>9} {'tok/s':>10} {'floor ms':>9} {'ratio':>12}")
    for r in results["prefill"]:
        print(f"{'prefill ' + str(r['tokens']):<28} {r['ms']:>9.1f} {'':>9} {r['tok_per_s']:>10.0f} {'':>9} "
              f"{r['fraction_of_mm']:>8.1%} mm")
    for r in results["decode"]:
        print(f"{'decode b=%d ctx=%d' % (r['batch'], r['ctx']):<28} {r['ms']:>9.2f} {r.get('replay_ms', float('nan')):>9.2f} "
              f"{r['tok_per_s']:>10.0f} {r['floor_ms']:>9.2f} {r['x_floor']:>9.2f} x")
    for r in results["engine"]:
        print(f"{'engine b=%d ctx=%d' % (r['batch'], r['ctx']):<28} {r['tpot_ms']:>9.2f} {'':>9} "
              f"{r['tok_per_s']:>10.0f} {r['floor_ms']:>9.2f} {r['x_floor']:>9.2f} x")
    for r in results["compare"]:
        steps = "  ".join(f"{k[4:]}={v:.2f} ms" for k, v in r.items() if k.startswith("ms_b"))
        print(f"{'compare ' + r['mode']:<28} capture {r['capture_s']:.1f} s, warm-up/compile {r['warmup_s']:.1f} s, "
              f"first step {r['first_step_s']:.2f} s; {steps}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="Hugging Face config.json of the model")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--batch", type=ints, default=ints("1,8,32,64,128,256"))
    parser.add_argument("--ctx", type=ints, default=ints("1024,2048,4096,8192"))
    parser.add_argument("--prefill", type=ints, default=ints("1024,4096,8192"))
    parser.add_argument("--compare", type=ints, default=ints("1,32"), help="batch sizes of the eager/graph/compile runs")
    parser.add_argument("--compare-modes", default="eager,graph,compile")
    parser.add_argument("--compare-ctx", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--profile", default="", help="decode shapes to profile, e.g. 1:1024,64:1024")
    parser.add_argument("--engine-itl", default="", help="engine decode shapes, e.g. 1:1024 (see module doc)")
    parser.add_argument("--engine-tokens", type=int, default=256)
    parser.add_argument("--attention-backend", default=None, help="flashinfer (default) or triton")
    args = parser.parse_args()
    limits, info, path = start_dummy_model_run("benchmarks/one_batch.py", args.config)
    results = dict(model=pathlib.Path(args.config).stem, backend=args.attention_backend or "flashinfer", info=info, limits=limits, prefill=[], decode=[], compare=[],
                   profile=[], engine=[])
    runner, init_s = make_runner(path, cuda_graph_max_batch=max(args.batch), max_running_requests=max(args.batch),
                                 chunked_prefill_size=max(args.prefill, default=8192), attention_backend=args.attention_backend)
    graphs = runner.graph_runner
    print(f"# runner up in {init_s:.1f} s: {runner.num_slots} KV slots, backend {type(runner.attn_backend).__name__}, "
          f"graphs {graphs.batch_sizes if graphs else None}", flush=True)
    costs = model_costs(runner)
    results["costs"] = costs
    results["prefill"] = bench_prefill(runner, args.prefill, costs, limits)
    for ctx in args.ctx:
        for bs in args.batch:
            if bs * (ctx + 1) > runner.num_slots:
                print(f"decode b={bs} ctx={ctx}: skipped, needs {bs * (ctx + 1)} KV slots", flush=True)
                continue
            results["decode"].append(bench_decode(runner, bs, ctx, costs, limits, args.reps))
    for shape in [p for p in args.profile.split(",") if p] if graphs is not None else []:
        bs, ctx = (int(x) for x in shape.split(":"))
        results["profile"].append(profile_decode(runner, bs, ctx))
    del runner, graphs
    release_memory()
    for shape in [p for p in args.engine_itl.split(",") if p]:
        bs, ctx = (int(x) for x in shape.split(":"))
        results["engine"].append(bench_engine_itl(path, bs, ctx, args.engine_tokens, costs, limits,
                                                  args.attention_backend))
        release_memory()
    modes = [m for m in args.compare_modes.split(",") if m]
    if args.compare and modes:
        results["compare"] = bench_compare(path, args.compare, args.compare_ctx, modes, costs, limits, args.reps,
                                           args.attention_backend)
    args.out.write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
