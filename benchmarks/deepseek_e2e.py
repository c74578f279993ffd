"""End-to-end decode throughput of a DeepSeek-V2-Lite-shaped model with random weights, bf16 vs FP8.

    python benchmarks/deepseek_e2e.py --out deepseek_e2e.json [--config benchmarks/configs/deepseek_v2_lite.json]
        [--batches 1,32,128] [--prompt-len 512] [--decode-steps 256] [--repeats 3] [--quantizations none,fp8]
        [--modes engine,replay]

For each quantization the engine (`lmlang.runtime.Engine`, CUDA, `load_format="dummy"`, so the
config's real shapes with seeded random weights; FP8 = online block-wise W8A8 of those weights)
serves batches of B requests of `--prompt-len` random tokens. Decode throughput comes from runs
that differ only in `max_new_tokens` (8 and 8 + decode_steps): the extra time is pure decoding,
so `B * decode_steps / extra_seconds` excludes start-up and prefill. Each length runs `--repeats`
times and the medians are subtracted; `spread` is (slowest - fastest long run) / extra time, the
measurement's own uncertainty. (Two runs of 64 extra steps, fastest kept, moved the FP8 batch-128
figure between 4,653 and 18,350 tok/s across sessions: the prefill's variance was as large as
the decode time. 256 steps and medians make decode dominate.)

Mode `replay` measures the decode step alone, without the engine's scheduler and front end: a
`ModelRunner` with the same settings captures its CUDA graphs, then one decode step of B
sequences at the same context (random new token ids, so MoE routing spreads as in serving;
contexts on disjoint slots) is replayed `REPLAY_REPS` times and the median GPU time per replay
is the step time (the batch is built and planned once, outside the timing).

The roofline of one decode step at batch B is max(bytes / copy bandwidth, flops / matmul rate):
bytes = every weight a step reads (attention, dense and shared MLPs, the LM head, the embedding
rows, and the routed experts that B tokens are expected to hit, E * (1 - (1 - k / E)^B) per MoE
layer, at their stored width) plus the latent KV cache of B contexts; flops = 2 * active
parameters * B. Copy bandwidth and the bf16 / fp8 matmul rates are measured in the same run
before the engine starts. The ratio reported is roofline time / measured time.

The other configs in benchmarks/configs are real checkpoints' config.json files as data:
DeepSeek-V2-Lite, DeepSeek-V3 (FP8 release: `quantization_config` with 128 x 128 blocks; its
dummy weights are drawn in bf16 and quantized online), a DeepSeek-V3 slice (real layer shapes,
4 layers: 1 dense + 3 MoE, which one H200 holds) and Qwen3-30B-A3B.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
DEFAULT_CONFIG = ROOT / "configs" / "deepseek_v2_lite.json"
WARMUP_TOKENS = 8
REPLAY_REPS = 50


def measure_limits() -> dict:
    """Copy bandwidth (GB/s) and dense bf16 / fp8 matmul rates (TFLOP/s) of this GPU, measured now."""
    from triton.testing import do_bench

    n = 1 << 30
    src, dst = torch.empty(n, dtype=torch.uint8, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    limits = {"copy_GBps": 2 * n / do_bench(lambda: dst.copy_(src), rep=200) / 1e6}
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    limits["bf16_mm_TFLOPs"] = 2 * 8192**3 / do_bench(lambda: a @ b, rep=200) / 1e9
    a8, b8, one = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t(), torch.ones((), device="cuda")
    limits["fp8_mm_TFLOPs"] = 2 * 8192**3 / do_bench(
        lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), rep=200
    ) / 1e9
    del a, b, a8, b8
    torch.cuda.empty_cache()
    return limits


def decode_step_cost(config: dict, batch: int, context: int, weight_bytes: float) -> tuple[float, float]:
    """(bytes read, flops) of one decode step of `batch` sequences of `context` tokens."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads, rank, rope = config["num_attention_heads"], config["kv_lora_rank"], config["qk_rope_head_dim"]
    nope, v = config["qk_nope_head_dim"], config["v_head_dim"]
    q_rank = config.get("q_lora_rank")
    q = h * q_rank + q_rank * heads * (nope + rope) if q_rank else h * heads * (nope + rope)
    attn = q + h * (rank + rope) + rank * heads * (nope + v) + heads * v * h
    dense_layers = config["first_k_dense_replace"]
    moe_layers = layers - dense_layers
    experts, k, inter = config["n_routed_experts"], config["num_experts_per_tok"], config["moe_intermediate_size"]
    expert = 3 * h * inter
    shared = config.get("n_shared_experts") or 0
    hit = experts * (1 - (1 - k / experts) ** batch)  # expected distinct experts per MoE layer
    matrices = layers * attn + dense_layers * 3 * h * config["intermediate_size"] + moe_layers * shared * expert
    params_read = matrices + moe_layers * hit * expert
    bytes_read = params_read * weight_bytes + vocab * h * 2 + batch * h * 2  # LM head, embedding rows in bf16
    bytes_read += batch * context * layers * (rank + rope) * 2  # bf16 latent cache
    active = matrices + moe_layers * k * expert + vocab * h
    flops = 2 * active * batch + 4 * batch * context * layers * heads * (rank + rope)  # + absorbed attention
    return bytes_read, flops


