"""Tunes the W8A8 block-scaled FP8 GEMM (`lmlang.kernels.fp8_gemm`) on this GPU; writes its table.

    python benchmarks/tune_fp8_gemm.py --out /tmp/fp8_gemm.json [--shapes v3,extra] [--ms 1,64,4096]

For each weight shape (N, K) and token count M it times every candidate config (tile, warps,
stages, TMA or pointer loads, split-K, persistent grid), checks each result against the float32
reference (NaN-poisoned output, relative Frobenius error < 1e-2), and keeps the fastest. The
candidates are compiled first in parallel worker processes on a small problem of the same
specialization (M = 1 or M > 1): a config that fails to compile or computes a wrong product
there is logged and skipped; a worker that crashes costs only its own configs. `--out` gets the
table in the format `get_fp8_gemm_config` reads (install it as
`kernels/configs/fp8_gemm/device=<name>.json`, the name printed last); `<out>.results.json` gets
every timing. The run stops searching after `--budget-s` seconds and writes what it has. With
`--merge <table>`, `--out` starts as a copy of that table, and only the (shape, M) entries tuned
in this run replace its entries (a re-tune of `--ms 4096` keeps the small-M buckets).

Printed last, per shape and M: the best config, its time, TFLOP/s, speed-up over the bf16
matmul and over `torch._scaled_mm` with row-wise scales (the FP8 peer), the bandwidth it reaches
as a share of the device-to-device copy bandwidth (small M, where the weights' bytes bound it),
the time of the untuned default config, and the time of the same block-scaled product through
cuBLASLt (`lmlang.kernels.fp8_cublas`, checked against the reference like every config) with its
speed-up over bf16 (`-`: not available here, with the reason logged).

`--installed` skips the search: it times the config the installed table picks for each (shape,
M) next to cuBLAS, bf16 and the row-wise peer (a quick way to compare backends at many M, e.g.
to set `CUBLAS_MIN_TOKENS` in `runtime/quantization/fp8_gemm_plan.py`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import pathlib
import sys
import time
import traceback

import torch
from lmlang.kernels import fp8
from lmlang.kernels.fp8_cublas import (
    ROW_MULTIPLE,
    cublas_block_fp8_unsupported_reason,
    cublas_weight_scales,
    fp8_block_gemm_cublas,
)
from lmlang.kernels.fp8_gemm import (
    Fp8GemmConfig,
    device_table_name,
    fp8_block_gemm,
    get_fp8_gemm_config,
    shape_key,
)

SHAPES = {  # name -> (N, K) of the weight
    "v3": {
        "v3.q_a+kv_a": (2112, 7168),
        "v3.o_proj": (7168, 16384),
        "v3.gate_up": (36864, 7168),
        "v3.down": (7168, 18432),
    },
    "extra": {
        "v3.q_b": (24576, 1536),
        "v2lite.kv_a": (576, 2048),
        "v2lite.gate_up": (21888, 2048),
        "v2lite.down": (2048, 11008),
        "llama8b.qkv": (6144, 4096),
        "llama8b.down": (4096, 14336),
    },
}
SPLITS = (1, 2, 4, 8, 16)


def candidates(m: int) -> list[Fp8GemmConfig]:
    """Compile candidates for M (split_k = 1; split and persistent are timing variants)."""
    if m <= 16:
        return [Fp8GemmConfig(16, bn, 1, 4, s, use_tma=t) for bn in (32, 64, 128) for s in (4, 6) for t in (False, True)]
    if m <= 128:
        return [Fp8GemmConfig(bm, bn, 1, 4, 4, use_tma=t) for bm in (32, 64) for bn in (64, 128) for t in (False, True)]
    tiles = ((64, 128, 4), (128, 128, 8), (64, 256, 8))
    out = [Fp8GemmConfig(bm, bn, 8, w, s, use_tma=t) for bm, bn, w in tiles for s in (3, 4, 5) for t in (False, True)]
    out += [Fp8GemmConfig(128, 128, 8, 8, s, use_tma=True, warp_specialize=True) for s in (3, 4)]
    if m >= 1024:  # compute-bound: the grouped order's L2 reuse (GROUP_M) and 3 CTAs/SM of 64x128 with a producer
        out += [Fp8GemmConfig(128, 128, g, 8, 4, use_tma=True, warp_specialize=ws) for g in (4, 16) for ws in (False, True)]
        out += [Fp8GemmConfig(64, 128, 8, 4, s, use_tma=True, warp_specialize=True) for s in (3, 4)]
    return out


def timing_variants(cfg: Fp8GemmConfig, m: int, n: int, k: int, num_sms: int) -> list[Fp8GemmConfig]:
    tiles = -(-m // cfg.BLOCK_M) * -(-n // cfg.BLOCK_N)
    if m <= 128:  # split-K for the weight-bound regime; more splits than k blocks is pointless
        return [dataclasses.replace(cfg, split_k=s) for s in SPLITS if s <= k // 128 // 2 or s == 1]
    return [cfg] + ([dataclasses.replace(cfg, persistent=True)] if tiles > num_sms else [])


def make_operands(m: int, n: int, k: int, seed: int = 0, device: str = "cuda") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, device=device, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, device=device, generator=g) * 0.02).to(torch.bfloat16)
    aq, a_s = fp8.per_token_group_quant_fp8(x)
    wq, w_s = fp8.quant_weight_block_fp8(w)
    return dict(x=x, w=w, aq=aq, a_s=a_s, wq=wq, w_s=w_s)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def compile_and_check(
    cfg_json: dict, m: int, split_twin: bool, n: int = 512, k: int = 2048, device: str = "cuda"
) -> tuple[dict, str]:
    """Worker: runs cfg (and, with `split_twin`, its split-K variant: another compile) on a small
    problem of M's specialization; returns (cfg_json, "" if right else the error)."""
    try:
        cfg = Fp8GemmConfig(**cfg_json)
        ops = make_operands(m, n, k, seed=1, device=device)
        ref = fp8.ref_fp8_block_gemm(ops["aq"], ops["a_s"], ops["wq"], ops["w_s"], torch.float32)
        for variant in [cfg] + ([dataclasses.replace(cfg, split_k=2)] if split_twin else []):
            out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=device)
            fp8_block_gemm(ops["aq"], ops["a_s"], ops["wq"], ops["w_s"], config=variant, out=out)
            if device == "cuda":
                torch.cuda.synchronize()
            err = rel_error(out, ref)
            if not err < 1e-2:
                return cfg_json, f"{variant.short()}: relative error {err:.3g}"
        return cfg_json, ""
    except Exception as e:  # compile error (shared memory, registers, unsupported op): not a candidate
        return cfg_json, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"


