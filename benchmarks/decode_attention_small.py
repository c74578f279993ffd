"""Small-batch decode attention (Llama-3.1-8B: 32 query / 8 KV heads of 128, bf16, page size 1) as
the engine runs it: per layer one call inside a CUDA graph, over that layer's own KV buffers.

    python benchmarks/kernels.py --only decode_attention_small --out X.json

For B in SMALL_BATCHES and ctx in SMALL_CONTEXTS, every variant is captured as a graph of
GRAPH_LAYERS back-to-back calls, each over a different layer's K/V (so the KV read comes from
HBM, not the 50 MB L2, and launch gaps are as in a decode step); the time is the median replay
over `reps`, per call. Splits: `small_batch_kv_splits(B, 8, 8192, SMs)` unless a variant says.
Variants (all with PDL, as `launch` decides):
- two-launch: `decode_attention` stage 1 + merge kernel;
- fused: one launch, the last split merges (`counters`);
- fused+rope+kv: one launch that also rotates q / the new k and stores the new k / v;
- unfused: what it replaces, `rotary_and_store_kv` then the two-launch kernels;
- flashinfer: `BatchDecodeWithPagedKVCacheWrapper` (tensor cores, use_cuda_graph=True, planned
  outside the graph), and flashinfer+rk with `rotary_and_store_kv` before it;
- sweep: fused+rope+kv at other tilings (dot/FMA, block_n, warps), twice the splits, PDL off.
Bandwidth = K and V bytes read (B x ctx x 8 heads x 256 values x 2 bytes) / time, against the copy
bandwidth measured first. `check` is max |fused+rope+kv - reference| on layer 0 (bf16).
"""

from __future__ import annotations

from typing import Callable

import torch
from gemv_bench import time_graph  # a sibling script: on sys.path when benchmarks/kernels.py runs

from lmlang.kernels.decode_attention import (
    DecodeAttentionConfig,
    decode_attention,
    ref_decode_attention_new_kv,
    small_batch_kv_splits,
)
from lmlang.kernels.launch import pdl_forced
from lmlang.kernels.rotary import rotary_and_store_kv

SMALL_BATCHES = (1, 2, 4, 8)
SMALL_CONTEXTS = (1024, 4096)
GRAPH_LAYERS = 32
HQ, HK, D = 32, 8, 128
MAX_CONTEXT = 8192  # the graph-time constant small_batch_kv_splits is given
SWEEP = {  # name -> (config, splits multiplier, PDL)
    "dot n64 w4 (default)": (DecodeAttentionConfig(64, 4, 1, True), 1, True),
    "dot n32 w4": (DecodeAttentionConfig(32, 4, 1, True), 1, True),
    "dot n128 w8": (DecodeAttentionConfig(128, 8, 1, True), 1, True),
    "dot n64 w4 stages2": (DecodeAttentionConfig(64, 4, 2, True), 1, True),
    "fma n64 w8": (DecodeAttentionConfig(64, 8, 1, False), 1, True),
    "fma n32 w4": (DecodeAttentionConfig(32, 4, 1, False), 1, True),
    "dot n64 w4 2x splits": (DecodeAttentionConfig(64, 4, 1, True), 2, True),
    "dot n32 w4 2x splits": (DecodeAttentionConfig(32, 4, 1, True), 2, True),
    "dot n64 w4 PDL off": (DecodeAttentionConfig(64, 4, 1, True), 1, False),
}
BF16 = torch.bfloat16


def _time_layers(call: Callable[[int], object], reps: int, pdl: bool = True) -> float:
    """Median microseconds per call of a CUDA graph calling call(layer) for every layer."""
    with pdl_forced(pdl):
        return time_graph([lambda layer=layer: call(layer) for layer in range(GRAPH_LAYERS)], reps) * 1e6 / GRAPH_LAYERS


