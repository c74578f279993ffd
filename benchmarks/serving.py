"""Online serving against a running engine (front end + engine core), with a transformers peer.

    python benchmarks/serving.py --config benchmarks/configs/llama31_8b.json --out serving.json \
        --dataset shared-prefix --prefix-caches radix,block,none --peer-hf
    python benchmarks/serving.py --config benchmarks/configs/llama31_8b.json --out random.json \
        --dataset random --num-requests 256 --input-len 1024 --output-len 256

Weights are dummy (`load_format="dummy"`), so prompts are random token ids and every request
generates exactly `output_len` tokens (`ignore_eos`). Datasets:
- `random`: prompt lengths uniform in [(1 - range_ratio) * input_len, input_len];
- `shared-prefix`: one prefix of `prefix_len` tokens shared by every request, then `suffix_len`
  tokens of its own (the default is the issue's: 64 requests over a 4k prefix, 128 tokens out).
Requests arrive as a Poisson process at `--request-rate` per second (`inf`: all at once) and
stream their tokens. Per request: TTFT (first token), ITL (gap between streamed chunks, split
evenly over a chunk's tokens), TPOT ((last - first token time) / (tokens - 1)). Reported per
prefix cache: request throughput, output tok/s, TTFT / ITL / TPOT p50 and p99, and from the
engine's counters the prefill tokens computed and cached tokens reused.
`--peer-hf`: transformers `generate` (greedy, same prompts and output length, left-padded
batches) at each `--hf-batch` size; the best is the peer, and lmlang's throughput is reported
as a ratio to it. Prints the measured limits first and a table last; writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import pathlib
import random
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from limits import start_dummy_model_run  # noqa: E402


def make_requests(args: argparse.Namespace, vocab: int) -> list:
    rng = random.Random(args.seed)
    draw = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    if args.dataset == "shared-prefix":
        prefix = draw(args.prefix_len)
        return [prefix + draw(args.suffix_len) for _ in range(args.num_requests)]
    lo = max(1, int(args.input_len * (1 - args.range_ratio)))
    return [draw(rng.randint(lo, args.input_len)) for _ in range(args.num_requests)]


def percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


async def _one(engine, ids: list, output_len: int, delay: float) -> dict:
    await asyncio.sleep(delay)
    start = time.perf_counter()
    stream = await engine.async_generate(
        input_ids=ids, sampling_params=dict(max_new_tokens=output_len, temperature=0, ignore_eos=True), stream=True,
    )
    times, counts, seen = [], [], 0
    async for chunk in stream:
        n = len(chunk["output_ids"])
        if n > seen:
            times.append(time.perf_counter())
            counts.append(n - seen)
            seen = n
    return dict(start=start, times=times, counts=counts, tokens=seen)


async def _run_all(engine, reqs: list, output_len: int, rate: float, seed: int) -> tuple:
    rng = random.Random(seed)
    delays, t = [], 0.0
    for _ in reqs:
        delays.append(t)
        if rate != float("inf"):
            t += rng.expovariate(rate)
    begin = time.perf_counter()
    results = await asyncio.gather(*[_one(engine, ids, output_len, d) for ids, d in zip(reqs, delays)])
    return results, time.perf_counter() - begin


def summarize(results: list, duration: float) -> dict:
    ttft = [r["times"][0] - r["start"] for r in results if r["times"]]
    itl, tpot = [], []
    for r in results:
        for prev, cur, n in zip(r["times"], r["times"][1:], r["counts"][1:]):
            itl.extend([(cur - prev) / n] * n)
        if r["tokens"] > 1:
            tpot.append((r["times"][-1] - r["times"][0]) / (r["tokens"] - 1))
    tokens = sum(r["tokens"] for r in results)
    out = dict(duration_s=duration, requests=len(results), output_tokens=tokens,
               req_per_s=len(results) / duration, out_tok_per_s=tokens / duration)
    for name, values in (("ttft", ttft), ("itl", itl), ("tpot", tpot)):
        out[f"{name}_p50_ms"] = percentile(values, 50) * 1e3
        out[f"{name}_p99_ms"] = percentile(values, 99) * 1e3
    return out


def bench_engine(path: str, prefix_cache: str, reqs: list, args: argparse.Namespace) -> dict:
    from lmlang.runtime import Engine

    t0 = time.perf_counter()
    with Engine(path, device="cuda", dtype="bfloat16", load_format="dummy", prefix_cache=prefix_cache,
                chunked_prefill_size=args.chunked_prefill_size,
                max_running_requests=max(args.max_running_requests, 1),
                cuda_graph_max_batch=min(args.max_running_requests, 256), seed=args.seed) as engine:
        startup = time.perf_counter() - t0
        engine.generate(input_ids=[[5] * 32] * 4, sampling_params=dict(max_new_tokens=8, ignore_eos=True))  # warm-up
        engine.flush_cache()
        before = engine.stats()
        results, duration = asyncio.run(_run_all(engine, reqs, args.output_len, args.request_rate, args.seed))
        after = engine.stats()
    row = dict(prefix_cache=prefix_cache, startup_s=startup, **summarize(results, duration))
    for key in ("prefill_tokens_computed", "cached_tokens_hit", "forward_passes", "decode_steps"):
        row[key] = after[key] - before[key]
    row["prompt_tokens"] = sum(len(r) for r in reqs)
    return row


def hf_peer(path: str, reqs: list, output_len: int, batch_sizes: list) -> list:
    """transformers generate on the same prompts, per batch size: throughput rows."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    rows = _hf_runs(model, reqs, output_len, batch_sizes)
    del model
    torch.cuda.empty_cache()
    return rows


