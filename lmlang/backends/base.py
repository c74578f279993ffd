"""The backend interface: where a program's gens and selects run."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lmlang.chat import ChatTemplate
from lmlang.choices import ChoiceMethod
from lmlang.runtime.protocol import SamplingParams


@dataclass
class GenRequest:
    """One generation: the prompt is `text` (the stream's whole text so far); `messages` is the
    same conversation in OpenAI format (open role last) for backends that only take messages."""

    text: str
    messages: list
    params: SamplingParams
    return_logprob: bool = False
    top_logprobs_num: int = 0
    on_text: Optional[Callable[[str], None]] = None  # streaming: called with each new piece


@dataclass
class GenResult:
    text: str
    meta_info: dict = field(default_factory=dict)


@dataclass
class SelectRequest:
    text: str
    messages: list
    choices: tuple
    method: ChoiceMethod


@dataclass
class SelectResult:
    index: int
    meta_info: dict = field(default_factory=dict)


class Backend(ABC):
    """A model a program runs against.

    Invariants: the async methods are awaited on an asyncio loop and may be awaited concurrently
    (the backend batches what arrives together); `generate` returns the generated text with stop
    strings removed and, when `on_text` is set, has passed exactly that text to it in pieces;
    `select` returns an index into the request's choices; `pin` returns None when the backend
    cannot hold a prefix, otherwise a handle that `unpin` releases once.
    """

    default_params: SamplingParams = SamplingParams()

    @abstractmethod
    def chat_template(self) -> ChatTemplate:
        """Role markers of the model's chat template (raises if it has none)."""

    @abstractmethod
    async def generate(self, request: GenRequest) -> GenResult: ...

    @abstractmethod
    async def select(self, request: SelectRequest) -> SelectResult: ...

    async def pin(self, text: str) -> Any:
        return None

    async def unpin(self, handle: Any) -> None:
        return None

    def run_program(self, program: Any, arguments: dict, defaults: dict, stream: bool) -> Any:
        """Runs a traced `Program` and returns its `ProgramState`; by default with the local
        program executor (a server backend sends the whole program instead)."""
        from lmlang.executor import execute_program

        return execute_program(program, self, arguments, defaults, stream)