class _Problem:
    """One (B, ctx) decode step: GRAPH_LAYERS layers of K/V, scattered slots, the new token last."""

    def __init__(self, b: int, ctx: int) -> None:
        self.b, self.ctx = b, ctx
        slots = b * ctx + 1  # slot 0: the pool's dummy row
        self.k = torch.randn(GRAPH_LAYERS, slots, HK, D, device="cuda", dtype=BF16)
        self.v = torch.randn(GRAPH_LAYERS, slots, HK, D, device="cuda", dtype=BF16)
        self.indptr = torch.arange(0, b + 1, device="cuda", dtype=torch.int32) * ctx
        self.indices = torch.randperm(slots - 1, device="cuda") + 1
        self.loc = self.indices[self.indptr[1:].long() - 1]  # the new token's slot: its context's last
        qkv = torch.randn(b, (HQ + 2 * HK) * D, device="cuda", dtype=BF16)
        self.q = qkv[:, : HQ * D].view(b, HQ, D)  # a strided view, as the engine's q is
        self.q_contiguous = self.q.contiguous()
        self.k_new = qkv[:, HQ * D : (HQ + HK) * D].view(b, HK, D)
        self.v_new = qkv[:, (HQ + HK) * D :].view(b, HK, D)
        self.positions = torch.full((b,), ctx - 1, device="cuda", dtype=torch.int64)
        inv_freq = 1.0 / 500000.0 ** (torch.arange(0, D, 2, device="cuda").float() / D)
        freqs = torch.arange(MAX_CONTEXT, device="cuda").float()[:, None] * inv_freq
        self.cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
        self.counters = torch.zeros(b * HK, device="cuda", dtype=torch.int32)
        self.scale = D**-0.5
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        self.splits = small_batch_kv_splits(b, HK, MAX_CONTEXT, sms)
        self.kv_bytes = b * ctx * HK * 2 * D * 2

    def args(self, layer: int) -> tuple:
        return self.k[layer], self.v[layer], self.indptr, self.indices

    def new_kv(self) -> dict:
        return dict(new_kv=(self.k_new, self.v_new, self.loc), rope=(self.positions, self.cos_sin, True))

    def two_launch(self, layer: int, q=None):
        return decode_attention(self.q if q is None else q, *self.args(layer), self.scale, self.splits)

    def fused(self, layer: int):
        return decode_attention(self.q, *self.args(layer), self.scale, self.splits, counters=self.counters)

    def fused_rope_kv(self, layer: int, config=None, splits=None):
        return decode_attention(self.q, *self.args(layer), self.scale, splits or self.splits, counters=self.counters,
                                config=config, **self.new_kv())

    def rope_store(self, layer: int) -> torch.Tensor:
        q, _ = rotary_and_store_kv(self.q, self.k_new, self.v_new, self.positions, self.cos_sin, self.k[layer],
                                   self.v[layer], self.loc, is_neox=True)
        return q

    def check(self) -> float:
        k, v = self.k[0].clone(), self.v[0].clone()
        ref = ref_decode_attention_new_kv(self.q, k, v, self.indptr, self.indices, self.scale,
                                          (self.k_new, self.v_new, self.loc), (self.positions, self.cos_sin, True))
        out = self.fused_rope_kv(0)
        if not (torch.equal(k, self.k[0]) and torch.equal(v, self.v[0])):
            return float("inf")  # the pool differs from rotary + store
        return (out.float() - ref.float()).abs().max().item()


def _flashinfer(p: _Problem) -> Callable[[int, torch.Tensor], object]:
    """FlashInfer's tensor-core decode wrapper planned for p, as a call(layer, q)."""
    import flashinfer

    workspace = torch.zeros(128 << 20, dtype=torch.uint8, device="cuda")
    indices = p.indices.to(torch.int32)
    last = torch.ones(p.b, dtype=torch.int32, device="cuda")
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
        workspace, "NHD", use_cuda_graph=True, use_tensor_cores=True, paged_kv_indptr_buffer=p.indptr.clone(),
        paged_kv_indices_buffer=indices, paged_kv_last_page_len_buffer=last.clone(),
    )
    wrapper.plan(p.indptr.cpu(), indices, last.cpu(), HQ, HK, D, 1, q_data_type=BF16, kv_data_type=BF16,
                 sm_scale=p.scale)
    return lambda layer, q: wrapper.run(q, (p.k[layer].unsqueeze(1), p.v[layer].unsqueeze(1)))


