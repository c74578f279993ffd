"""Facts about the served model that both the front end and the engine core need."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lmlang.runtime.config import EngineConfig


@dataclass(frozen=True)
class ModelInfo:
    model_path: str
    architecture: str
    context_length: int
    vocab_size: int
    eos_token_ids: tuple

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d


def load_model_info(cfg: EngineConfig) -> ModelInfo:
    from lmlang.runtime.model_loader import load_hf_config, model_facts

    config = load_hf_config(cfg.model_path)
    facts = model_facts(cfg.model_path, config)
    context = cfg.context_length or facts.context_length
    archs: Any = getattr(config, "architectures", None) or ["?"]
    return ModelInfo(cfg.model_path, archs[0], context, facts.vocab_size, tuple(facts.eos_token_ids))
