"""Absorbed MLA decode over the latent cache, timed as a decode step runs it: CUDA-graph replays of
one call per layer, each layer over its own cache (so nothing is served from the 50 MB L2).

    python benchmarks/mla_decode_bench.py --out mla.json [--batches 1,2,4,8,16,32,64,128] [--heads 16,128]
                                          [--sweep-max-batch 8]

Kernels: FlashInfer's MLA decode (its Hopper "fa3" path, planned outside the timing, as the
runtime runs it) and our Triton split-K kernel (`lmlang.kernels.mla_decode`, default tiling and
splits; up to `--sweep-max-batch` also a sweep of tilings and split counts). Shapes:
kv_lora_rank 512 + rope 64, bf16, page size 1, ctx 4096 per request; 16 heads (DeepSeek-V2-Lite,
~30 FLOP per latent byte: bandwidth-bound) and 128 (V3, ~240: tensor-core-bound). Slot layouts:
`scattered` (every slot of the pool in random order: the worst case) and `contiguous` (each
request one run of slots, the runs in random order: what the slot allocator hands a prompt).

Limits measured in the same run (`limits.py`): copy bandwidth (1 GiB copy, read + write), the
bf16 matmul rate, and, per batch, `copy floor`: the same chain of per-layer copies moving as many
bytes (read + write) as the kernel reads, i.e. what the memory system delivers at that transfer
size. "of roofline" = max(bytes / copy bandwidth, FLOPs / matmul rate) / time. Prints the limits
first and the table last; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from gemv_bench import time_graph  # noqa: E402
from limits import measure_limits, print_limits, run_info  # noqa: E402

CTX, RANK, ROPE = 4096, 512, 64
ROW_BYTES = (RANK + ROPE) * 2
LAYER_BYTES_TARGET = 256 << 20  # >= this many cache bytes per graph replay (5x the L2)
MAX_LAYERS = 32
REPS = 20


def _slots(b: int, layout: str, device: str) -> torch.Tensor:
    """[b * CTX] int32 slots 1..b * CTX of one layer's pool (slot 0 is the pool's dummy row)."""
    if layout == "scattered":
        return (torch.randperm(b * CTX, device=device) + 1).to(torch.int32)
    order = torch.randperm(b, device=device)
    return (order[:, None] * CTX + torch.arange(CTX, device=device)[None, :] + 1).reshape(-1).to(torch.int32)


def _layers(b: int) -> int:
    return max(2, min(MAX_LAYERS, -(-LAYER_BYTES_TARGET // (b * CTX * ROW_BYTES))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--heads", default="16,128")
    parser.add_argument("--layouts", default="scattered,contiguous")
    parser.add_argument("--sweep-max-batch", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("mla_decode_bench.py needs a CUDA device")
    from lmlang.kernels import mla_decode
    from lmlang.runtime.attention.flashinfer_mla import FlashInferMLADecode, MLADecodeShape

    dev, scale = "cuda", 192**-0.5
    limits, info = measure_limits(), run_info()
    print_limits(limits, info)
    decoder = FlashInferMLADecode(torch.device(dev), "auto")
    rows, floors = [], {}
    batches = [int(x) for x in args.batches.split(",")]
    for b in batches:
        nbytes, layers = b * CTX * ROW_BYTES, _layers(b)
        caches = [torch.randn(b * CTX + 1, 1, RANK + ROPE, device=dev, dtype=torch.bfloat16) for _ in range(layers)]
        src = [c.view(-1)[: nbytes // 4] for c in caches]  # bf16 elements: half the bytes, copied = read + write
        dst = [torch.empty_like(s) for s in src]
        floors[b] = time_graph([lambda s=s, d=d: d.copy_(s) for s, d in zip(src, dst)], REPS) / layers
        del dst
        indptr = torch.arange(b + 1, device=dev, dtype=torch.int32) * CTX
        for heads in (int(x) for x in args.heads.split(",")):
            flops = 2 * b * heads * CTX * (RANK + ROPE + RANK)
            roofline = max(nbytes / (limits["copy_GBps"] * 1e9), flops / (limits["bf16_mm_TFLOPs"] * 1e12))
            qn = torch.randn(b, heads, RANK, device=dev, dtype=torch.bfloat16)
            qp = torch.randn(b, heads, ROPE, device=dev, dtype=torch.bfloat16)
            for layout in args.layouts.split(","):
                if layout == "contiguous" and b not in (1, 32, 128):
                    continue
                slots = _slots(b, layout, dev)
                variants = {"flashinfer": None, "triton": (None, None)}
                if b <= args.sweep_max_batch and layout == "scattered":
                    for cfg in ((16, 32, 4, 2), (16, 64, 4, 2), (64, 32, 8, 2), (64, 32, 4, 2), (32, 32, 4, 2)):
                        if cfg[0] > heads:
                            continue
                        for splits in (32, 64, 128):
                            variants[f"triton {cfg[0]}x{cfg[1]} w{cfg[2]} s{splits}"] = (
                                mla_decode.MLADecodeConfig(*cfg), splits)
                ref = mla_decode.ref_mla_decode(qn, qp, caches[0], indptr, slots, scale).float()
                for name, variant in variants.items():
                    if variant is None:
                        decoder.plan([CTX] * b, slots, MLADecodeShape(heads, RANK, ROPE, scale, torch.bfloat16))
                        calls = [lambda c=c: decoder.run(qn, qp, c) for c in caches]
                    else:
                        cfg, splits = variant
                        calls = [lambda c=c, cfg=cfg, s=splits: mla_decode.mla_decode(
                            qn, qp, c, indptr, slots, scale, num_kv_splits=s, config=cfg) for c in caches]
                    try:
                        err = float((calls[0]().float() - ref).abs().max())
                        sec = time_graph(calls, REPS) / layers
                    except Exception as e:  # e.g. a tiling out of shared memory
                        print(f"H{heads} B{b} {layout} {name}: skipped ({type(e).__name__}: {str(e)[:80]})", flush=True)
                        continue
                    row = dict(heads=heads, batch=b, layout=layout, kernel=name, us=sec * 1e6, max_abs_err=err,
                               GBps=nbytes / sec / 1e9, of_copy_bw=nbytes / sec / 1e9 / limits["copy_GBps"],
                               of_roofline=roofline / sec, of_copy_floor=floors[b] / sec, layers=layers)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    args.out.write_text(json.dumps(dict(info=info, limits=limits, copy_floor_us=floors, rows=rows),
                                                   indent=1))
        del caches, src
        torch.cuda.empty_cache()
    print(f"\n# copy floor per layer (us): " + ", ".join(f"B{b} {t * 1e6:.2f}" for b, t in floors.items()))
    print(f"{'H':>4} {'B':>4} {'layout':<11} {'kernel':<26} {'us':>8} {'GB/s':>7} {'of bw':>6} {'of roof':>7} "
          f"{'of floor':>8}")
    best = {}
    for r in rows:
        key = (r["heads"], r["batch"], r["layout"], r["kernel"].split(" ")[0])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    for r in rows:
        if r["kernel"] in ("flashinfer", "triton") or best[(r["heads"], r["batch"], r["layout"], "triton")] is r:
            print(f"{r['heads']:>4} {r['batch']:>4} {r['layout']:<11} {r['kernel']:<26} {r['us']:>8.1f} "
                  f"{r['GBps']:>7,.0f} {r['of_copy_bw']:>6.1%} {r['of_roofline']:>7.1%} {r['of_copy_floor']:>8.1%}")


if __name__ == "__main__":
    main()
