"""`gemv_bench.py --fp8`: tunes the W8A16 FP8 GEMV (`lmlang.kernels.gemv_fp8`) on DeepSeek's dense
projections at decode sizes and writes its table.

    python benchmarks/gemv_bench.py --fp8 --out gemv_fp8.json [--m 1,2,4,8] [--reps 10]

Shapes (weight [N, K], K padded to the 128 block) come from `benchmarks/configs/deepseek_v2_lite.json`
and `deepseek_v3.json`: the attention projections a decode step runs (q_proj or q_a_proj stacked
with kv_a_proj_with_mqa, q_b_proj, o_proj; kv_b_proj is absorbed at decode and not run), the
shared experts' gate_up / down, and the dense layers' gate_up / down. `--fp8-shapes` tunes a
subset and `--fp8-merge` folds it into an existing table. For each shape and M, with 128 x 128 scale
blocks and PDL on, inside CUDA graphs over >= 512 MiB of weight copies (nothing served from L2):
- W8A8, what `Fp8Linear` runs today below `CUBLAS_MIN_TOKENS`: per_token_group_quant_fp8 +
  fp8_block_gemm with its tuned table;
- cuBLASLt's block-scaled GEMM (quantization included), where the probe says it runs (for reference);
- bf16 cuBLAS (`F.linear`) of the same shape (what an unquantized model runs);
- every candidate `GemvConfig` of gemv_fp8 (checked first against `ref_gemv_fp8`, relative error < 1e-2).
The table (`--out`, gemv's layout: `shapes` maps "N=..,K=..,dtype=bf16" to {M: config, or null
where W8A8 is at least as fast}) is what `gemv_fp8_config` reads: point `$LMLANG_GEMV_FP8_CONFIG`
at it, or install it as `kernels/configs/gemv_fp8_<device>.json` (the name printed last).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from gemv_bench import MIN_GAIN, candidates, config_name, time_per_call
from limits import measure_limits, print_limits, run_info

from lmlang.kernels.fp8 import fp8_block_gemm, per_token_group_quant_fp8, quant_weight_block_fp8
from lmlang.kernels.fp8_cublas import (
    ROW_MULTIPLE, cublas_block_fp8_unsupported_reason, cublas_weight_scales, fp8_block_gemm_cublas,
)
from lmlang.kernels.gemv import config_file, table_key
from lmlang.kernels.launch import pdl_forced
from lmlang.kernels.gemv_fp8 import TABLE, gemv_fp8, ref_gemv_fp8

BLOCK = (128, 128)
CONFIGS = pathlib.Path(__file__).parent / "configs"
BYTES_PER_REPLAY = 512 << 20
MIN_COPIES = 4
FMA_MAX_M = 4
FMA_TILES = [(8, 512, 4, 1), (8, 1024, 4, 1), (16, 512, 4, 1), (16, 1024, 8, 1)]  # (block_n, block_k, warps, stages)
DOT_TILES = [(16, 128, 4, 4), (32, 128, 4, 4), (64, 128, 4, 4), (128, 128, 8, 3)]  # block_k <= 128: one k block
DEV = "cuda"


def pad(k: int) -> int:
    return -(-k // BLOCK[1]) * BLOCK[1]


def deepseek_shapes() -> dict:
    """name -> (N, K) of the dense projections a decode step runs, for V2-Lite and V3."""
    shapes = {}
    for tag, file in (("v2lite", "deepseek_v2_lite.json"), ("v3", "deepseek_v3.json")):
        c = json.loads((CONFIGS / file).read_text())
        hidden, heads = c["hidden_size"], c["num_attention_heads"]
        qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
        # q_proj / q_a_proj stacked with kv_a_proj_with_mqa, as the MLA layer runs them (`can_fuse_qkv_a`)
        q_width = c.get("q_lora_rank") or heads * qk
        shapes[f"{tag}.q_kv_a"] = (q_width + c["kv_lora_rank"] + c["qk_rope_head_dim"], hidden)
        if c.get("q_lora_rank"):
            shapes[f"{tag}.q_b"] = (heads * qk, c["q_lora_rank"])
        shapes[f"{tag}.o"] = (hidden, heads * c["v_head_dim"])
        shared = c["moe_intermediate_size"] * c["n_shared_experts"]
        shapes[f"{tag}.shared_gate_up"] = (2 * shared, hidden)
        shapes[f"{tag}.shared_down"] = (hidden, shared)
        shapes[f"{tag}.dense_gate_up"] = (2 * c["intermediate_size"], hidden)
        shapes[f"{tag}.dense_down"] = (hidden, c["intermediate_size"])
    return {name: (n, pad(k)) for name, (n, k) in shapes.items()}


def copies(nbytes: int) -> int:
    return max(MIN_COPIES, math.ceil(BYTES_PER_REPLAY / nbytes))


def bench_shape(name: str, n: int, k: int, ms: list, reps: int, copy_GBps: float, sms: int) -> list:
    gen = torch.Generator(device=DEV).manual_seed(n + k)
    w = torch.randn(n, k, device=DEV, generator=gen) * 0.02
    q, s = quant_weight_block_fp8(w, BLOCK)
    cublas_reason = cublas_block_fp8_unsupported_reason(DEV, n, k)
    fp8_w = [(q.clone(), s.clone(), cublas_weight_scales(s) if cublas_reason is None else None)
             for _ in range(copies(n * k))]  # (weight, scale_inv, cuBLAS's scale layout)
    bf16_w = [w.to(torch.bfloat16) for _ in range(copies(n * k * 2))]
    del w
    fp8_bytes = n * k + s.numel() * 4
    rows = []
    for m in ms:
        x = torch.randn(m, k, device=DEV, generator=gen).to(torch.bfloat16)
        ref = ref_gemv_fp8(x, q, s, BLOCK).float()

        def w8a8(ws):
            a, a_s = per_token_group_quant_fp8(x, BLOCK[1])
            return fp8_block_gemm(a, a_s, ws[0], ws[1], torch.bfloat16, BLOCK)

        def w8a8_cublas(ws):
            a, a_s = per_token_group_quant_fp8(x, BLOCK[1], column_major_scales=True, pad_rows_to=ROW_MULTIPLE)
            return fp8_block_gemm_cublas(a, a_s, ws[0], ws[2], torch.bfloat16)[:m]

        def timed(fn: Callable, weights: list, nbytes: int, label: str, tol: float = 1e-2) -> Optional[dict]:
            """Median time of fn over the weight copies, if its product is within `tol` of the reference."""
            try:
                with pdl_forced(True):
                    out = fn(weights[0]).float()
                    err = ((out - ref).norm() / ref.norm()).item()
                    if not err < tol:
                        print(f"  {name} M={m} {label}: rel err {err:.2e}, skipped", flush=True)
                        return None
                    sec = time_per_call(fn, weights, reps)
            except Exception as exc:  # a config the compiler cannot build
                print(f"  {name} M={m} {label}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                return None
            return dict(us=sec * 1e6, of_copy=nbytes / sec / 1e9 / copy_GBps, err=err)

        # W8A8 rounds x to fp8 too, and bf16 multiplies the unquantized weight: looser checks
        base = timed(w8a8, fp8_w, fp8_bytes, "W8A8", tol=0.1)
        cub = timed(w8a8_cublas, fp8_w, fp8_bytes, "W8A8 cuBLAS", tol=0.1) if cublas_reason is None else None
        bf16 = timed(lambda ws: F.linear(x, ws), bf16_w, n * k * 2, "bf16 cuBLAS", tol=0.1)
        results = []
        for cfg in candidates(n, k, m, sms, FMA_TILES, DOT_TILES, FMA_MAX_M):
            r = timed(lambda ws, cfg=cfg: gemv_fp8(x, ws[0], ws[1], BLOCK, None, cfg), fp8_w, fp8_bytes,
                      config_name(cfg))
            if r is not None:
                results.append(dict(r, config=cfg.to_json(), name=config_name(cfg)))
        best = min(results, key=lambda r: r["us"]) if results else None
        wins = best is not None and (base is None or best["us"] < base["us"] * (1 - MIN_GAIN))
        rows.append(dict(shape=name, n=n, k=k, m=m, w8a8=base, w8a8_cublas=cub, bf16=bf16, best=best,
                         use_ours=wins, all=results))
        fmt = lambda r: f"{r['us']:7.1f} us" if r else "      -   "  # noqa: E731
        print(f"{name:<20} M={m}: W8A8 {fmt(base)}  cuBLAS-fp8 {fmt(cub)}  bf16 {fmt(bf16)}  "
              f"W8A16 {fmt(best)} ({best['name'] if best else 'none'})", flush=True)
    del fp8_w, bf16_w
    torch.cuda.empty_cache()
    return rows


def print_table(out: dict) -> None:
    info, limits = out["info"], out["limits"]
    print(f"\n== gemv_fp8 (W8A16) {info['device']}  commit {info['commit']}  copy {limits['copy_GBps']:,.0f} GB/s  "
          f"({out['seconds']:.0f} s) ==")
    print(f"{'shape':<20} {'M':>2} {'W8A8':>7} {'cuBLASf8':>8} {'bf16':>7} {'W8A16':>7} {'%copy':>6} "
          f"{'vs W8A8':>7} {'vs bf16':>7}  best config   (us per call)")
    for r in out["results"]:
        b, w, c, h = r["best"], r["w8a8"], r["w8a8_cublas"], r["bf16"]
        us = lambda e: f"{e['us']:.1f}" if e else "-"  # noqa: E731
        gain = lambda e: f"{e['us'] / b['us']:.2f}x" if e and b else "-"  # noqa: E731
        print(f"{r['shape']:<20} {r['m']:>2} {us(w):>7} {us(c):>8} {us(h):>7} {us(b):>7} "
              f"{(format(b['of_copy'], '.1%') if b else '-'):>6} {gain(w):>7} {gain(h):>7}  "
              + (b["name"] if b else "none") + ("" if r["use_ours"] else "  (W8A8 kept)"))
    print(f"table -> {out['out']}  (install as kernels/configs/{config_file(info['device'], TABLE).name})")


def run_fp8(out_path: pathlib.Path, ms: list, reps: int, names: Optional[list] = None,
            merge: Optional[pathlib.Path] = None) -> None:
    """Tunes `names` (default: every `deepseek_shapes` entry) and writes the table to `out_path`;
    with `merge`, the table starts as that file's and only the tuned shapes' rows change."""
    shapes = deepseek_shapes()
    unknown = set(names or ()) - set(shapes)
    if unknown:
        raise SystemExit(f"unknown DeepSeek shapes {sorted(unknown)}; known: {', '.join(shapes)}")
    t_start = time.perf_counter()
    limits, info = measure_limits(rep_ms=100), run_info()
    print_limits(limits, info)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = dict(device=info["device"], info=info, limits=limits, block=list(BLOCK), shapes={}, results=[],
               out=str(out_path), seconds=0.0)
    if merge is not None:
        base = json.loads(merge.read_text())
        out["shapes"], out["results"] = base["shapes"], base.get("results", [])
    for name, (n, k) in shapes.items():
        if names is not None and name not in names:
            continue
        out["results"] = [r for r in out["results"] if (r["n"], r["k"]) != (n, k)]
        rows = bench_shape(name, n, k, ms, reps, limits["copy_GBps"], sms)
        out["results"] += rows
        for r in rows:
            key = table_key(n, k, torch.bfloat16)
            out["shapes"].setdefault(key, {})[str(r["m"])] = r["best"]["config"] if r["use_ours"] else None
        out["seconds"] = time.perf_counter() - t_start
        out_path.write_text(json.dumps(out, indent=1))
    print_table(out)