def _hf_runs(model, reqs: list, output_len: int, batch_sizes: list) -> list:
    def generate(batch: list) -> int:
        width = max(len(r) for r in batch)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in batch], device="cuda")
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device="cuda")
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=output_len,
                                 min_new_tokens=output_len, do_sample=False)
        return (out.shape[1] - width) * len(batch)

    generate([reqs[0][:64]])  # warm-up (cuBLAS handles, kernels)
    rows = []
    for bs in batch_sizes:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tokens = sum(generate(reqs[i : i + bs]) for i in range(0, len(reqs), bs))
        torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        rows.append(dict(peer="transformers.generate", batch=bs, duration_s=sec, output_tokens=tokens,
                         req_per_s=len(reqs) / sec, out_tok_per_s=tokens / sec))
        print(f"hf generate batch {bs}: {sec:.1f} s, {tokens / sec:,.0f} out tok/s", flush=True)
    return rows


def print_table(res: dict) -> None:
    lim = res["limits"]
    print(f"\n== serving {res['model']} {res['dataset']}  {res['info']['device']}  commit {res['info']['commit']}  "
          f"copy {lim['copy_GBps']:,.0f} GB/s  bf16 {lim['bf16_mm_TFLOPs']:,.0f} TFLOP/s ==")
    print(f"{'run':<22} {'req/s':>7} {'out tok/s':>10} {'TTFT p50/p99 ms':>17} {'ITL p50/p99 ms':>15} "
          f"{'TPOT p50/p99 ms':>16} {'prefill tok':>12} {'vs peer':>8}")
    peer = max((r["out_tok_per_s"] for r in res["peer"]), default=None)
    for r in res["lmlang"]:
        ratio = f"{r['out_tok_per_s'] / peer:.2f}x" if peer else "-"
        print(f"{'lmlang ' + r['prefix_cache']:<22} {r['req_per_s']:>7.2f} {r['out_tok_per_s']:>10,.0f} "
              f"{r['ttft_p50_ms']:>8.0f}/{r['ttft_p99_ms']:<8.0f} {r['itl_p50_ms']:>7.1f}/{r['itl_p99_ms']:<7.1f} "
              f"{r['tpot_p50_ms']:>7.1f}/{r['tpot_p99_ms']:<8.1f} {r['prefill_tokens_computed']:>12,} {ratio:>8}")
    for r in res["peer"]:
        print(f"{'hf generate b=' + str(r['batch']):<22} {r['req_per_s']:>7.2f} {r['out_tok_per_s']:>10,.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--dataset", choices=("random", "shared-prefix"), default="shared-prefix")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--prefix-len", type=int, default=4096)
    p.add_argument("--suffix-len", type=int, default=32)
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--range-ratio", type=float, default=0.5)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--prefix-caches", default="radix")
    p.add_argument("--chunked-prefill-size", type=int, default=8192)
    p.add_argument("--max-running-requests", type=int, default=256)
    p.add_argument("--peer-hf", action="store_true")
    p.add_argument("--hf-batch", default="64,16")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    limits, info, path = start_dummy_model_run("benchmarks/serving.py", args.config)
    vocab = json.loads(pathlib.Path(args.config).read_text())["vocab_size"]
    reqs = make_requests(args, vocab)
    res = dict(model=pathlib.Path(args.config).stem, dataset=args.dataset, args=vars(args) | {"out": str(args.out)},
               info=info, limits=limits, lmlang=[], peer=[])
    for cache in [c for c in args.prefix_caches.split(",") if c]:
        row = bench_engine(path, cache, reqs, args)
        print(f"lmlang {cache}: {row['out_tok_per_s']:,.0f} out tok/s, {row['prefill_tokens_computed']:,} prefill "
              f"tokens computed, TTFT p50 {row['ttft_p50_ms']:.0f} ms (engine up in {row['startup_s']:.0f} s)",
              flush=True)
        res["lmlang"].append(row)
    if args.peer_hf:
        res["peer"] = hf_peer(path, reqs, args.output_len, [int(b) for b in args.hf_batch.split(",") if b])
    args.out.write_text(json.dumps(res, indent=1, default=str))
    print_table(res)


if __name__ == "__main__":
    main()