def precompile(ms: list[int], workers: int, timeout_s: float) -> dict[tuple[Fp8GemmConfig, bool], str]:
    """Compiles all candidates in parallel; {(cfg, m == 1): error or ""}; missing keys: unknown."""
    jobs = {(cfg, m == 1): m for m in ms for cfg in candidates(m)}
    status: dict[tuple[Fp8GemmConfig, bool], str] = {}
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(compile_and_check, cfg.to_json(), 1 if m == 1 else 48, m <= 128): (cfg, m == 1)
                   for (cfg, _), m in jobs.items()}
        for fut in cf.as_completed(futures, timeout=timeout_s):
            status[futures[fut]] = fut.result()[1]
    except Exception as e:  # a crashed worker or the time limit: the rest stay unknown
        print(f"precompile stopped early ({type(e).__name__}: {e}); {len(status)}/{len(jobs)} configs known",
              file=sys.stderr)
    finally:
        stop_workers(pool)
    return status


def stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Shuts the pool down without waiting and ends its worker processes: a worker stuck in a
    compile must not hold the run."""
    workers_left = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers_left:
        proc.terminate()


def bench(fn, rep_ms: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=rep_ms, return_mode="median") * 1e3  # us


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth, bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    us = bench(lambda: dst.copy_(src), 50)
    return 2 * src.numel() / (us * 1e-6)


def rowwise_peer(ops: dict):
    """torch._scaled_mm with per-row (activation) and per-column (weight) float32 scales."""
    a, sa = fp8.ref_per_token_group_quant_fp8(ops["x"], ops["x"].shape[1])  # one group = the whole row
    w, w_scale = fp8.ref_per_token_group_quant_fp8(ops["w"], ops["w"].shape[1])
    sb = w_scale.t().contiguous()
    return lambda: torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)


def cublas_block(ops: dict, ref: torch.Tensor, name: str) -> tuple:
    """The block-scaled GEMM through cuBLASLt on the same operands (activation scales in its layout,
    rows padded to 4): (callable, "") if available and right, else (None, why not)."""
    m, (n, k) = ops["x"].shape[0], ops["wq"].shape
    reason = cublas_block_fp8_unsupported_reason("cuda", n, k)
    if reason is not None:
        return None, reason
    aq, a_s = fp8.per_token_group_quant_fp8(ops["x"], column_major_scales=True, pad_rows_to=ROW_MULTIPLE)
    w_s = cublas_weight_scales(ops["w_s"])

    def run() -> torch.Tensor:
        return fp8_block_gemm_cublas(aq, a_s, ops["wq"], w_s, torch.bfloat16)

    err = rel_error(run()[:m], ref)
    if not err < 1e-2:
        print(f"  {name} M={m} cuBLAS block: WRONG (relative error {err:.3g})", file=sys.stderr)
        return None, f"wrong (relative error {err:.3g})"
    return run, ""


def tune_one(name: str, n: int, k: int, m: int, known: dict, args, num_sms: int, deadline: float) -> dict:
    ops = make_operands(m, n, k)
    ref = fp8.ref_fp8_block_gemm(ops["aq"], ops["a_s"], ops["wq"], ops["w_s"], torch.float32)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    rep = args.rep_ms if m > 128 else max(5, args.rep_ms // 2)
    timings, best, best_us = [], None, float("inf")
    installed = [get_fp8_gemm_config(m, n, k, torch.cuda.get_device_name())] if args.installed else None
    for cfg in installed or candidates(m):
        status = known.get((cfg, m == 1))
        if status or (status is None and known and cfg.warp_specialize):
            continue  # failed in the workers (logged there), or untested and risky
        for variant in installed or timing_variants(cfg, m, n, k, num_sms):
            if time.monotonic() > deadline:
                break
            try:
                out.fill_(float("nan"))
                fp8_block_gemm(ops["aq"], ops["a_s"], ops["wq"], ops["w_s"], config=variant, out=out)
                err = rel_error(out, ref)
                if not err < 1e-2:
                    print(f"  {name} M={m} {variant.short()}: WRONG (relative error {err:.3g})", file=sys.stderr)
                    continue
                us = bench(lambda v=variant: fp8_block_gemm(ops["aq"], ops["a_s"], ops["wq"], ops["w_s"], config=v), rep)
            except Exception as e:
                print(f"  {name} M={m} {variant.short()}: skipped ({type(e).__name__}: {str(e)[:160]})", file=sys.stderr)
                continue
            timings.append({"config": variant.to_json(), "us": us})
            if us < best_us:
                best, best_us = variant, us
    result = {"name": name, "N": n, "K": k, "M": m, "timings": timings}
    if best is None:
        return result
    default_us = bench(lambda: fp8_block_gemm(ops["aq"], ops["a_s"], ops["wq"], ops["w_s"],
                                              config=_default_config(m, n, k)), rep)
    bf16_us = bench(lambda: torch.nn.functional.linear(ops["x"], ops["w"]), rep)
    try:
        peer = rowwise_peer(ops)
        peer()
        peer_us = bench(peer, rep)
    except Exception as e:  # e.g. shapes _scaled_mm does not take
        print(f"  {name} M={m}: torch._scaled_mm skipped ({type(e).__name__})", file=sys.stderr)
        peer_us = None
    try:
        cublas, cublas_why = cublas_block(ops, ref, name)
        cublas_us = bench(cublas, rep) if cublas is not None else None
    except Exception as e:  # a shape or layout this torch / cuBLAS rejects: report it, keep the entry
        cublas, cublas_why, cublas_us = None, f"{type(e).__name__}: {str(e).strip()[:160]}", None
    if cublas is None:
        print(f"  {name} M={m}: cuBLAS block skipped ({cublas_why})", file=sys.stderr)
    min_bytes = n * k + m * k + 2 * m * n + 4 * (m * k // 128 + -(-n // 128) * k // 128)
    result.update(best=best.to_json(), best_short=best.short(), us=best_us, default_us=default_us, bf16_us=bf16_us,
                  scaled_mm_us=peer_us, cublas_us=cublas_us, cublas_why=cublas_why,
                  tflops=2 * m * n * k / best_us * 1e-6, bytes=min_bytes)
    return result


def _default_config(m: int, n: int, k: int) -> Fp8GemmConfig:
    return get_fp8_gemm_config(m, n, k, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the tuned table (JSON) goes here")
    parser.add_argument("--shapes", default="v3,extra", help=f"comma list of {sorted(SHAPES)}")
    parser.add_argument("--ms", default="4096,1,64", help="token counts M to tune")
    parser.add_argument("--rep-ms", type=int, default=20, help="do_bench repetition time per config (ms)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop searching after this many seconds")
    parser.add_argument("--workers", type=int, default=12, help="parallel compile processes (0: compile in-line)")
    parser.add_argument("--merge", type=pathlib.Path, default=None,
                        help="a table to start from: its entries for shapes and M buckets not tuned here are kept")
    parser.add_argument("--installed", action="store_true",
                        help="no search: time the installed table's config per (shape, M) next to cuBLAS and bf16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("tune_fp8_gemm.py needs a CUDA device")
    start = time.monotonic()
    deadline = start + args.budget_s
    ms = [int(s) for s in args.ms.split(",")]
    shapes = {name: nk for group in args.shapes.split(",") for name, nk in SHAPES[group].items()}
    props = torch.cuda.get_device_properties(0)
    search = args.workers and not args.installed
    known = precompile(ms, args.workers, timeout_s=0.5 * args.budget_s) if search else {}
    failed = sorted(f"{c.short()}@{'M=1' if one else 'M>1'}: {e}" for (c, one), e in known.items() if e)
    print(f"{props.name}, {props.multi_processor_count} SMs; compiled {len(known)} configs in "
          f"{time.monotonic() - start:.0f}s, {len(failed)} failed", flush=True)
    for line in failed:
        print(f"  failed {line}", file=sys.stderr)
    copy_bw = copy_bandwidth()
    print(f"copy bandwidth {copy_bw / 1e12:.2f} TB/s", flush=True)

    table: dict[str, dict] = json.loads(args.merge.read_text()) if args.merge else {}
    results = []
    results_path = args.out.with_suffix(".results.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, (n, k) in shapes.items():
        for m in ms:
            if time.monotonic() > deadline:
                print(f"{name} M={m}: time budget spent, not tuned", flush=True)
                continue
            try:
                r = tune_one(name, n, k, m, known, args, props.multi_processor_count, deadline)
            except Exception:
                print(f"{name} M={m}: failed\n{traceback.format_exc()}", file=sys.stderr)
                continue
            results.append(r)
            if "best" in r:
                table.setdefault(shape_key(n, k), {})[str(m)] = r["best"]
                cublas = f", cuBLAS block {r['cublas_us']:.1f} us" if r["cublas_us"] else ""
                print(f"{name} M={m}: {r['us']:.1f} us {r['best_short']}{cublas} ({time.monotonic() - start:.0f}s)",
                      flush=True)
            args.out.write_text(json.dumps(table, indent=1) + "\n")  # after every entry: a cut-off run keeps its work
            results_path.write_text(json.dumps({"device": props.name, "copy_bw": copy_bw, "results": results}, indent=1))
            torch.cuda.empty_cache()

    print(f"\n{'shape':16} {'N':>6} {'K':>6} {'M':>5}  {'best config':30} {'us':>8} {'TFLOP/s':>8} "
          f"{'x bf16':>7} {'x smm':>6} {'%copy':>6} {'dflt us':>8} {'cublas us':>9} {'cb/bf16':>7}")
    for r in results:
        if "best" not in r:
            print(f"{r['name']:16} {r['N']:6} {r['K']:6} {r['M']:5}  no config ran")
            continue
        smm = f"{r['scaled_mm_us'] / r['us']:.2f}" if r["scaled_mm_us"] else "-"
        pct = f"{100 * r['bytes'] / (r['us'] * 1e-6) / copy_bw:.0f}" if r["M"] <= 128 else "-"
        cublas_us = f"{r['cublas_us']:9.1f}" if r["cublas_us"] else f"{'-':>9}"
        cublas_x = f"{r['bf16_us'] / r['cublas_us']:7.2f}" if r["cublas_us"] else f"{'-':>7}"
        print(f"{r['name']:16} {r['N']:6} {r['K']:6} {r['M']:5}  {r['best_short']:30} {r['us']:8.1f} "
              f"{r['tflops']:8.1f} {r['bf16_us'] / r['us']:7.2f} {smm:>6} {pct:>6} {r['default_us']:8.1f} "
              f"{cublas_us} {cublas_x}")
    print(f"wrote {args.out} ({sum(len(v) for v in table.values())} entries; install as "
          f"kernels/configs/fp8_gemm/{device_table_name(props.name)}) and {results_path}; "
          f"{time.monotonic() - start:.0f}s")


if __name__ == "__main__":
    main()
