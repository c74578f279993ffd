"""Times every lmlang kernel against its torch reference on the GPU, at real model shapes.

    python benchmarks/kernels.py --out kernels.json [--only rmsnorm,fp8_gemm] [--rep-ms 100]

Shapes are Llama-3.1-8B's (hidden 4096, 32/8 heads of 128, MLP 14336, vocab 128256) and
DeepSeek-V3's (hidden 7168, 128 heads, MLA latent 512 + rope 64, 256 experts top-8 of width
2048, FP8 128x128 blocks), DeepSeek-V2-Lite's experts (64, top-6, hidden 2048, width 1408), the MoE
routers of both (`--only moe_routing`), and speculative-decoding trees of 8-64 draft tokens over
2-4k prefixes. Each row gives the kernel's and the reference's median time, and the kernel's rate
against a physical limit measured in the same run: copy bandwidth (a large device-to-device
copy) for memory-bound kernels, the bf16 / fp8 dense matmul rate (torch at 8192^3) for GEMMs
and attention. Prints a table and writes everything as JSON to `--out`.

`--only decode_attention_small` runs the small-batch decode attention study instead of these
rows (one launch per layer with rotary + KV store fused, FlashInfer as the peer, each inside a
CUDA graph of 32 layers): see `decode_attention_small.py`, which prints its own tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import pathlib
import subprocess
import sys
from typing import Callable, Optional

import torch
from triton.testing import do_bench

from lmlang.kernels import (
    activation, bitmask, decode_attention, fp8, fused_moe, kv_store, mla_decode, moe_routing, rmsnorm, rotary,
    tree_attention,
)
from lmlang.runtime.layers.moe import RoutingConfig, select_experts

DEV = "cuda"
BF16 = torch.bfloat16


@dataclasses.dataclass
class Case:
    kernel: str  # name used by --only
    shape: str
    run: Callable[[], object]
    ref: Callable[[], object]
    bytes_moved: float = 0.0  # memory-bound kernels: minimal bytes read + written
    flops: float = 0.0  # GEMMs: useful floating-point operations
    limit: str = "copy"  # "copy", "bf16_mm" or "fp8_mm"
    peer: Optional[Callable[[], object]] = None  # another implementation worth comparing with
    peer_name: str = ""


def measure_limits(rep_ms: int) -> dict:
    """Copy bandwidth (GB/s) and dense matmul rates (TFLOP/s) of this device, measured now."""
    n = 1 << 30
    src, dst = torch.empty(n, dtype=torch.uint8, device=DEV), torch.empty(n, dtype=torch.uint8, device=DEV)
    copy_ms = do_bench(lambda: dst.copy_(src), rep=rep_ms)
    limits = {"copy_GBps": 2 * n / copy_ms / 1e6}
    del src, dst
    a, b = torch.randn(8192, 8192, device=DEV, dtype=BF16), torch.randn(8192, 8192, device=DEV, dtype=BF16)
    limits["bf16_mm_TFLOPs"] = 2 * 8192**3 / do_bench(lambda: a @ b, rep=rep_ms) / 1e9
    try:
        a8, b8 = a.to(fp8.FP8_DTYPE), b.to(fp8.FP8_DTYPE).t()
        one = torch.ones((), device=DEV)
        limits["fp8_mm_TFLOPs"] = 2 * 8192**3 / do_bench(
            lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=BF16), rep=rep_ms
        ) / 1e9
    except (RuntimeError, AttributeError) as e:  # no fp8 tensor cores (pre-Hopper) or no _scaled_mm
        print(f"fp8 matmul rate not measured: {e}", file=sys.stderr)
    return limits


def _rand(*shape, dtype=BF16, scale=1.0):
    return torch.randn(*shape, device=DEV, dtype=torch.float32).mul_(scale).to(dtype)


def norm_cases() -> list[Case]:
    out = []
    for model, d in (("llama8b", 4096), ("dsv3", 7168)):
        for t in (64, 4096):
            x, r, w = _rand(t, d), _rand(t, d), _rand(d)
            out.append(Case("rmsnorm", f"{model} [{t},{d}]", lambda x=x, w=w: rmsnorm.rmsnorm(x, w, 1e-6),
                            lambda x=x, w=w: rmsnorm.ref_rmsnorm(x, w, 1e-6), bytes_moved=2 * t * d * 2))
            out.append(Case("fused_add_rmsnorm", f"{model} [{t},{d}]",
                            lambda x=x, r=r, w=w: rmsnorm.fused_add_rmsnorm(x, r, w, 1e-6),
                            lambda x=x, r=r, w=w: rmsnorm.ref_fused_add_rmsnorm(x, r, w, 1e-6),
                            bytes_moved=4 * t * d * 2))
    return out


def rotary_cases() -> list[Case]:
    out = []
    for model, hq, hk, hd, neox in (("llama8b", 32, 8, 128, True), ("dsv3-rope", 128, 1, 64, False)):
        inv = 1.0 / 10000 ** (torch.arange(0, hd, 2, device=DEV).float() / hd)
        f = torch.arange(8192, device=DEV).float()[:, None] * inv
        cache = torch.cat([f.cos(), f.sin()], -1)
        for t in (64, 4096):
            q, k = _rand(t, hq, hd), _rand(t, hk, hd)
            pos = torch.randint(0, 8192, (t,), device=DEV)
            out.append(Case(
                "rotary", f"{model} T={t} q{hq} k{hk} d{hd}",
                lambda q=q, k=k, pos=pos, c=cache, n=neox: rotary.apply_rotary(q, k, pos, c, is_neox=n, inplace=True),
                lambda q=q, k=k, pos=pos, c=cache, n=neox: rotary.ref_apply_rotary(q, k, pos, c, is_neox=n),
                bytes_moved=2 * t * (hq + hk) * hd * 2,
            ))
    return out


def activation_cases() -> list[Case]:
    out = []
    for model, d in (("llama8b", 14336), ("dsv3-dense", 18432)):
        for t in (64, 4096):
            x = _rand(t, 2 * d)
            out.append(Case("silu_and_mul", f"{model} [{t},{2 * d}]", lambda x=x: activation.silu_and_mul(x),
                            lambda x=x: activation.ref_silu_and_mul(x), bytes_moved=3 * t * d * 2))
    return out


def kv_store_cases() -> list[Case]:
    slots, out = 200_000, []
    for t in (64, 4096):
        loc = torch.randperm(slots, device=DEV)[:t]
        kb, vb = torch.empty(slots, 8, 128, device=DEV, dtype=BF16), torch.empty(slots, 8, 128, device=DEV, dtype=BF16)
        k, v = _rand(t, 8, 128), _rand(t, 8, 128)
        out.append(Case("store_kv", f"llama8b T={t} [8,128]", lambda a=(kb, vb, loc, k, v): kv_store.store_kv(*a),
                        lambda a=(kb, vb, loc, k, v): kv_store.ref_store_kv(*a), bytes_moved=2 * 2 * t * 8 * 128 * 2))
        buf = torch.empty(slots, 1, 576, device=DEV, dtype=BF16)
        lat, rope = _rand(t, 512), _rand(t, 64)
        out.append(Case("store_mla_kv", f"dsv3 T={t} [576]", lambda a=(buf, loc, lat, rope): kv_store.store_mla_kv(*a),
                        lambda a=(buf, loc, lat, rope): kv_store.ref_store_mla_kv(*a), bytes_moved=2 * t * 576 * 2))
    return out


def bitmask_cases() -> list[Case]:
    out = []
    for b, v in ((1, 128256), (64, 128256), (64, 129280)):
        logits = _rand(b, v, dtype=torch.float32)
        mask = torch.randint(-(2**31), 2**31 - 1, (b, (v + 31) // 32), device=DEV, dtype=torch.int32)
        out.append(Case("token_bitmask", f"[{b},{v}]",
                        lambda lg=logits, m=mask: bitmask.apply_token_bitmask_(lg, m),
                        lambda lg=logits, m=mask: bitmask.ref_apply_token_bitmask(lg, m),
                        bytes_moved=b * v * 4 + b * v / 8))  # a full write of the logits, an upper bound
    return out


# DeepSeek-V3 linear layers as (name, N, K)
DSV3_LINEARS = (("q_a+kv_a", 2112, 7168), ("q_b", 24576, 1536), ("o_proj", 7168, 16384),
                ("dense_gate_up", 36864, 7168), ("dense_down", 7168, 18432))


def fp8_cases() -> list[Case]:
    out = []
    for m in (1, 64, 4096):
        x = _rand(m, 7168)
        out.append(Case("fp8_group_quant", f"[{m},7168]", lambda x=x: fp8.per_token_group_quant_fp8(x),
                        lambda x=x: fp8.ref_per_token_group_quant_fp8(x), bytes_moved=m * 7168 * 3 + m * 56 * 4))
    for name, n, k in DSV3_LINEARS:
        wq, ws = fp8.quant_weight_block_fp8(_rand(n, k, dtype=torch.float32, scale=0.02))
        w_bf16 = _rand(n, k)
        for m in (1, 64, 4096):
            aq, a_s = fp8.per_token_group_quant_fp8(_rand(m, k))
            a_bf16 = _rand(m, k)
            out.append(Case("fp8_gemm", f"{name} M={m} N={n} K={k}",
                            lambda a=(aq, a_s, wq, ws): fp8.fp8_block_gemm(*a),
                            lambda a=(aq, a_s, wq, ws): fp8.ref_fp8_block_gemm(*a),
                            bytes_moved=n * k + m * k + 2 * m * n, flops=2 * m * n * k, limit="fp8_mm",
                            peer=lambda a=a_bf16, w=w_bf16: a @ w.t(), peer_name="torch bf16 matmul"))
            out.append(_rowwise_scaled_mm_case(name, m, n, k, a_bf16, w_bf16))
    return out


def _rowwise_scaled_mm_case(name: str, m: int, n: int, k: int, a_bf16: torch.Tensor, w_bf16: torch.Tensor) -> Case:
    """torch._scaled_mm with row-wise FP8 scales: the peer for the block-scaled FP8 GEMM
    (timed as the kernel; its ref is the bf16 matmul of the same shape)."""
    a_scale = a_bf16.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-6) / 448.0  # [m, 1]
    w_scale = w_bf16.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-6) / 448.0  # [n, 1]
    a8 = (a_bf16.float() / a_scale).to(fp8.FP8_DTYPE)
    w8 = (w_bf16.float() / w_scale).to(fp8.FP8_DTYPE)
    return Case("fp8_rowwise_torch", f"{name} M={m} N={n} K={k}",
                lambda: torch._scaled_mm(a8, w8.t(), scale_a=a_scale, scale_b=w_scale.t(), out_dtype=BF16),
                lambda: a_bf16 @ w_bf16.t(),
                bytes_moved=n * k + m * k + 2 * m * n, flops=2 * m * n * k, limit="fp8_mm")


# Routed experts of DeepSeek-V2-Lite and DeepSeek-V3: (name, experts, top_k, hidden, moe intermediate)
MOE_MODELS = (("dsv2-lite", 64, 6, 2048, 1408), ("dsv3", 256, 8, 7168, 2048))
MOE_TOKENS = (1, 32, 512, 4096)


def _fp8_experts(e: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random block-quantized expert weights, built one expert at a time (a float32 copy of all
    256 DeepSeek experts would not fit)."""
    parts = [fp8.quant_weight_block_fp8(_rand(n, k, dtype=torch.float32, scale=k**-0.5)) for _ in range(e)]
    return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])