def _measure(p: _Problem, reps: int) -> tuple[dict, dict]:
    """({main variant: us per call}, {sweep variant: us per call}) of one problem."""
    t = {
        "two-launch": _time_layers(p.two_launch, reps),
        "fused": _time_layers(p.fused, reps),
        "fused+rope+kv": _time_layers(p.fused_rope_kv, reps),
        "unfused": _time_layers(lambda layer: p.two_launch(layer, p.rope_store(layer)), reps),
    }
    try:
        fi = _flashinfer(p)
        t["flashinfer"] = _time_layers(lambda layer: fi(layer, p.q_contiguous), reps)
        t["flashinfer+rk"] = _time_layers(lambda layer: fi(layer, p.rope_store(layer)), reps)
    except Exception as e:  # not installed, or its JIT build failed
        print(f"flashinfer skipped: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
    sweep = {}
    for name, (config, mult, pdl) in SWEEP.items():
        sweep[name] = _time_layers(lambda layer, c=config, s=p.splits * mult: p.fused_rope_kv(layer, c, s), reps, pdl)
    return t, sweep


def run(limits: dict, reps: int = 50) -> list[dict]:
    """Measures every (B, ctx) and variant, printing a row as each problem finishes and the sweep
    table last; returns the JSON rows."""
    copy = limits["copy_GBps"]
    rows: list[dict] = []
    main_cols = ("two-launch", "fused", "fused+rope+kv", "unfused", "flashinfer", "flashinfer+rk")
    print(f"\ndecode attention, Llama-3.1-8B shape, us per layer (graph of {GRAPH_LAYERS} layers); "
          "bw = KV read / fused+rope+kv time; check = max |fused+rope+kv - reference|")
    head = f"{'B':>2} {'ctx':>5} {'splits':>6} {'KV MB':>6} " + " ".join(f"{c:>13}" for c in main_cols)
    print(head + f" {'bw GB/s':>8} {'of copy':>7} {'check':>8}\n" + "-" * (len(head) + 27), flush=True)
    problems, sweep_table = [], {name: [] for name in SWEEP}
    for b in SMALL_BATCHES:
        for ctx in SMALL_CONTEXTS:
            p = _Problem(b, ctx)
            err = p.check()
            t, sweep = _measure(p, reps)
            for name, us in [*t.items(), *((f"sweep {n}", us) for n, us in sweep.items())]:
                gbps = p.kv_bytes / us / 1e3
                rows.append(dict(kernel="decode_attention_small", B=b, ctx=ctx, splits=p.splits, variant=name,
                                 us_per_call=us, kv_GBps=gbps, fraction_of_copy=gbps / copy, check=err))
            for name, us in sweep.items():
                sweep_table[name].append(us)
            cells = " ".join(f"{t[c]:>13.2f}" if c in t else f"{'-':>13}" for c in main_cols)
            gbps = p.kv_bytes / t["fused+rope+kv"] / 1e3
            print(f"{b:>2} {ctx:>5} {p.splits:>6} {p.kv_bytes / 1e6:>6.1f} {cells} {gbps:>8,.0f} {gbps / copy:>7.1%} "
                  f"{err:>8.1e}", flush=True)
            problems.append(f"B{b}/{ctx}")
            del p
            torch.cuda.empty_cache()
    print(f"\nfused+rope+kv sweep, us per layer (2x splits: twice the rule's)\n{'':<24} "
          + " ".join(f"{name:>9}" for name in problems))
    for name, times in sweep_table.items():
        print(f"{name:<24} " + " ".join(f"{us:>9.2f}" for us in times))
    return rows
