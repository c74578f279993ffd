"""Mixture-of-experts feed-forward: a top-k router, the routed experts, optional shared experts.

Routing: the rule (`RoutingConfig`, `select_experts`, re-exported here) lives in
`lmlang.kernels.moe_routing` beside the two kernels that run it on CUDA (router logits, then the
whole selection per token; int32 expert ids); `TopKRouter` holds the gate and picks the path.

`FusedMoE` holds all experts' weights stacked (`w13_weight` [E, 2I, H]: gate rows then up rows;
`w2_weight` [E, H, I]) so that one grouped GEMM per projection serves every expert. On CUDA it runs
`lmlang.kernels.fused_moe.fused_experts`; elsewhere `ref_experts`, a loop over the experts hit.
Checkpoints store experts one by one (`experts.{e}.gate_proj.weight`, ...); `expert_params`
makes the `StackedParam` rows that route those names into the stacked parameters.
"""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmlang.kernels import moe_routing
from lmlang.kernels.moe_routing import RoutingConfig, select_experts  # noqa: F401 (RoutingConfig re-exported)
from lmlang.runtime.layers.dispatch import use_kernels
from lmlang.runtime.layers.linear import default_weight_loader, new_parameter
from lmlang.runtime.models.weight_mapping import StackedParam

EXPERT_SHARDS = ("w1", "w3", "w2")  # gate, up, down (Mixtral's checkpoint names)


def _float32_parameter(shape: tuple) -> nn.Parameter:
    param = nn.Parameter(torch.empty(shape, dtype=torch.float32), requires_grad=False)
    param.weight_loader = default_weight_loader
    return param


