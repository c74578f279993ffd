"""The pre-norm decoder skeleton the families share: layer, model body and causal-LM head.

A family supplies its attention module (`forward(positions, hidden, batch) -> [n, hidden]`) and
feed-forward (`[n, hidden] -> [n, hidden]`) per layer; everything around them (norms, residual
stream, embedding, final norm, LM head with optional tying) is here. Module names follow the
Hugging Face checkpoints (`model.embed_tokens`, `model.layers.{i}.self_attn`, `.mlp`,
`.input_layernorm`, `.post_attention_layernorm`, `model.norm`, `lm_head`), which the weight
loaders rely on.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from lmlang.runtime.forward_batch import ForwardBatch
from lmlang.runtime.layers.logits import compute_logits
from lmlang.runtime.layers.norm import RMSNorm
from lmlang.runtime.layers.vocab import LMHead, VocabEmbedding
from lmlang.runtime.models.base import CausalLM


class PreNormDecoderLayer(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(.)); the residual stream is carried separately so each
    norm fuses its add."""

    def __init__(self, config: Any, self_attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: Optional[torch.Tensor], batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderModel(nn.Module):
    """Token embedding, the decoder layers in order, final norm; returns the normed hidden state."""

    def __init__(self, config: Any, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None  # [n, hidden]
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, batch)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class DecoderForCausalLM(CausalLM):
    """A `DecoderModel` under an LM head (tied to the embedding when the config says so).

    Subclasses build `model` and still implement `load_weights` and `kv_cache_spec`;
    `ignored_weight_names` names the checkpoint entries every family skips."""

    def __init__(self, config: Any, model: DecoderModel) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.lm_head = LMHead(config.vocab_size, config.hidden_size)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    def ignored_weight_names(self) -> tuple[str, ...]:
        """Parts of checkpoint names not loaded: rotary caches, and the LM head when it is tied."""
        return ("rotary_emb.inv_freq",) + (("lm_head.",) if self.tie_word_embeddings else ())

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        return self.model(batch.input_ids, batch.positions, batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return compute_logits(hidden, self.lm_head)
