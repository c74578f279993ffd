"""What every route of one app shares: the engine, its tokenizer, the served model name, metrics."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from starlette.requests import Request

from lmlang.runtime.server.errors import APIError
from lmlang.runtime.server.generation import EngineClient
from lmlang.runtime.server.metrics import ServerMetrics


@dataclass
class ServerContext:
    """Per-app state, reachable from a route as `request.app.state.ctx` (see `ctx_of`).

    `served_model_name` is what `/v1/models` lists and what OpenAI requests must name (the model
    path is accepted too); a request naming any other model gets a 404.
    """

    engine: Any
    served_model_name: str
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.client = EngineClient(self.engine, self.metrics)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model_path(self) -> str:
        return engine_model_path(self.engine) or self.served_model_name

    @property
    def context_length(self) -> int:
        return int(self.engine.context_length)

    def check_model(self, name: Optional[str]) -> None:
        """404 unless `name` is empty or names the served model."""
        if not name:
            return
        if name not in (self.served_model_name, self.model_path):
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.served_model_name}' "
                                f"(see GET /v1/models)", param="model")

    def model_info(self) -> dict:
        tok = self.tokenizer
        return {
            "model_path": self.model_path,
            "served_model_name": self.served_model_name,
            "context_length": self.context_length,
            "vocab_size": int(getattr(self.engine, "vocab_size", None) or len(tok)),
            "chat_template": getattr(tok, "chat_template", None),
            "bos_token": tok.bos_token,
            "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token,
            "eos_token_id": tok.eos_token_id,
            "is_generation": True,
        }

    def models_list(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "lmlang",
            "root": self.model_path,
            "max_model_len": self.context_length,
        }]}


def engine_model_path(engine: Any) -> Optional[str]:
    """The checkpoint path the engine was started with (`engine.config.model_path`)."""
    path = getattr(engine, "model_path", None) or getattr(getattr(engine, "config", None), "model_path", None)
    return str(path) if path is not None else None


def default_served_name(model_path: str) -> str:
    """The name a model is served under when none is given: the path as given, minus a trailing '/'."""
    return model_path.rstrip(os.sep) or model_path


def ctx_of(request: Request) -> ServerContext:
    return request.app.state.ctx