class TopKRouter(nn.Module):
    """The gate: `weight` [E, hidden] (never quantized; float32 when `logits_in_fp32`, as
    transformers keeps DeepSeek's), plus DeepSeek-V3's float32 `e_score_correction_bias` [E]."""

    def __init__(self, hidden_size: int, cfg: RoutingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        shape = (cfg.num_experts, hidden_size)
        self.weight = _float32_parameter(shape) if cfg.logits_in_fp32 else new_parameter(shape)
        self.e_score_correction_bias = _float32_parameter((cfg.num_experts,)) if cfg.correction_bias else None

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [n, hidden] -> 2 x [n, top_k]
        """Weights [n, top_k] float32 and expert ids [n, top_k]: int32 from the kernels (CUDA: two
        launches, `lmlang.kernels.moe_routing`), int64 from the torch code; the experts take either."""
        if use_kernels(hidden) and moe_routing.fused_topk_unsupported(self.cfg) is None:
            logits = moe_routing.router_logits(hidden, self.weight)  # [n, E] float32
            return moe_routing.fused_topk(logits, self.cfg, self.e_score_correction_bias)
        logits = F.linear(hidden.float() if self.cfg.logits_in_fp32 else hidden, self.weight)  # [n, E]
        return select_experts(logits, self.cfg, self.e_score_correction_bias)


def expert_slice(param: torch.Tensor, shard_id: Hashable, rows_w1: int) -> torch.Tensor:
    """The part of a stacked expert parameter ([E, rows, ...]) that shard `(expert, "w1"|"w3"|"w2")`
    fills: w1 (gate) the first `rows_w1` rows of w13, w3 (up) the next ones, w2 a whole w2 entry."""
    if not (isinstance(shard_id, tuple) and len(shard_id) == 2 and shard_id[1] in EXPERT_SHARDS):
        raise ValueError(f"expert parameter shard must be (expert, one of {EXPERT_SHARDS}), got {shard_id!r}")
    expert, which = shard_id
    if not 0 <= expert < param.shape[0]:
        raise ValueError(f"expert index {expert} out of range for {param.shape[0]} experts")
    if which == "w2":
        return param.data[expert]
    return param.data[expert].narrow(0, 0 if which == "w1" else rows_w1, rows_w1)


def copy_into(target: torch.Tensor, loaded: torch.Tensor, shard_id: Hashable) -> None:
    if target.shape != loaded.shape:
        raise ValueError(f"shard {shard_id!r}: checkpoint tensor has shape {tuple(loaded.shape)}, expected {tuple(target.shape)}")
    target.copy_(loaded)


def expert_shard_ids(num_experts: int, w13: bool) -> tuple:
    return tuple((e, w) for e in range(num_experts) for w in (("w1", "w3") if w13 else ("w2",)))


class FusedMoE(nn.Module):
    """All routed experts of one layer, stacked (see the module docstring).

    `forward(hidden [n, H], topk_weights [n, k], topk_ids [n, k], residual=None) -> [n, H]` computes
    `sum_j topk_weights[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t))` with e = topk_ids[t, j],
    plus `residual` ([n, H], e.g. the shared experts' output; on CUDA added by the same kernel
    that sums the slots).
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.w13_weight = new_parameter((num_experts, 2 * intermediate_size, hidden_size), self.weight_loader)
        self.w2_weight = new_parameter((num_experts, hidden_size, intermediate_size), self.weight_loader)
        self.w13_weight.shard_ids = expert_shard_ids(num_experts, w13=True)
        self.w2_weight.shard_ids = expert_shard_ids(num_experts, w13=False)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Hashable = None) -> None:
        copy_into(expert_slice(param, shard_id, self.intermediate_size), loaded, shard_id)

    def forward(
        self, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if hidden.is_cuda:
            from lmlang.kernels.fused_moe import fused_experts

            return fused_experts(hidden.contiguous(), self.w13_weight, self.w2_weight, topk_weights, topk_ids,
                                 residual=residual)
        out = ref_experts(hidden, self.w13_weight, self.w2_weight, topk_weights, topk_ids)
        return out + residual if residual is not None else out

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}"


def ref_experts(
    hidden: torch.Tensor,  # [n, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [n, k]
    topk_ids: torch.Tensor,  # [n, k]
) -> torch.Tensor:  # [n, H]
    """The experts in plain torch: one pair of matmuls per expert hit, in the input dtype."""
    out = torch.zeros_like(hidden)
    for expert in torch.unique(topk_ids).tolist():
        tokens, slots = (topk_ids == expert).nonzero(as_tuple=True)
        gate, up = F.linear(hidden[tokens], w13[expert]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, w2[expert]) * topk_weights[tokens, slots, None]
        out.index_add_(0, tokens, y.to(out.dtype))
    return out


class MoEBlock(nn.Module):
    """`experts(x, gate(x)) + shared_experts(x)`: the feed-forward of an MoE decoder layer.

    Attribute names follow the checkpoints (`gate`, `experts`, `shared_experts`).
    """

    def __init__(
        self, hidden_size: int, intermediate_size: int, routing: RoutingConfig, shared_experts: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        self.gate = TopKRouter(hidden_size, routing)
        self.experts = FusedMoE(routing.num_experts, hidden_size, intermediate_size)
        self.shared_experts = shared_experts

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, H] -> [n, H]
        topk_weights, topk_ids = self.gate(hidden)
        shared = self.shared_experts(hidden) if self.shared_experts is not None else None
        return self.experts(hidden, topk_weights, topk_ids, residual=shared)


def expert_params(
    num_experts: int,
    checkpoint_prefix: str = ".experts.",
    param_prefix: str = ".experts.",
    names: Sequence[str] = ("gate_proj", "up_proj", "down_proj"),
) -> list[StackedParam]:
    """Rows mapping `{checkpoint_prefix}{e}.{gate|up|down name}.` to the stacked `w13_` / `w2_`
    parameters of a `FusedMoE` at `{param_prefix}` (so `.weight` and `.weight_scale_inv` both map)."""
    gate, up, down = names
    rows = []
    for e in range(num_experts):
        for name, shard in ((gate, "w1"), (up, "w3"), (down, "w2")):
            target = f"{param_prefix}{'w2' if shard == 'w2' else 'w13'}_"
            rows.append(StackedParam(f"{checkpoint_prefix}{e}.{name}.", target, (e, shard)))
    return rows
