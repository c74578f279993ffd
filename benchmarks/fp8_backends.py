"""The block-scaled FP8 W8A8 GEMM backends of `Fp8Linear` side by side over token counts, to set
its thresholds (`runtime/quantization/fp8_gemm_plan.py`: CUBLAS_MIN_TOKENS, FLASHINFER_MAX_TOKENS).

    python benchmarks/fp8_backends.py --out fp8_backends.json [--shapes v3,v2lite]
        [--ms 1,8,16,32,64,128,256,512,1024,2048,4096] [--reps 10] [--budget-s 240] [--workers 12]

Shapes (weight [N, K], K padded to the 128 block): DeepSeek-V3's q_a+kv_a, q_b, o_proj, dense
gate_up and down, and DeepSeek-V2-Lite's dense projections (`gemv_fp8_tune.deepseek_shapes`, from
`benchmarks/configs`). At each M, per call, inside CUDA graphs over enough weight copies that the
weights do not stay in L2 (`gemv_bench.time_per_call`: median over `--reps` replays):
- bf16: `torch.mm(x, w.t())` of the unquantized weight (what a bf16 model runs);
- triton: `per_token_group_quant_fp8` + `fp8_block_gemm` with the installed tuned table;
- cublas: the same quantization (column-major scales, rows padded to 4) + `fp8_block_gemm_cublas`;
- flashinfer: `fp8_block_gemm_flashinfer` (FlashInfer's SM90 DeepGEMM kernel, x quantized inside);
- rowwise (peer): `torch._scaled_mm` with row-wise scales, x quantized beforehand (the GEMM alone;
  a coarser recipe than 1 x 128 / 128 x 128 blocks).
triton, cublas and flashinfer include their activation quantization, as `Fp8Linear` runs them, and
are first checked against the float32 reference (relative error < 2e-2); a wrong or failing one is
reported, not timed.

Compile time: FlashInfer's kernel is compiled per (N, K, block configuration), 2-3 s each, and the
configuration changes with M. Before timing, the first FlashInfer call of the run (its binding's
build, if not cached, and the availability probe) is timed as `setup_s`; then `--workers` spawned
processes run every (shape, M) once through FlashInfer and Triton, so the compiles run in parallel
into the disk caches (DeepGEMM: `$TRTLLM_DG_CACHE_DIR`, default `~/.tensorrt_llm/cache`; Triton:
`~/.triton/cache`) that the timing process then loads from. The timing stops starting new shapes
after `--budget-s` seconds; `--out` is rewritten after every shape.

Printed last: per shape and M, microseconds per backend with the speed-up over bf16, the fastest
W8A8 backend and its TFLOP/s; then per M, over the shapes, the geometric-mean speed-ups of
FlashInfer over cuBLAS and over Triton, and a suggested FLASHINFER_MAX_TOKENS (the largest M up to
which FlashInfer beats cuBLAS on the geometric mean at every swept M from 16).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import pathlib
import sys
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from gemv_bench import time_per_call  # noqa: E402
from gemv_fp8_tune import deepseek_shapes  # noqa: E402
from tune_fp8_gemm import stop_workers  # noqa: E402
from limits import measure_limits, print_limits, run_info  # noqa: E402

from lmlang.kernels.fp8 import (  # noqa: E402
    fp8_block_gemm, per_token_group_quant_fp8, quant_weight_block_fp8, ref_per_token_group_quant_fp8,
)
from lmlang.kernels.fp8_cublas import (  # noqa: E402
    ROW_MULTIPLE, cublas_block_fp8_unsupported_reason, cublas_weight_scales, fp8_block_gemm_cublas,
)
from lmlang.kernels.fp8_flashinfer import (  # noqa: E402
    flashinfer_block_fp8_unsupported_reason, fp8_block_gemm_flashinfer, ref_fp8_block_gemm_flashinfer,
)
from lmlang.runtime.quantization.fp8_gemm_plan import (  # noqa: E402
    CUBLAS_MIN_TOKENS, FLASHINFER_MAX_TOKENS, FLASHINFER_MIN_TOKENS,
)

BF16 = torch.bfloat16
W8A8 = ("triton", "cublas", "flashinfer")
BACKENDS = ("bf16",) + W8A8 + ("rowwise",)
V3 = {"v3.q_a+kv_a": (2112, 7168), "v3.q_b": (24576, 1536), "v3.o": (7168, 16384),
      "v3.dense_gate_up": (36864, 7168), "v3.dense_down": (7168, 18432)}
BYTES_PER_REPLAY = 256 << 20  # fp8 weight bytes per graph replay (5x the H200's L2)
MAX_COPIES = 64
TOLERANCE = 2e-2


def shapes_for(groups: str) -> dict:
    shapes: dict = {}
    for group in groups.split(","):
        if group == "v3":
            shapes.update(V3)
        elif group == "v2lite":
            shapes.update({name: nk for name, nk in deepseek_shapes().items() if name.startswith("v2lite.")})
        else:
            raise SystemExit(f"unknown shape group {group!r} (v3, v2lite)")
    return shapes


def warm_shape(n: int, k: int, ms: list) -> dict:
    """Worker: runs FlashInfer and Triton (and the quantization kernels) once at every M on
    [n, k], compiling into the disk caches. Returns what ran and how long it took."""
    t0 = time.perf_counter()
    w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.float8_e4m3fn)
    s = torch.rand(-(-n // 128), k // 128, device="cuda") * 1e-3
    flashinfer_reason = flashinfer_block_fp8_unsupported_reason("cuda", n, k)
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=BF16)
        if flashinfer_reason is None:
            fp8_block_gemm_flashinfer(x, w, s)
        fp8_block_gemm(*per_token_group_quant_fp8(x, 128), w, s, BF16)
        per_token_group_quant_fp8(x, 128, column_major_scales=True, pad_rows_to=ROW_MULTIPLE)
    torch.cuda.synchronize()
    return dict(n=n, k=k, flashinfer_reason=flashinfer_reason, seconds=time.perf_counter() - t0)


def warm_in_parallel(shapes: dict, ms: list, workers: int, timeout_s: float) -> list:
    """`warm_shape` for every shape in spawned processes; stops (ending its workers) at the timeout."""
    done: list = []
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(warm_shape, n, k, ms) for n, k in shapes.values()]
        for fut in cf.as_completed(futures, timeout=timeout_s):
            done.append(fut.result())
    except Exception as e:  # a crashed worker or the time limit: the timing process compiles the rest itself
        print(f"parallel warm-up stopped early ({type(e).__name__}: {e}); {len(done)}/{len(shapes)} shapes warm",
              file=sys.stderr)
    finally:
        stop_workers(pool)
    return done


def rowwise_quant(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t [R, K] -> (fp8 [R, K], float32 scales [R, 1]): one scale per row (the peer's recipe)."""
    return ref_per_token_group_quant_fp8(t, t.shape[1])