def _routing(m: int, e: int, k: int):
    weights, ids = torch.softmax(torch.randn(m, e, device=DEV), -1).topk(k, -1)
    return weights, ids.to(torch.int32)


def _graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` captured in a CUDA graph on its first call and replayed on every call (the engine
    runs decode this way): the time is the GPU's, without the host's launch overhead."""
    graph: list[torch.cuda.CUDAGraph] = []

    def replay() -> None:
        if not graph:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # compiles and warms up outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph.append(torch.cuda.CUDAGraph())
            with torch.cuda.graph(graph[0]):
                fn()
        graph[0].replay()

    return replay


def _per_expert_loop(x, w13, w2, topk_w, topk_ids, w13_scale=None, w2_scale=None) -> torch.Tensor:
    """The baseline the fused kernel replaces: one host sync to split the pairs by expert, then per
    expert hit its two GEMMs (bf16 `F.linear`, or our fp8 block GEMM with its activation quant)."""
    top_k = topk_ids.shape[1]
    order = torch.argsort(topk_ids.flatten(), stable=True)  # [M * top_k] pairs grouped by expert
    counts = torch.bincount(topk_ids.flatten().long(), minlength=w13.shape[0]).tolist()  # the sync
    out = torch.zeros_like(x)

    def linear(a, w, s):
        if s is None:
            return torch.nn.functional.linear(a, w)
        return fp8.fp8_block_gemm(*fp8.per_token_group_quant_fp8(a), w, s)

    for e, pairs in enumerate(order.split(counts)):
        if not counts[e]:
            continue
        tokens = pairs // top_k
        gate, up = linear(x[tokens], w13[e], None if w13_scale is None else w13_scale[e]).chunk(2, -1)
        y = linear(torch.nn.functional.silu(gate) * up, w2[e], None if w2_scale is None else w2_scale[e])
        out.index_add_(0, tokens, y * topk_w.flatten()[pairs, None].to(y.dtype))
    return out


def moe_cases() -> list[Case]:
    """Fused MoE at V2-Lite / V3 shapes, bf16 and fp8, M in MOE_TOKENS. "kernel us": fused_experts
    replayed from a CUDA graph; "ref us": the per-expert loop; "peer us": fused_experts launched
    eagerly (the difference to the graph is host time). Bytes = weights of the experts hit."""
    out = []
    for model, e, k, h, inter in MOE_MODELS:
        for use_fp8 in (False, True):
            if use_fp8:
                (w13, s13), (w2, s2) = _fp8_experts(e, 2 * inter, h), _fp8_experts(e, h, inter)
                kw, loop_kw = dict(use_fp8=True, w13_scale=s13, w2_scale=s2), dict(w13_scale=s13, w2_scale=s2)
                scale_bytes = 4 * (s13[0].numel() + s2[0].numel())
            else:
                w13, w2 = _rand(e, 2 * inter, h, scale=h**-0.5), _rand(e, h, inter, scale=inter**-0.5)
                kw, loop_kw, scale_bytes = {}, {}, 0
            expert_bytes = 3 * inter * h * (1 if use_fp8 else 2) + scale_bytes
            for m in MOE_TOKENS:
                x = _rand(m, h)
                tw, ti = _routing(m, e, k)
                hit = int(torch.unique(ti).numel())
                args = (x, w13, w2, tw, ti)
                fused = functools.partial(fused_moe.fused_experts, *args, **kw)
                out.append(Case(
                    "fused_moe", f"{model} {'fp8' if use_fp8 else 'bf16'} M={m} experts hit={hit}/{e}",
                    _graphed(fused), lambda a=args, kw=loop_kw: _per_expert_loop(*a, **kw),
                    bytes_moved=hit * expert_bytes + 2 * m * h * 2,
                    flops=2 * m * k * 3 * inter * h, limit="fp8_mm" if use_fp8 else "bf16_mm",
                    peer=fused, peer_name="fused_experts eager",
                ))
    return out


# MoE routers: (name, routing, hidden size); the gate weight is float32 (`logits_in_fp32`)
ROUTER_MODELS = (
    ("dsv2-lite", RoutingConfig(64, 6, logits_in_fp32=True), 2048),
    ("dsv3", RoutingConfig(256, 8, "sigmoid", num_groups=8, topk_groups=4, group_score="top2_sum", norm_topk_prob=True,
                           routed_scaling_factor=2.5, correction_bias=True, logits_in_fp32=True), 7168),
)
ROUTER_TOKENS = (1, 16, 32, 512)


def moe_routing_cases() -> list[Case]:
    """The MoE router at V2-Lite / V3 shapes: ours (`router_logits` + `fused_topk`, two launches;
    F.linear for the logits above `ROUTER_LOGITS_MAX_TOKENS` rows) as "kernel", the torch sequence
    `TopKRouter` ran before (F.linear on `hidden.float()`, then `select_experts`) as "ref". Rows
    "graph": both replayed from CUDA graphs (GPU time, as in decode); rows "eager": both launched
    one op at a time (plus host time). Bytes: the float32 gate weight and the hidden states."""
    out = []
    for model, cfg, h in ROUTER_MODELS:
        weight = _rand(cfg.num_experts, h, dtype=torch.float32, scale=h**-0.5)
        bias = _rand(cfg.num_experts, dtype=torch.float32, scale=0.1) if cfg.correction_bias else None
        for m in ROUTER_TOKENS:
            x = _rand(m, h)

            def ours(x=x, w=weight, cfg=cfg, b=bias):
                return moe_routing.fused_topk(moe_routing.router_logits(x, w), cfg, b)

            def torch_router(x=x, w=weight, cfg=cfg, b=bias):
                return select_experts(torch.nn.functional.linear(x.float(), w), cfg, b)

            cost = dict(bytes_moved=cfg.num_experts * h * 4 + m * h * 2)
            out.append(Case("moe_routing", f"{model} M={m} graph", _graphed(ours), _graphed(torch_router), **cost))
            out.append(Case("moe_routing", f"{model} M={m} eager", ours, torch_router, **cost))
    return out


def _csr(lens: list[int], slots: int):
    """(indptr int32 [B + 1], scattered slot indices [sum(lens)]) for contexts of these lengths."""
    indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=DEV)
    return indptr, torch.randperm(slots, device=DEV)[: sum(lens)]


# ---- MLA decode ------------------------------------------------------------------------------

MLA_MODELS = ((16, "v2lite"), (128, "dsv3"))  # (heads, model): ~30 and ~240 FLOP per latent byte
MLA_CONFIGS = {  # Triton tilings compared with the default (rows `mla_decode_config`)
    16: ((16, 32, 4, 2), (16, 32, 4, 3), (16, 64, 8, 2), (16, 128, 8, 2)),
    128: ((32, 32, 8, 2), (64, 32, 8, 2), (32, 64, 8, 2), (16, 64, 4, 2)),
}


_FLASHINFER_MLA: dict = {}  # FlashInfer kernel backend -> decoder, or the error that prevented it


def _flashinfer_mla(kernel_backend: str):
    """FlashInfer's MLA decoder as the runtime uses it, built (and JIT-compiled) on first use."""
    if kernel_backend not in _FLASHINFER_MLA:
        try:
            from lmlang.runtime.attention.flashinfer_mla import FlashInferMLADecode

            _FLASHINFER_MLA[kernel_backend] = FlashInferMLADecode(torch.device(DEV), kernel_backend)
        except Exception as e:  # not installed, or no such kernel backend
            _FLASHINFER_MLA[kernel_backend] = RuntimeError(f"flashinfer MLA {kernel_backend}: {type(e).__name__}: {e}")
    decoder = _FLASHINFER_MLA[kernel_backend]
    if isinstance(decoder, Exception):
        raise decoder
    return decoder


class _FlashInferMLA:
    """One FlashInfer MLA decode problem, planned (outside the timing) whenever another one ran last."""

    last = None

    def __init__(self, kernel_backend: str, shape, lens: list[int], indices: torch.Tensor, args: tuple) -> None:
        self.kernel_backend, self.shape, self.lens, self.indices, self.args = kernel_backend, shape, lens, indices, args

    def __call__(self) -> torch.Tensor:
        decoder = _flashinfer_mla(self.kernel_backend)
        if _FlashInferMLA.last is not self:
            try:
                decoder.plan(self.lens, self.indices, self.shape)  # the first plan JIT-compiles the module
            except Exception as e:  # a failed JIT build: the row is skipped
                raise RuntimeError(f"flashinfer MLA {self.kernel_backend} plan: {type(e).__name__}: {e}") from e
            torch.cuda.synchronize()
            _FlashInferMLA.last = self
        return decoder.run(*self.args)


def _skippable(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn`, with any failure (e.g. triton's OutOfResources for a tiling) raised as RuntimeError,
    which `main` reports as a skipped row."""
    def run() -> object:
        try:
            return fn()
        except RuntimeError:
            raise
        except Exception as e:
            raise RuntimeError(f"{type(e).__name__}: {e}") from e
    return run


def mla_cases() -> list[Case]:
    """Absorbed MLA decode over a bf16 latent cache (rank 512 + rope 64) at ctx 4096, batch 1/32/128,
    for DeepSeek-V2-Lite's 16 heads (bandwidth-bound) and V3's 128 (tensor-core-bound).

    Rows: `mla_decode` (Triton, default tiling and splits, vs the torch reference),
    `mla_decode_flashinfer` (FlashInfer's MLA kernel as the runtime runs it; the per-batch plan is
    outside the timing), `mla_decode_config` (Triton at fixed tilings and FlashInfer's fa2 kernel;
    there the `ref` column is the default Triton kernel, so speedup > 1 beats it). Bytes are the
    latent rows read; FLOP 2 H (R + P) + 2 H R per context token; `of limit` is the ratio to the
    roofline max(bytes / copy bandwidth, FLOP / bf16 matmul rate)."""
    from lmlang.runtime.attention.flashinfer_mla import MLADecodeShape

    out, ctx, slots, scale = [], 4096, 128 * 4096 + 1000, 192**-0.5
    cache = _rand(slots, 1, 576)
    for heads, model in MLA_MODELS:
        configs = [mla_decode.MLADecodeConfig(*t) for t in MLA_CONFIGS[heads]]
        for b in (1, 32, 128):
            indptr, indices = _csr([ctx] * b, slots - 1)
            indices = indices + 1  # slot 0 is the pool's dummy row
            qn, qp = _rand(b, heads, 512), _rand(b, heads, 64)
            args = (qn, qp, cache, indptr, indices)
            shape = f"{model} H{heads} B{b} ctx4k"
            cost = dict(bytes_moved=b * ctx * 576 * 2, flops=2 * b * heads * ctx * (576 + 512), limit="bf16_mm")

            def triton_default(a=args):
                return mla_decode.mla_decode(*a, scale)

            out.append(Case("mla_decode", shape, triton_default,
                            lambda a=args: mla_decode.ref_mla_decode(*a, scale), **cost))
            fi_shape = MLADecodeShape(heads, 512, 64, scale, BF16)
            for name in ("auto", "fa2"):
                run = _FlashInferMLA(name, fi_shape, [ctx] * b, indices, (qn, qp, cache))
                kernel = "mla_decode_flashinfer" if name == "auto" else "mla_decode_config"
                out.append(Case(kernel, f"{shape} flashinfer-{name}", run, triton_default, **cost))
            for c in configs:
                out.append(Case(
                    "mla_decode_config", f"{shape} triton {c.block_h}x{c.block_n} w{c.num_warps} s{c.num_stages}",
                    _skippable(lambda a=args, c=c: mla_decode.mla_decode(*a, scale, config=c)), triton_default, **cost,
                ))
    return out


def attention_cases() -> list[Case]:
    out = mla_cases()
    slots = 600_000
    k_buf, v_buf = _rand(slots, 8, 128), _rand(slots, 8, 128)
    for b, prefix, tree in ((1, 4096, 64), (16, 4096, 16), (64, 2048, 8)):
        lens = [prefix + tree] * b
        kv_indptr, kv_indices = _csr(lens, slots)
        qo_indptr = torch.arange(0, b + 1, device=DEV, dtype=torch.int32) * tree
        q = _rand(b * tree, 32, 128)
        mask = torch.ones(b * tree, prefix + tree, dtype=torch.bool, device=DEV)
        tri = torch.eye(tree, dtype=torch.bool, device=DEV)  # a binary draft tree: node i's parent is (i - 1) // 2
        for i in range(1, tree):
            tri[i] |= tri[(i - 1) // 2]
        mask[:, prefix:] = tri.repeat(b, 1)
        args = (q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, 128**-0.5, mask)
        out.append(Case(
            "tree_attention", f"llama8b B={b} prefix={prefix} tree={tree}",
            lambda a=args, t=tree: tree_attention.tree_attention(*a, max_qo_len=t),
            lambda a=args: tree_attention.ref_tree_attention(*a),
            bytes_moved=b * (prefix + tree) * 8 * 256 * 2, flops=4 * b * tree * 32 * (prefix + tree) * 128,
            limit="bf16_mm",
        ))
    return out


def decode_attention_cases() -> list[Case]:
    """GQA decode (Llama-3.1-8B: 32 query / 8 KV heads of 128) over scattered slots; bytes = K and V read."""
    out, slots = [], 2_200_000
    k_buf, v_buf = _rand(slots, 8, 128), _rand(slots, 8, 128)
    for b, ctx, splits in ((1, 1024, 16), (1, 8192, 16), (64, 1024, 1), (256, 1024, 1), (32, 8192, 2)):
        kv_indptr, kv_indices = _csr([ctx] * b, slots)
        q = _rand(b, 32, 128)
        args = (q, k_buf, v_buf, kv_indptr, kv_indices, 128**-0.5)
        out.append(Case(
            "decode_attention", f"llama8b B={b} ctx={ctx} splits={splits}",
            lambda a=args, s=splits: decode_attention.decode_attention(*a, num_kv_splits=s),
            lambda a=args: decode_attention.ref_decode_attention(*a),
            bytes_moved=b * ctx * 8 * 256 * 2,
        ))
    return out


GROUPS = (
    norm_cases, rotary_cases, activation_cases, kv_store_cases, bitmask_cases, fp8_cases, moe_cases, moe_routing_cases,
    attention_cases, decode_attention_cases,
)


def _rate(case: Case, ms: float, limits: dict) -> tuple[str, Optional[float]]:
    """(achieved rate text, fraction of the physical limit) of the kernel at `ms`."""
    gbps = case.bytes_moved / ms / 1e6
    frac_bw = gbps / limits["copy_GBps"]
    if not case.flops:
        return f"{gbps:,.0f} GB/s", frac_bw
    tflops = case.flops / ms / 1e9
    peak = limits.get(f"{case.limit}_TFLOPs")
    frac_mm = tflops / peak if peak else None
    # a GEMM is bound by whichever limit it is closer to (small M: weight bandwidth)
    text = f"{tflops:,.1f} TF/s {gbps:,.0f} GB/s ({frac_bw:.0%} bw)"
    if frac_mm is None or frac_bw > frac_mm:
        return text, frac_bw
    return text, frac_mm


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=pathlib.Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="JSON results path")
    parser.add_argument("--only", default="", help="comma-separated kernel names to run (default: all)")
    parser.add_argument("--rep-ms", type=int, default=100, help="measurement time per case for do_bench")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels.py needs a CUDA device")
    only = {s for s in args.only.split(",") if s}

    limits = measure_limits(args.rep_ms)
    print(f"device: {torch.cuda.get_device_name()}  " + "  ".join(f"{k}={v:,.1f}" for k, v in limits.items()))
    rows = []
    header = (f"{'kernel':<18} {'shape':<44} {'kernel us':>10} {'ref us':>10} {'speedup':>8} {'peer us':>9}  "
              f"{'rate':<26} {'of limit':>8}")
    print(header + "\n" + "-" * len(header))
    small_attention = not only or "decode_attention_small" in only
    for group in GROUPS if not only or only - {"decode_attention_small"} else ():
        for case in group():
            if only and case.kernel not in only:
                continue
            try:
                case.run()  # compile outside the timing
            except RuntimeError as e:  # e.g. a peer that does not take this shape
                print(f"{case.kernel:<18} {case.shape:<44} skipped: {str(e).splitlines()[0][:80]}", flush=True)
                continue
            ms = do_bench(case.run, rep=args.rep_ms)
            ref_ms = do_bench(case.ref, rep=args.rep_ms)
            peer_ms = do_bench(case.peer, rep=args.rep_ms) if case.peer else None
            rate, frac = _rate(case, ms, limits)
            peer_text = f"{peer_ms * 1e3:>9.1f}" if peer_ms else f"{'-':>9}"
            print(f"{case.kernel:<18} {case.shape:<44} {ms * 1e3:>10.1f} {ref_ms * 1e3:>10.1f} "
                  f"{ref_ms / ms:>7.2f}x {peer_text}  {rate:<26} {frac:>8.1%}", flush=True)
            rows.append(dict(kernel=case.kernel, shape=case.shape, kernel_us=ms * 1e3, ref_us=ref_ms * 1e3,
                             speedup=ref_ms / ms, peer=case.peer_name or None,
                             peer_us=peer_ms * 1e3 if peer_ms else None, bytes=case.bytes_moved, flops=case.flops,
                             rate=rate, fraction_of_limit=frac, limit=case.limit if case.flops else "copy"))
        torch.cuda.empty_cache()
    if small_attention:
        import decode_attention_small  # a sibling script: on sys.path when this file runs as one

        rows += decode_attention_small.run(limits)
    args.out.write_text(json.dumps(dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(), commit=_commit(), torch=torch.__version__,
        triton=__import__("triton").__version__, limits=limits, results=rows,
    ), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
