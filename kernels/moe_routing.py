"""The MoE routing rule and the router in two launches: router logits, then the whole rule per token.

The rule (`RoutingConfig`, `select_experts`, torch; the runtime's `TopKRouter` uses it off CUDA)
covers the released families:
- Mixtral: softmax over all experts, top-k, renormalised.
- Qwen3-MoE: softmax, top-k, renormalised when `norm_topk_prob`.
- DeepSeek-V2: softmax, top-k, optionally limited to the `topk_group` best of `n_group` expert
  groups (group score = the group's best expert), times `routed_scaling_factor`.
- DeepSeek-V3: sigmoid scores; experts are chosen on score + `e_score_correction_bias`, within
  the `topk_group` groups whose two best biased scores sum highest, but weighted by the unbiased
  score; renormalised (`norm_topk_prob`), then times `routed_scaling_factor`.
Weights are float32 throughout (Qwen3-MoE in transformers rounds them to the model dtype; in
float32 the two agree).

At decode the router is a string of small torch kernels (a `.float()` copy of the hidden states,
cuBLAS's split-K GEMV and its reduction, softmax, top-k's two kernels, a gather, ...), each
costing more in launch and idle time than in work. Here it is two kernels:

- `router_logits`: `hidden @ weight.T` for up to ROUTER_LOGITS_MAX_TOKENS rows. The hidden states
  are read in their own dtype and widened in registers (no float32 copy); products are summed in
  float32. One program per (expert, block of rows), the programs of one expert adjacent so they
  share its weight row through L2; a program reads its first weight tile before waiting for the
  previous kernel (programmatic dependent launch, see `launch`). With a float32 weight (DeepSeek's
  `logits_in_fp32`) the logits stay float32, as `F.linear(hidden.float(), weight)` gives them;
  with a weight in the model dtype they are rounded to that dtype (as `F.linear(hidden, weight)`
  rounds them) and returned as float32. Larger batches run `ref_router_logits` (`F.linear`),
  whose GEMM then costs more than its launches.
- `fused_topk`: `select_experts` (below) for one token per program, all in
  registers: scores in float32 with torch's CUDA operations (softmax as exp(x - max) / sum,
  sigmoid as 1 / (1 + exp(-x)); libdevice's expf, divisions rounded to nearest), the correction
  bias added for the choice, the group limit (group scores, the `topk_groups` best groups kept), the
  top-k experts by repeated arg-max with masking, their unbiased scores as weights, optional
  renormalisation `w / (sum + 1e-20)` and the scaling factor. The experts are laid out as a
  [groups, experts per group] tile (each side padded to a power of two with -inf), so group
  reductions are row reductions whatever the group size. Ties go to the lowest expert id (torch's
  top-k order among exactly equal scores is unspecified). Ids are int32; their slot order is
  best-first, which the experts do not depend on.

Both launchers size everything from the shapes only, so the pair can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.language.extra import libdevice

from lmlang.kernels.launch import launch, next_power_of_2, pdl_launch_dependents, pdl_wait
from lmlang.kernels.rounding import round_to

SCORING = ("softmax", "sigmoid")
GROUP_SCORES = ("max", "top2_sum")


@dataclass(frozen=True)
class RoutingConfig:
    num_experts: int
    top_k: int
    scoring: str = "softmax"
    num_groups: Optional[int] = None  # n_group; None: no group limit
    topk_groups: Optional[int] = None  # topk_group
    group_score: str = "max"  # how a group is ranked: its best expert, or the sum of its best two
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    correction_bias: bool = False  # DeepSeek-V3's e_score_correction_bias (choice only)
    logits_in_fp32: bool = False  # compute router logits in float32 (DeepSeek), else in the model dtype

    def __post_init__(self) -> None:
        if self.scoring not in SCORING:
            raise ValueError(f"unsupported MoE scoring function {self.scoring!r}; supported: {SCORING}")
        if self.group_score not in GROUP_SCORES:
            raise ValueError(f"unsupported MoE group score {self.group_score!r}; supported: {GROUP_SCORES}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be in [1, num_experts={self.num_experts}]")
        if self.num_groups is not None:
            groups, keep = self.num_groups, self.topk_groups
            if self.num_experts % groups or keep is None or not 1 <= keep <= groups:
                raise ValueError(
                    f"grouped routing needs n_group ({groups}) dividing num_experts ({self.num_experts}) "
                    f"and 1 <= topk_group ({keep}) <= n_group"
                )
            if self.top_k > keep * (self.num_experts // groups):
                raise ValueError(f"top_k ({self.top_k}) exceeds the experts of {keep} groups")


def select_experts(
    router_logits: torch.Tensor,  # [n, E]
    cfg: RoutingConfig,
    correction_bias: Optional[torch.Tensor] = None,  # [E] float32
) -> tuple[torch.Tensor, torch.Tensor]:  # weights [n, top_k] float32, expert ids [n, top_k] int64
    """The routing rule of the module docstring, for a batch of router logits."""
    logits = router_logits.float()
    scores = logits.softmax(dim=-1) if cfg.scoring == "softmax" else logits.sigmoid()  # [n, E]
    choice = scores + correction_bias.float() if correction_bias is not None else scores
    if cfg.num_groups is not None:
        grouped = choice.view(choice.shape[0], cfg.num_groups, -1)  # [n, G, E / G]
        if cfg.group_score == "max":
            group_scores = grouped.amax(dim=-1)
        else:
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [n, G]
        kept = group_scores.topk(cfg.topk_groups, dim=-1).indices  # [n, topk_group]
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
        expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape_as(choice)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    ids = choice.topk(cfg.top_k, dim=-1).indices  # [n, top_k]
    weights = scores.gather(1, ids)
    if cfg.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    if cfg.routed_scaling_factor != 1.0:
        weights = weights * cfg.routed_scaling_factor
    return weights, ids


# above this many rows `router_logits` runs F.linear; not measured yet (`benchmarks/kernels.py --only
# moe_routing` times M = 16 against 32)
ROUTER_LOGITS_MAX_TOKENS = 16
MAX_EXPERTS = 512  # fused_topk holds a token's scores in registers: at most 2048 padded tile entries
_ROWS_PER_PROGRAM = 4  # rows sharing one weight tile in registers
_LOGITS_TILE = 4096  # [rows, BLOCK_K] elements per step: 32 per thread at 4 warps
_HIDDEN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit(do_not_specialize=["n"])
def router_logits_kernel(
    hidden_ptr,  # [n, H], rows stride_h apart, H contiguous
    weight_ptr,  # [E, H], rows stride_w apart, H contiguous (float32 or the hidden dtype)
    out_ptr,  # [n, E] float32, contiguous
    n, E, H, stride_h, stride_w,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    row_blocks = tl.cdiv(n, BLOCK_M)
    expert = tl.program_id(0) // row_blocks  # the programs of one expert are adjacent: they share it in L2
    rows = (tl.program_id(0) % row_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    # clamped, not masked: extra rows re-read the last row and are not stored
    x_rows = hidden_ptr + tl.minimum(rows, n - 1).to(tl.int64)[:, None] * stride_h  # [BLOCK_M, 1]
    w_row = weight_ptr + expert.to(tl.int64) * stride_w
    offs_k = tl.arange(0, BLOCK_K)
    # the weight is a constant: its first tile is read before waiting for the previous kernel
    if EVEN_K:
        w = tl.load(w_row + offs_k)  # [BLOCK_K]
    else:
        w = tl.load(w_row + offs_k, mask=offs_k < H, other=0.0)
    pdl_wait(USE_PDL)
    if EVEN_K:
        x = tl.load(x_rows + offs_k[None, :])  # [BLOCK_M, BLOCK_K]
    else:
        x = tl.load(x_rows + offs_k[None, :], mask=offs_k[None, :] < H, other=0.0)
    acc = w.to(tl.float32)[None, :] * x.to(tl.float32)
    for k in range(BLOCK_K, H, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_row + k + offs_k)
            x = tl.load(x_rows + k + offs_k[None, :])
        else:
            k_mask = k + offs_k < H
            w = tl.load(w_row + k + offs_k, mask=k_mask, other=0.0)
            x = tl.load(x_rows + k + offs_k[None, :], mask=k_mask[None, :], other=0.0)
        acc += w.to(tl.float32)[None, :] * x.to(tl.float32)
    # F.linear in the weight's dtype rounds its output to that dtype (float32: unchanged)
    logits = round_to(tl.sum(acc, axis=1), weight_ptr.dtype.element_ty)  # [BLOCK_M]
    tl.store(out_ptr + rows.to(tl.int64) * E + expert, logits, mask=rows < n)


@triton.jit
def _exp(x, LIBDEVICE_EXP: tl.constexpr):
    """float32 exp as torch computes it on CUDA (libdevice's expf; `tl.exp` is the coarser
    ex2.approx). The interpreter has no libdevice; numpy's exp is accurate there."""
    if LIBDEVICE_EXP:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _div(x, y):
    """float32 x / y rounded to nearest, as torch divides (`/` compiles to div.full, 2 ulp); x a tensor."""
    return tl.math.div_rn(x, y)