def bench_shape(name: str, n: int, k: int, ms: list, reps: int, reasons: dict) -> list:
    """Rows of timings at every M; `reasons`: backend -> why it cannot run here (None or absent: it can)."""
    gen = torch.Generator(device="cuda").manual_seed(n + k)
    w = torch.randn(n, k, device="cuda", generator=gen) * k**-0.5
    w_fp8, w_s = quant_weight_block_fp8(w)
    w_row, w_row_s = rowwise_quant(w)
    copies = max(2, min(MAX_COPIES, math.ceil(BYTES_PER_REPLAY / (n * k))))
    weights = [dict(bf16=w.to(BF16), fp8=w_fp8.clone(), s=w_s.clone(), row=w_row.clone(), row_s=w_row_s.t().clone(),
                    s_cublas=cublas_weight_scales(w_s) if reasons["cublas"] is None else None)
               for _ in range(copies)]
    del w
    rows = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", generator=gen).to(BF16)
        x_row, x_row_s = rowwise_quant(x)
        ref = ref_fp8_block_gemm_flashinfer(x, w_fp8, w_s, torch.float32)

        def triton(c):
            return fp8_block_gemm(*per_token_group_quant_fp8(x, 128), c["fp8"], c["s"], BF16)

        def cublas(c):
            a, a_s = per_token_group_quant_fp8(x, 128, column_major_scales=True, pad_rows_to=ROW_MULTIPLE)
            return fp8_block_gemm_cublas(a, a_s, c["fp8"], c["s_cublas"], BF16)[:m]

        fns: dict[str, Callable] = {
            "bf16": lambda c: torch.mm(x, c["bf16"].t()),
            "triton": triton,
            "cublas": cublas,
            "flashinfer": lambda c: fp8_block_gemm_flashinfer(x, c["fp8"], c["s"]),
            "rowwise": lambda c: torch._scaled_mm(x_row, c["row"].t(), scale_a=x_row_s, scale_b=c["row_s"],
                                                  out_dtype=BF16),
        }
        row: dict = dict(shape=name, N=n, K=k, M=m, us={}, err={}, skipped={})
        for backend, fn in fns.items():
            if reasons.get(backend):
                row["skipped"][backend] = reasons[backend]
                continue
            try:
                if backend in W8A8:
                    err = float((fn(weights[0]).float() - ref).norm() / ref.norm())
                    row["err"][backend] = err
                    if not err < TOLERANCE:
                        row["skipped"][backend] = f"wrong (relative error {err:.3g})"
                        continue
                row["us"][backend] = time_per_call(fn, weights, reps) * 1e6
            except Exception as e:  # a shape a backend rejects: reported, the others still run
                row["skipped"][backend] = f"{type(e).__name__}: {str(e).strip()[:160]}"
        timed = {b: us for b, us in row["us"].items() if b in W8A8}
        if timed:
            row["best"] = min(timed, key=timed.get)
            row["best_tflops"] = 2 * m * n * k / timed[row["best"]] * 1e-6
        for backend, why in row["skipped"].items():
            print(f"  {name} M={m} {backend}: {why}", file=sys.stderr)
        rows.append(row)
        print(f"{name} M={m}: " + "  ".join(f"{b} {us:.1f}" for b, us in row["us"].items()), flush=True)
    del weights
    torch.cuda.empty_cache()
    return rows


