"""Token alignment for the fused MoE GEMM: (token, slot) pairs grouped by expert in padded blocks.

The M * top_k pairs of a batch, numbered `p = t * top_k + j`, are grouped by expert (stable: pairs
keep their flat order within an expert) and each expert's run is padded to a multiple of
`block_size` with the sentinel `M * top_k`, so that every block of `block_size` entries belongs to
one expert. The outputs are sized from the host-known shape only, never from the routing, so the
whole alignment is sync-free and can be captured in a CUDA graph:
- at most `max_blocks = (n + min(n, E) * (block_size - 1)) // block_size` blocks are used (each
  expert hit adds at most block_size - 1 padding entries), which keeps the GEMM grid tight when
  few pairs meet many experts (decode: 8 blocks for one DeepSeek-V3 token, not 241);
- small batches (n <= SMALL_ALIGN_MAX_PAIRS) run `moe_align_small_kernel`, one program that
  counts, prefix-sums and places the pairs in one launch, in [chunk, experts] one-hot tiles (at
  decode, the dozen small torch ops of the sort path cost more host time than the GEMMs take on
  the GPU);
- larger batches run `ref_moe_align_block_size`, a stable sort in torch, whose launches are hidden
  behind GEMMs that then take milliseconds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmlang.kernels.launch import launch, next_power_of_2, pdl_launch_dependents, pdl_wait

SMALL_ALIGN_MAX_PAIRS = 512  # up to here one program beats the sort path's dozen launches
SMALL_ALIGN_MAX_EXPERTS = 1024
_TILE_ELEMENTS = 8192  # [rows, experts] tiles the kernel holds at once (64 registers a thread at 4 warps)
_FILL_BLOCK = 1024


def max_aligned_blocks(num_pairs: int, block_size: int, num_experts: int) -> int:
    """Upper bound on the blocks `moe_align_block_size` uses for `num_pairs` pairs."""
    return (num_pairs + min(num_pairs, num_experts) * (block_size - 1)) // block_size


@triton.jit
def moe_align_small_kernel(
    topk_ids_ptr,  # [num_pairs] expert of each pair, any int dtype
    sorted_ids_ptr,  # [num_slots] int32 out
    expert_ids_ptr,  # [num_blocks] int32 out
    num_post_ptr,  # [1] int32 out
    num_pairs, num_experts, num_slots, num_blocks,
    BLOCK_SIZE_M: tl.constexpr,
    EXPERTS: tl.constexpr,  # power of two >= num_experts
    CHUNK: tl.constexpr,  # pairs (and blocks) per step: CHUNK x EXPERTS tiles
    FILL_BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_launch_dependents(USE_PDL)
    pdl_wait(USE_PDL)  # the routing (topk_ids) comes from the kernel before; outputs may still be read
    experts = tl.arange(0, EXPERTS)
    counts = tl.zeros((EXPERTS,), dtype=tl.int32)
    for first in range(0, num_pairs, CHUNK):
        pairs = first + tl.arange(0, CHUNK)
        ids = tl.load(topk_ids_ptr + pairs, mask=pairs < num_pairs, other=-1).to(tl.int32)  # -1: no expert
        counts += tl.sum((ids[:, None] == experts[None, :]).to(tl.int32), axis=0)
    padded = (counts + BLOCK_SIZE_M - 1) // BLOCK_SIZE_M * BLOCK_SIZE_M  # [EXPERTS]
    ends = tl.cumsum(padded, axis=0)  # inclusive prefix sums
    starts = ends - padded

    for first in range(0, num_slots, FILL_BLOCK):  # the sentinel everywhere, then the pairs on top
        slots = first + tl.arange(0, FILL_BLOCK)
        tl.store(sorted_ids_ptr + slots, tl.full((FILL_BLOCK,), 0, tl.int32) + num_pairs, mask=slots < num_slots)
    tl.debug_barrier()  # one program: orders the fill before the scatter to the same addresses
    placed = tl.zeros((EXPERTS,), dtype=tl.int32)  # pairs of each expert placed by earlier chunks
    for first in range(0, num_pairs, CHUNK):
        pairs = first + tl.arange(0, CHUNK)
        ids = tl.load(topk_ids_ptr + pairs, mask=pairs < num_pairs, other=-1).to(tl.int32)
        onehot = (ids[:, None] == experts[None, :]).to(tl.int32)  # [CHUNK, EXPERTS]
        # stable rank among the expert's pairs: earlier chunks, then the running count in this one
        before = tl.cumsum(onehot, axis=0) - 1 + placed[None, :]
        dest = tl.sum(onehot * (starts[None, :] + before), axis=1)  # [CHUNK]
        tl.store(sorted_ids_ptr + dest, pairs, mask=pairs < num_pairs)
        placed += tl.sum(onehot, axis=0)

    total = tl.sum(padded, axis=0)
    real = experts[None, :] < num_experts
    for first in range(0, num_blocks, CHUNK):
        blocks = first + tl.arange(0, CHUNK)
        block_start = blocks * BLOCK_SIZE_M
        expert = tl.sum(((ends[None, :] <= block_start[:, None]) & real).to(tl.int32), axis=1)  # [CHUNK]
        tl.store(expert_ids_ptr + blocks, tl.where(block_start < total, expert, -1), mask=blocks < num_blocks)
    tl.store(num_post_ptr + tl.arange(0, 1), tl.full((1,), 0, tl.int32) + total)


def moe_align_block_size(
    topk_ids: torch.Tensor, block_size: int, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups (token, slot) pairs by expert, padding each expert's run to a multiple of block_size.

    topk_ids: [M, top_k] expert ids in [0, num_experts), contiguous. With n = M * top_k and
    B = `max_aligned_blocks(n, block_size, num_experts)`, returns
    - sorted_ids [B * block_size] int32: flat pair index `t * top_k + j`, or the sentinel n in
      padding and in the unused tail;
    - expert_ids [B] int32: the expert of each block, -1 past the end;
    - num_tokens_post_padded [1] int32: how many entries of sorted_ids are in use.
    Within an expert, pairs keep their flat order. No host sync (see the module docstring).
    """
    if topk_ids.dim() != 2 or not topk_ids.is_contiguous():
        raise ValueError(f"moe_align_block_size: topk_ids must be a contiguous [M, top_k], got {tuple(topk_ids.shape)}")
    if block_size < 1 or num_experts < 1:
        raise ValueError(f"moe_align_block_size: block_size {block_size} and num_experts {num_experts} must be >= 1")
    n = topk_ids.numel()
    if not 0 < n <= SMALL_ALIGN_MAX_PAIRS or num_experts > SMALL_ALIGN_MAX_EXPERTS:
        return ref_moe_align_block_size(topk_ids, block_size, num_experts)
    experts_pad = next_power_of_2(num_experts)
    num_blocks = max_aligned_blocks(n, block_size, num_experts)
    device = topk_ids.device
    sorted_ids = torch.empty(num_blocks * block_size, dtype=torch.int32, device=device)
    expert_ids = torch.empty(num_blocks, dtype=torch.int32, device=device)
    num_post = torch.empty(1, dtype=torch.int32, device=device)
    launch(
        moe_align_small_kernel, (1,), topk_ids, sorted_ids, expert_ids, num_post,
        n, num_experts, sorted_ids.shape[0], num_blocks,
        BLOCK_SIZE_M=block_size, EXPERTS=experts_pad, CHUNK=max(1, _TILE_ELEMENTS // experts_pad),
        FILL_BLOCK=_FILL_BLOCK, num_warps=4, pdl=True,
    )
    return sorted_ids, expert_ids, num_post


def ref_moe_align_block_size(
    topk_ids: torch.Tensor, block_size: int, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch version of `moe_align_block_size` (same outputs): a stable sort by expert. Also the
    large-batch path; it stays sync-free (no bincount, nonzero or unique)."""
    device = topk_ids.device
    flat = topk_ids.flatten().long()  # [n]
    n = flat.numel()
    num_blocks = max_aligned_blocks(n, block_size, num_experts)
    counts = torch.zeros(num_experts, dtype=torch.long, device=device).index_add_(
        0, flat, torch.ones_like(flat)
    )  # [E]; index_add_, not bincount, which needs the max on the host
    padded_counts = (counts + block_size - 1) // block_size * block_size
    padded_ends = padded_counts.cumsum(0)  # [E]
    order = torch.argsort(flat, stable=True)  # [n] pair indices grouped by expert
    sorted_experts = flat[order]
    rank = torch.arange(n, device=device) - (counts.cumsum(0) - counts)[sorted_experts]
    dest = (padded_ends - padded_counts)[sorted_experts] + rank
    sorted_ids = torch.full((num_blocks * block_size,), n, dtype=torch.int32, device=device)
    sorted_ids[dest] = order.to(torch.int32)
    block_starts = torch.arange(num_blocks, device=device) * block_size
    expert_ids = torch.searchsorted(padded_ends, block_starts, right=True)  # [num_blocks], E past the end
    expert_ids = torch.where(expert_ids < num_experts, expert_ids, -1).to(torch.int32)
    return sorted_ids, expert_ids, padded_ends[-1:].to(torch.int32)
