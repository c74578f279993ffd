"""Owns the model, the KV pool and the attention backend; runs one forward per scheduled batch.

Per forward: the `BatchBuilder` turns the scheduled chunks into a `ForwardBatch` (one host-to-device
copy per dtype); a DECODE batch that fits a captured CUDA graph is padded to its bucket and
replayed (`runtime/cuda_graph.py`); anything else is planned by the attention backend and run
eagerly. Logits are computed only for the requested rows (all rows, for graph replays).

Attention backend (when `attention_backend` is None): on CUDA, `flashinfer` for bf16 / fp16 models
whose layers share one `Attention` shape, `mla` for models that attend over their own latent pool
(no `Attention` layers), else `triton`; `torch` on CPU.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from lmlang.kernels.launch import without_pdl
from lmlang.runtime.attention.base import AttentionSpec, create_backend
from lmlang.runtime.attention.compiled_op import forward_batch_context
from lmlang.runtime.batch_builder import BatchBuilder, SeqChunk
from lmlang.runtime.cache.kv_pool import KVPool, MHAKVPool
from lmlang.runtime.config import EngineConfig
from lmlang.runtime.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger(__name__)

CPU_DEFAULT_SLOTS = 32768

__all__ = ["ModelRunner", "SeqChunk", "attention_spec_of"]


def attention_spec_of(model: torch.nn.Module) -> Optional[AttentionSpec]:
    """The attention shape shared by the model's `Attention` layers; None if it has none or several."""
    from lmlang.runtime.layers.attention import Attention

    specs = {
        AttentionSpec(m.num_heads, m.num_kv_heads, m.head_dim, m.v_head_dim, m.scaling)
        for m in model.modules()
        if isinstance(m, Attention)
    }
    return specs.pop() if len(specs) == 1 else None