def run_engine(model_dir: str, quantization: str, batches: list, prompt_len: int, steps: int, vocab: int,
               attention_backend: str, repeats: int) -> dict:
    from lmlang.runtime import Engine

    rng = random.Random(0)
    results = {}
    with Engine(model_dir, device="cuda", dtype="bfloat16", load_format="dummy", attention_backend=attention_backend,
                quantization=None if quantization == "none" else quantization,
                max_running_requests=max(batches), chunked_prefill_size=8192) as engine:
        for batch in batches:
            prompts = [[rng.randrange(3, vocab) for _ in range(prompt_len)] for _ in range(batch)]
            times: dict = {WARMUP_TOKENS: [], WARMUP_TOKENS + steps: []}
            # a full-length warm-up run (kernel compilation for every shape, allocator), then the
            # short and the long run `repeats` times each; the medians are compared
            for run, new_tokens in enumerate((WARMUP_TOKENS + steps, *list(times) * repeats)):
                engine.flush_cache()
                params = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
                start = time.perf_counter()
                engine.generate(input_ids=prompts, sampling_params=params)
                if run > 0:
                    times[new_tokens].append(time.perf_counter() - start)
            long_runs = times[WARMUP_TOKENS + steps]
            seconds = statistics.median(long_runs) - statistics.median(times[WARMUP_TOKENS])
            spread = (max(long_runs) - min(long_runs)) / seconds
            results[batch] = {"decode_s": seconds, "tok_per_s": batch * steps / seconds,
                              "step_ms": 1e3 * seconds / steps, "spread": spread, "times": times}
            print(f"  {quantization:>5} batch {batch:>4}: {results[batch]['tok_per_s']:,.0f} tok/s "
                  f"({results[batch]['step_ms']:.2f} ms/step, spread {spread:.1%})", flush=True)
    return results