@triton.jit
def fused_topk_kernel(
    logits_ptr,  # [n, E] float32 / bf16 / fp16, rows stride_l apart, E contiguous
    bias_ptr,  # [E] float32 (read only when HAS_BIAS)
    weights_ptr,  # [n, TOP_K] float32 out
    ids_ptr,  # [n, TOP_K] int32 out
    stride_l, scaling,
    NUM_GROUPS: tl.constexpr, GROUP_SIZE: tl.constexpr,  # no group limit: 1 group of E experts
    GROUPS_PAD: tl.constexpr, GROUP_PAD: tl.constexpr,  # powers of two >= NUM_GROUPS, GROUP_SIZE
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, TOPK_GROUPS: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, GROUP_LIMIT: tl.constexpr, TOP2_SUM: tl.constexpr,
    NORM: tl.constexpr, SCALE: tl.constexpr, LIBDEVICE_EXP: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    groups = tl.arange(0, GROUPS_PAD)  # [GROUPS_PAD]
    cols = tl.arange(0, GROUP_PAD)[None, :]  # [1, GROUP_PAD]
    experts = groups[:, None] * GROUP_SIZE + cols  # [GROUPS_PAD, GROUP_PAD] expert ids
    real = (groups[:, None] < NUM_GROUPS) & (cols < GROUP_SIZE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + experts, mask=real, other=0.0)  # a constant: read before the wait
    pdl_wait(USE_PDL)
    x = tl.load(logits_ptr + token * stride_l + experts, mask=real, other=float("-inf")).to(tl.float32)
    if SIGMOID:
        scores = _div(tl.full(x.shape, 1.0, tl.float32), 1.0 + _exp(-x, LIBDEVICE_EXP))  # padding: 1 / inf = 0
    else:
        shifted = _exp(x - tl.max(x, axis=None), LIBDEVICE_EXP)  # padding: exp(-inf) = 0
        scores = _div(shifted, tl.sum(shifted, axis=None))
    scores = tl.where(real, scores, 0.0)
    choice = scores
    if HAS_BIAS:
        choice = scores + bias
    choice = tl.where(real, choice, float("-inf"))  # [GROUPS_PAD, GROUP_PAD]

    if GROUP_LIMIT:
        best = tl.max(choice, axis=1)  # [GROUPS_PAD]; padded groups: -inf
        if TOP2_SUM:  # the group's two best scores (one copy of the best removed: ties count twice)
            first = tl.min(tl.where(choice == best[:, None], cols, GROUP_PAD), axis=1)
            best += tl.max(tl.where(cols == first[:, None], float("-inf"), choice), axis=1)
        kept = groups < 0  # all False
        for _ in tl.static_range(TOPK_GROUPS):
            pick = tl.min(tl.where(best == tl.max(best, axis=0), groups, GROUPS_PAD), axis=0)
            kept = kept | (groups == pick)
            best = tl.where(groups == pick, float("-inf"), best)
        choice = tl.where(kept[:, None], choice, float("-inf"))

    slots = tl.arange(0, K_PAD)
    top_weights = tl.zeros([K_PAD], dtype=tl.float32)
    top_ids = tl.zeros([K_PAD], dtype=tl.int32)
    for slot in tl.static_range(TOP_K):
        pick = tl.min(tl.where(choice == tl.max(choice, axis=None), experts, NUM_GROUPS * GROUP_SIZE), axis=None)
        pick = tl.minimum(pick, NUM_GROUPS * GROUP_SIZE - 1)  # NaN scores match nothing: keep ids in range
        hit = (experts == pick) & real  # padded columns of a group may repeat the next group's ids
        top_weights = tl.where(slots == slot, tl.sum(tl.where(hit, scores, 0.0), axis=None), top_weights)
        top_ids = tl.where(slots == slot, pick, top_ids)
        choice = tl.where(hit, float("-inf"), choice)
    if NORM:
        top_weights = _div(top_weights, tl.sum(top_weights, axis=0) + 1e-20)
    if SCALE:
        top_weights = top_weights * scaling
    out = token * TOP_K + slots
    tl.store(weights_ptr + out, top_weights, mask=slots < TOP_K)
    tl.store(ids_ptr + out, top_ids, mask=slots < TOP_K)


def _check_logits_inputs(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"router_logits: hidden must be [n, H] and weight [E, H], "
            f"got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if hidden.dtype not in _HIDDEN_DTYPES:
        raise ValueError(f"router_logits: hidden dtype {hidden.dtype} not supported; use one of {_HIDDEN_DTYPES}")
    if weight.dtype not in (torch.float32, hidden.dtype):
        raise ValueError(f"router_logits: weight must be float32 or hidden's dtype {hidden.dtype}, got {weight.dtype}")
    if hidden.device != weight.device:
        raise ValueError(f"router_logits: hidden and weight on different devices ({hidden.device}, {weight.device})")


def router_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Router logits `hidden @ weight.T` as float32: [n, H] x [E, H] -> [n, E].

    hidden: bf16, fp16 or float32; weight: float32 or hidden's dtype. The result equals
    `ref_router_logits` up to summation order: float32 logits for a float32 weight, logits rounded
    to the weight's dtype otherwise. Up to ROUTER_LOGITS_MAX_TOKENS rows run `router_logits_kernel`
    (needs both tensors contiguous along H); more run `ref_router_logits`.
    """
    _check_logits_inputs(hidden, weight)
    n, (num_experts, h) = hidden.shape[0], weight.shape
    if n > ROUTER_LOGITS_MAX_TOKENS or n == 0:
        return ref_router_logits(hidden, weight)
    if hidden.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("router_logits: hidden and weight must be contiguous along H")
    block_m = min(next_power_of_2(n), _ROWS_PER_PROGRAM)
    block_k = min(next_power_of_2(h), _LOGITS_TILE // block_m)
    out = torch.empty(n, num_experts, dtype=torch.float32, device=hidden.device)
    launch(
        router_logits_kernel, (num_experts * triton.cdiv(n, block_m),), hidden, weight, out,
        n, num_experts, h, hidden.stride(0), weight.stride(0),
        BLOCK_M=block_m, BLOCK_K=block_k, EVEN_K=h % block_k == 0, num_warps=4, pdl=True,
    )
    return out


def ref_router_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The torch router: `F.linear` in the weight's dtype (hidden widened for a float32 weight), as float32."""
    return F.linear(hidden.to(weight.dtype), weight).float()


def fused_topk_unsupported(cfg: RoutingConfig) -> Optional[str]:
    """Why `fused_topk` cannot run `cfg` (None when it can)."""
    if cfg.num_experts > MAX_EXPERTS:
        return f"{cfg.num_experts} experts (at most {MAX_EXPERTS})"
    if cfg.num_groups is not None and cfg.group_score == "top2_sum" and cfg.num_experts // cfg.num_groups < 2:
        return "group score top2_sum needs at least two experts per group"
    return None


def fused_topk(
    router_logits: torch.Tensor,  # [n, E] float32 / bf16 / fp16
    cfg: RoutingConfig,
    correction_bias: Optional[torch.Tensor] = None,  # [E] float32
) -> tuple[torch.Tensor, torch.Tensor]:  # weights [n, top_k] float32, expert ids [n, top_k] int32
    """`select_experts(router_logits, cfg, correction_bias)` in one launch (see the module doc).

    Returns the same experts per token (ids int32, best first) and their weights (float32);
    the bias, when given, is added to the scores for the choice only, as there.
    """
    reason = fused_topk_unsupported(cfg)
    if reason is not None:
        raise ValueError(f"fused_topk: unsupported routing config: {reason}")
    if router_logits.dim() != 2 or router_logits.shape[1] != cfg.num_experts:
        raise ValueError(f"fused_topk: router_logits must be [n, {cfg.num_experts}], got {tuple(router_logits.shape)}")
    if router_logits.dtype not in _HIDDEN_DTYPES:
        raise ValueError(
            f"fused_topk: router_logits dtype {router_logits.dtype} not supported; use one of {_HIDDEN_DTYPES}"
        )
    if router_logits.stride(1) != 1:
        raise ValueError("fused_topk: router_logits must be contiguous along the experts")
    if correction_bias is not None:
        if correction_bias.shape != (cfg.num_experts,) or correction_bias.dtype != torch.float32:
            raise ValueError(
                f"fused_topk: correction_bias must be a [{cfg.num_experts}] float32 tensor, "
                f"got {tuple(correction_bias.shape)} {correction_bias.dtype}"
            )
        if correction_bias.device != router_logits.device or not correction_bias.is_contiguous():
            raise ValueError("fused_topk: correction_bias must be contiguous and on router_logits' device")
    n, device = router_logits.shape[0], router_logits.device
    weights = torch.empty(n, cfg.top_k, dtype=torch.float32, device=device)
    ids = torch.empty(n, cfg.top_k, dtype=torch.int32, device=device)
    if n == 0:
        return weights, ids
    grouped = cfg.num_groups is not None
    num_groups = cfg.num_groups if grouped else 1
    group_size = cfg.num_experts // num_groups
    groups_pad, group_pad = next_power_of_2(num_groups), next_power_of_2(group_size)
    launch(
        fused_topk_kernel, (n,), router_logits, correction_bias if correction_bias is not None else router_logits,
        weights, ids, router_logits.stride(0), cfg.routed_scaling_factor,
        NUM_GROUPS=num_groups, GROUP_SIZE=group_size, GROUPS_PAD=groups_pad, GROUP_PAD=group_pad,
        TOP_K=cfg.top_k, K_PAD=next_power_of_2(cfg.top_k), TOPK_GROUPS=cfg.topk_groups if grouped else 1,
        SIGMOID=cfg.scoring == "sigmoid", HAS_BIAS=correction_bias is not None, GROUP_LIMIT=grouped,
        TOP2_SUM=cfg.group_score == "top2_sum", NORM=cfg.norm_topk_prob, SCALE=cfg.routed_scaling_factor != 1.0,
        LIBDEVICE_EXP=device.type == "cuda",
        # one warp reduces with shuffles only: up to 256 tile entries (8 a thread)
        num_warps=min(4, max(1, groups_pad * group_pad // 256)), pdl=True,
    )
    return weights, ids


def ref_fused_topk(
    router_logits: torch.Tensor, cfg: RoutingConfig, correction_bias: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch rule `fused_topk` implements: `select_experts` (ids int64)."""
    return select_experts(router_logits, cfg, correction_bias)