def geomean(values: list) -> Optional[float]:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summary(rows: list, ms: list) -> dict:
    """Per M, geometric-mean speed-ups of FlashInfer over cuBLAS and Triton over the shapes, and
    the suggested FLASHINFER_MAX_TOKENS."""
    per_m = {}
    for m in ms:
        at_m = [r["us"] for r in rows if r["M"] == m]
        per_m[m] = {
            f"flashinfer_vs_{other}": geomean([us[other] / us["flashinfer"] for us in at_m
                                               if "flashinfer" in us and other in us])
            for other in ("cublas", "triton")
        }
        per_m[m]["fastest_counts"] = {b: sum(1 for r in rows if r["M"] == m and r.get("best") == b) for b in W8A8}
    suggested = None
    for m in sorted(m for m in ms if m >= 16):
        gain = per_m[m]["flashinfer_vs_cublas"]
        if gain is None or gain < 1.0:
            break
        suggested = m
    return dict(per_m=per_m, suggested_flashinfer_max_tokens=suggested)


def print_table(out: dict) -> None:
    info, limits = out["info"], out["limits"]
    print(f"\n== FP8 block W8A8 backends  {info['device']}  commit {info['commit']}  bf16 mm "
          f"{limits['bf16_mm_TFLOPs']:,.0f} TFLOP/s  ({out['seconds']:.0f} s, setup {out['setup_s']:.0f} s, "
          f"warm-up {out['warm_s']:.0f} s) ==")
    print("us per call (x bf16 = bf16 us / us); triton, cublas, flashinfer include the activation quantization")
    header = " ".join(f"{b:>16}" for b in BACKENDS)
    print(f"{'shape':<20} {'M':>5} {header}  {'fastest W8A8':>12} {'TFLOP/s':>7}")
    for r in out["rows"]:
        us, bf16 = r["us"], r["us"].get("bf16")
        cells = [f"{us[b]:8.1f} ({bf16 / us[b]:5.2f})" if b in us and bf16 else
                 (f"{us[b]:16.1f}" if b in us else f"{'-':>16}") for b in BACKENDS]
        best = f"{r['best']:>12} {r['best_tflops']:7.0f}" if "best" in r else f"{'-':>12} {'-':>7}"
        print(f"{r['shape']:<20} {r['M']:>5} " + " ".join(cells) + f"  {best}")
    print(f"\n{'M':>5} {'FI vs cuBLAS':>12} {'FI vs Triton':>12}  fastest W8A8 (shapes)   geometric means over shapes")
    for m, s in out["summary"]["per_m"].items():
        fmt = lambda v: f"{v:12.2f}" if v else f"{'-':>12}"  # noqa: E731
        counts = ", ".join(f"{b} {c}" for b, c in s["fastest_counts"].items() if c)
        print(f"{m:>5} {fmt(s['flashinfer_vs_cublas'])} {fmt(s['flashinfer_vs_triton'])}  {counts}")
    unavailable = {name: {b: why for b, why in reasons.items() if why} for name, reasons in out["availability"].items()}
    print(f"not available: {({name: r for name, r in unavailable.items() if r}) or 'none'}")
    print(f"suggested FLASHINFER_MAX_TOKENS: {out['summary']['suggested_flashinfer_max_tokens']} "
          f"(now {out['thresholds']['FLASHINFER_MAX_TOKENS']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="results (JSON) go here")
    parser.add_argument("--shapes", default="v3,v2lite", help="comma list of v3, v2lite")
    parser.add_argument("--ms", default="1,8,16,32,64,128,256,512,1024,2048,4096", help="token counts M")
    parser.add_argument("--reps", type=int, default=10, help="graph replays per timing (median)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no new shape after this many seconds")
    parser.add_argument("--workers", type=int, default=12, help="parallel warm-up processes (0: none)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("fp8_backends.py needs a CUDA device")
    start = time.perf_counter()
    ms = [int(v) for v in args.ms.split(",")]
    shapes = shapes_for(args.shapes)
    limits, info = measure_limits(rep_ms=100), run_info()
    print_limits(limits, info)

    def availability_of(n: int, k: int) -> dict:  # None: the backend runs this shape here
        return dict(cublas=cublas_block_fp8_unsupported_reason("cuda", n, k),
                    flashinfer=flashinfer_block_fp8_unsupported_reason("cuda", n, k))

    t_setup = time.perf_counter()
    first = next(iter(shapes))
    availability = {first: availability_of(*shapes[first])}  # builds FlashInfer's binding, compiles its probe
    setup_s = time.perf_counter() - t_setup
    print(f"first FlashInfer probe ({first}): {setup_s:.1f} s", flush=True)
    t_warm = time.perf_counter()
    warm_timeout = min(0.4 * args.budget_s, max(10.0, 0.5 * (args.budget_s - (t_warm - start))))
    warm = warm_in_parallel(shapes, ms, args.workers, warm_timeout) if args.workers else []
    warm_s = time.perf_counter() - t_warm
    print(f"parallel warm-up: {len(warm)}/{len(shapes)} shapes in {warm_s:.0f} s", flush=True)
    availability.update({name: availability_of(n, k) for name, (n, k) in shapes.items() if name != first})
    print(f"availability (None: runs): {json.dumps(availability)}", flush=True)
    out = dict(info=info, limits=limits, ms=ms, thresholds=dict(CUBLAS_MIN_TOKENS=CUBLAS_MIN_TOKENS,
               FLASHINFER_MIN_TOKENS=FLASHINFER_MIN_TOKENS, FLASHINFER_MAX_TOKENS=FLASHINFER_MAX_TOKENS),
               availability=availability, setup_s=setup_s, warm_s=warm_s, warm=warm, rows=[], skipped_shapes=[],
               seconds=0.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, (n, k) in shapes.items():
        if time.perf_counter() - start > args.budget_s:
            out["skipped_shapes"].append(name)
            print(f"{name}: time budget spent, not timed", flush=True)
            continue
        out["rows"] += bench_shape(name, n, k, ms, args.reps, availability[name])
        out.update(summary=summary(out["rows"], ms), seconds=time.perf_counter() - start)
        args.out.write_text(json.dumps(out, indent=1))
    out.update(summary=summary(out["rows"], ms), seconds=time.perf_counter() - start)
    args.out.write_text(json.dumps(out, indent=1))
    print_table(out)


if __name__ == "__main__":
    main()