def run_replay(model_dir: str, quantization: str, batches: list, context: int, vocab: int,
               attention_backend: str) -> dict:
    """Decode step time from CUDA-graph replays of a ModelRunner (see the module docstring)."""
    from gemv_bench import time_replays  # sibling scripts, on sys.path when run from here
    from one_batch import make_runner, release_memory

    from lmlang.runtime.forward_batch import ForwardMode
    from lmlang.runtime.model_runner import SeqChunk

    runner, _ = make_runner(model_dir, attention_backend=attention_backend, cuda_graph_max_batch=max(batches),
                            max_running_requests=max(batches), quantization=None if quantization == "none" else quantization)
    graphs, rng, results = runner.graph_runner, random.Random(1), {}
    for batch in batches:
        chunks = [SeqChunk([rng.randrange(3, vocab) for _ in range(context + 1)], context, context + 1,
                           torch.arange(1 + i * (context + 1), 1 + (i + 1) * (context + 1))) for i in range(batch)]
        bucket = graphs.bucket(batch)
        graphs.replay(runner.builder.build(ForwardMode.DECODE, chunks, pad_to=bucket))  # plans this batch
        times = [t * 1e3 for t in time_replays(graphs.graphs[bucket], REPLAY_REPS)]  # ms
        step_ms = statistics.median(times)
        results[batch] = {"step_ms": step_ms, "tok_per_s": batch / step_ms * 1e3,
                          "spread": (max(times) - min(times)) / step_ms}
        print(f"  {quantization:>5} batch {batch:>4} (replay): {results[batch]['tok_per_s']:,.0f} tok/s "
              f"({step_ms:.2f} ms/step)", flush=True)
    del runner, graphs
    release_memory()
    return results


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--out", default="deepseek_e2e.json")
    parser.add_argument("--batches", default="1,32,128")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--decode-steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quantizations", default="none,fp8")
    parser.add_argument("--modes", default="engine,replay", help="engine (served requests) and/or replay")
    parser.add_argument("--attention-backend", default="mla",
                        help="'mla' plans the KV layout MLA layers read, also under CUDA graphs")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("deepseek_e2e.py needs a CUDA device")
    from lmlang.testing import make_tokenizer

    config = json.loads(pathlib.Path(args.config).read_text())
    batches = [int(b) for b in args.batches.split(",")]
    limits = measure_limits()
    print("limits:", {k: round(v, 1) for k, v in limits.items()}, flush=True)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": torch.cuda.get_device_name(),
              "commit": _commit(), "config": pathlib.Path(args.config).name, "prompt_len": args.prompt_len,
              "decode_steps": args.decode_steps, "repeats": args.repeats, "limits": limits, "runs": {}}
    with tempfile.TemporaryDirectory() as model_dir:
        shutil.copy(args.config, pathlib.Path(model_dir) / "config.json")
        make_tokenizer(model_dir)  # token ids are sent directly; the tokenizer only detokenizes
        context = args.prompt_len + WARMUP_TOKENS + args.decode_steps // 2
        for quantization in args.quantizations.split(","):
            for mode in args.modes.split(","):
                if mode == "engine":
                    runs = run_engine(model_dir, quantization, batches, args.prompt_len, args.decode_steps,
                                      config["vocab_size"], args.attention_backend, args.repeats)
                else:
                    runs = run_replay(model_dir, quantization, batches, context, config["vocab_size"],
                                      args.attention_backend)
                weight_bytes = 1 if quantization == "fp8" else 2
                rate = limits["fp8_mm_TFLOPs" if quantization == "fp8" else "bf16_mm_TFLOPs"]
                for batch, run in runs.items():
                    bytes_read, flops = decode_step_cost(config, batch, context, weight_bytes)
                    roofline_ms = max(bytes_read / limits["copy_GBps"] / 1e6, flops / rate / 1e9)
                    run.update(roofline_step_ms=roofline_ms, roofline_ratio=roofline_ms / run["step_ms"],
                               bytes_per_step=bytes_read, flops_per_step=flops)
                report["runs"][f"{quantization} {mode}"] = runs
    print(f"\n{'quant':>6} {'mode':>7} {'batch':>6} {'tok/s':>10} {'ms/step':>8} {'roofline ms':>11} {'ratio':>6} "
          f"{'spread':>7}")
    for key, runs in report["runs"].items():
        quantization, mode = key.split()
        for batch, r in runs.items():
            print(f"{quantization:>6} {mode:>7} {batch:>6} {r['tok_per_s']:>10,.0f} {r['step_ms']:>8.2f} "
                  f"{r['roofline_step_ms']:>11.2f} {r['roofline_ratio']:>6.2f} {r['spread']:>7.1%}")
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
