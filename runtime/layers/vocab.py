"""Token embedding and the language-model head (which may share the embedding's weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlang.runtime.layers.linear import new_parameter


class VocabEmbedding(nn.Module):
    """Token ids -> vectors. weight: [num_embeddings, embedding_dim]."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = new_parameter((num_embeddings, embedding_dim))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [n] -> [n, embedding_dim]
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """Hidden states -> vocabulary logits. weight: [vocab_size, hidden_size].

    `tie_to(embedding)` shares the embedding's Parameter (tie_word_embeddings); a tied head
    owns no parameter of its own, so the loader neither expects nor needs `lm_head.weight`.
    """

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.weight = new_parameter((vocab_size, hidden_size))

    def tie_to(self, embedding: VocabEmbedding) -> None:
        if embedding.weight.shape != self.weight.shape:
            raise ValueError(f"cannot tie lm_head {tuple(self.weight.shape)} to embedding {tuple(embedding.weight.shape)}")
        self.weight = embedding.weight
