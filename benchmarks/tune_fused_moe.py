"""Tunes the fused MoE kernel's launch config on this GPU and writes the table it reads.

    python benchmarks/tune_fused_moe.py --model dsv3 [--batch-sizes 1,2,4,...] [--budget-s 480]
    python benchmarks/tune_fused_moe.py --experts 8 --hidden 4096 --intermediate 14336 --top-k 2 --dtype bf16

For each batch size M it times the whole `fused_experts` call (both grouped GEMMs, which share
one config) over a pruned grid of BLOCK_SIZE_M/N/K, GROUP_SIZE_M, num_warps and num_stages, and
keeps the fastest. The table goes to `kernels/configs/fused_moe/E=..,N=..,K=..,dtype=..,device=...json`
(see `lmlang.kernels.moe_config`), or to `--out-dir`. With `--budget-s`, the search stops when the
time is spent and writes what it has (batch sizes not reached keep no entry; lookups then take
the nearest tuned one). Configs that fail to compile (e.g. shared memory) are skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
import time

import torch
from triton.testing import do_bench

from lmlang.kernels import fp8
from lmlang.kernels.fused_moe import fused_experts
from lmlang.kernels.moe_config import CONFIG_DIR, FusedMoEConfig, config_file_name

MODELS = {  # experts, top_k, hidden, moe intermediate, dtype
    "dsv3": (256, 8, 7168, 2048, "fp8_w8a8"),
    "mixtral": (8, 2, 4096, 14336, "bf16"),
    "qwen3-30b-a3b": (128, 8, 2048, 768, "bf16"),
}
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def search_space(dtype_name: str) -> list[FusedMoEConfig]:
    block_k = (128,) if dtype_name == "fp8_w8a8" else (64, 128)  # fp8: one scale block per step
    grid = itertools.product((16, 32, 64, 128), (64, 128, 256), block_k, (1, 16, 64), (4, 8), (3, 4))
    configs = [FusedMoEConfig(m, n, k, g, w, s) for m, n, k, g, w, s in grid]
    # 128x256 tiles need 8 warps to keep registers in bounds; drop the 4-warp variants
    return [c for c in configs if not (c.BLOCK_SIZE_M * c.BLOCK_SIZE_N >= 128 * 256 and c.num_warps == 4)]


def make_weights(e: int, h: int, inter: int, dtype_name: str) -> dict:
    def rand(*shape):
        return torch.randn(*shape, device="cuda") * shape[-1] ** -0.5

    if dtype_name != "fp8_w8a8":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
        return dict(w13=rand(e, 2 * inter, h).to(dtype), w2=rand(e, h, inter).to(dtype), dtype=dtype, kw={})
    q13 = [fp8.quant_weight_block_fp8(rand(2 * inter, h)) for _ in range(e)]  # one expert at a time
    q2 = [fp8.quant_weight_block_fp8(rand(h, inter)) for _ in range(e)]
    return dict(
        w13=torch.stack([q for q, _ in q13]), w2=torch.stack([q for q, _ in q2]), dtype=torch.bfloat16,
        kw=dict(use_fp8=True, w13_scale=torch.stack([s for _, s in q13]), w2_scale=torch.stack([s for _, s in q2])),
    )


def time_config(cfg: FusedMoEConfig, x, weights, topk_w, topk_ids, rep_ms: int) -> float:
    def run():
        fused_experts(x, weights["w13"], weights["w2"], topk_w, topk_ids, config=cfg, **weights["kw"])

    run()
    return do_bench(run, rep=rep_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS))
    parser.add_argument("--experts", type=int)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32", "fp8_w8a8"))
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument("--rep-ms", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=CONFIG_DIR)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("tune_fused_moe.py needs a CUDA device")
    if args.model:
        e, top_k, h, inter, dtype_name = MODELS[args.model]
    elif None in (args.experts, args.top_k, args.hidden, args.intermediate, args.dtype):
        sys.exit("give --model or all of --experts --top-k --hidden --intermediate --dtype")
    else:
        e, top_k, h, inter, dtype_name = args.experts, args.top_k, args.hidden, args.intermediate, args.dtype

    start = time.monotonic()
    weights = make_weights(e, h, inter, dtype_name)
    configs = search_space(dtype_name)
    device = torch.cuda.get_device_name()
    out_path = args.out_dir / config_file_name(e, 2 * inter, h, dtype_name, device)
    table: dict[str, dict] = {}
    print(f"{device}: E={e} top_k={top_k} H={h} I={inter} {dtype_name}, {len(configs)} configs -> {out_path}")
    for m in (int(s) for s in args.batch_sizes.split(",")):
        x = torch.randn(m, h, device="cuda").to(weights["dtype"])
        topk_w, topk_ids = torch.softmax(torch.randn(m, e, device="cuda"), -1).topk(top_k, -1)
        topk_ids = topk_ids.to(torch.int32)
        best, best_ms = None, float("inf")
        for cfg in configs:
            if args.budget_s and time.monotonic() - start > args.budget_s:
                break
            try:
                ms = time_config(cfg, x, weights, topk_w, topk_ids, args.rep_ms)
            except Exception as err:  # out of shared memory / registers for this tile: not a candidate
                print(f"  M={m} skip {cfg}: {type(err).__name__}", file=sys.stderr)
                continue
            if ms < best_ms:
                best, best_ms = cfg, ms
        if best is None:
            print(f"M={m}: time budget spent before any config ran; stopping")
            break
        table[str(m)] = best.to_json()
        print(f"M={m}: {best_ms * 1e3:.1f} us  {best}", flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(table, indent=1) + "\n")  # after every M: a cut-off run keeps its work
    print(f"wrote {out_path} ({len(table)} batch sizes)")


if __name__ == "__main__":
    main()