class ModelRunner:
    def __init__(self, cfg: EngineConfig) -> None:
        from lmlang.runtime.model_loader import load_model

        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.model, self.hf_config = load_model(
            cfg.model_path, dtype=cfg.dtype, device=self.device, load_format=cfg.load_format, seed=cfg.seed,
            quantization=cfg.quantization, show_progress=cfg.show_progress,
        )
        self.dtype = next(self.model.parameters()).dtype
        self.model.eval()
        self.attn_spec = attention_spec_of(self.model)
        self.num_slots = self._pool_size()
        self.kv_pool = self._make_pool(self.num_slots)
        self.attn_backend = create_backend(
            self._backend_name(), kv_pool=self.kv_pool, device=self.device, spec=self.attn_spec,
            page_size=cfg.page_size,
        )
        self.builder = BatchBuilder(self.device, self.kv_pool, self.attn_backend)
        self.forward_passes = 0
        self.graph_runner = None
        if self._graphs_wanted():
            self._capture_graphs()

    # ---- set-up ----------------------------------------------------------------------------

    def _backend_name(self) -> str:
        if self.cfg.attention_backend:
            return self.cfg.attention_backend
        if self.device.type != "cuda":
            return "torch"
        if self.attn_spec is None and hasattr(self.model.kv_cache_spec(), "make_pool"):
            return "mla"
        if self.attn_spec is not None and self.dtype in (torch.bfloat16, torch.float16):
            try:
                import flashinfer  # noqa: F401

                return "flashinfer"
            except ImportError:
                logger.warning("flashinfer is not installed; using the triton attention backend")
        return "triton"

    def _pool_size(self) -> int:
        if self.cfg.max_total_tokens is not None:
            return self.cfg.max_total_tokens
        if self.device.type != "cuda":
            return CPU_DEFAULT_SLOTS
        free, _ = torch.cuda.mem_get_info(self.device)
        per_slot = self._make_pool(1).bytes_per_slot()
        budget = free * self.cfg.mem_fraction_static
        return max(int(budget // per_slot) // self.cfg.page_size * self.cfg.page_size, 16)

    def _make_pool(self, num_slots: int) -> KVPool:
        spec = self.model.kv_cache_spec()
        make = getattr(spec, "make_pool", None)
        if make is not None:
            return make(num_slots, self.dtype, self.device)
        return MHAKVPool(
            num_slots, spec.num_layers, spec.num_kv_heads, spec.head_dim, self.dtype, self.device, spec.v_head_dim
        )

    def _graphs_wanted(self) -> bool:
        cfg = self.cfg
        if not cfg.cuda_graph or self.device.type != "cuda":
            if cfg.torch_compile:
                logger.warning("torch_compile applies to captured decode graphs only; it is ignored without them")
            return False
        if not self.attn_backend.supports_cuda_graph:
            logger.info("CUDA graphs off: the %s backend cannot be captured", type(self.attn_backend).__name__)
            return False
        return True

    def _capture_graphs(self) -> None:
        from lmlang.runtime.cuda_graph import CudaGraphRunner, graph_batch_sizes

        forward_fn = self.forward_logits
        if self.cfg.torch_compile:
            forward_fn = torch.compile(self.forward_logits, dynamic=True)
        max_bs = min(self.cfg.cuda_graph_max_batch, self.cfg.max_running_requests)
        runner = CudaGraphRunner(self, graph_batch_sizes(max_bs), forward_fn, kv_capacity=2 * self.num_slots + max_bs)
        try:
            with torch.inference_mode():
                runner.capture()
        except RuntimeError as e:  # e.g. a host sync inside the forward (some MoE paths)
            logger.warning("CUDA graphs off: capture failed: %s", e)
            torch.cuda.synchronize(self.device)
            return
        self.graph_runner = runner

    # ---- forwards ----------------------------------------------------------------------------

    def forward_logits(self, batch: ForwardBatch) -> torch.Tensor:
        """Model forward plus logits of every row: [num_tokens, vocab] float32 (what graphs capture)."""
        return self.model.compute_logits(self.model(batch))

    @torch.inference_mode()
    def forward(
        self,
        mode: ForwardMode,
        seqs: Sequence[SeqChunk],
        logit_rows: Sequence[int],  # token rows (in the ragged batch) whose logits are returned
        custom_mask: Optional[torch.Tensor] = None,
        input_ids: Optional[torch.Tensor] = None,  # [num_tokens] on the device, replacing the chunks' ids
    ) -> torch.Tensor:  # [len(logit_rows), vocab] float32
        """Runs the model on the chunks; `input_ids` lets a decode step take the previous step's
        sampled tokens straight from the device (overlap scheduling)."""
        rows = list(logit_rows)
        self.forward_passes += 1
        graphs = self.graph_runner
        if (
            graphs is not None and mode.is_decode and custom_mask is None
            and graphs.can_run(len(seqs), sum(s.seq_len for s in seqs))
        ):
            batch = self.builder.build(mode, seqs, pad_to=graphs.bucket(len(seqs)))
            _override_input_ids(batch, input_ids)
            logits = graphs.replay(batch)  # [bucket, vocab], overwritten by the next replay: copy out
            if rows == list(range(len(rows))):
                return logits[: len(rows)].clone()
            return logits.index_select(0, torch.tensor(rows, dtype=torch.long, device=self.device))
        batch = self.build_batch(mode, seqs, custom_mask)
        _override_input_ids(batch, input_ids)
        self.attn_backend.plan(batch)
        with without_pdl():  # eager: the host sets the pace, PDL would only add launch cost
            with forward_batch_context(batch):
                hidden = self.model(batch)  # [num_tokens, hidden]
            if not rows:
                return torch.empty(0, 0)
            if rows != list(range(len(rows))):
                hidden = hidden.index_select(0, torch.tensor(rows, dtype=torch.long, device=self.device))
            else:
                hidden = hidden[: len(rows)]
            return self.model.compute_logits(hidden).float()

    def build_batch(self, mode: ForwardMode, seqs: Sequence[SeqChunk], custom_mask=None) -> ForwardBatch:
        """The `ForwardBatch` of these chunks (not planned)."""
        return self.builder.build(mode, seqs, custom_mask)


def _override_input_ids(batch: ForwardBatch, input_ids: Optional[torch.Tensor]) -> None:
    if input_ids is not None:
        batch.input_ids[: input_ids.shape[0]].copy_(input_ids, non_blocking=True)
