"""Plain data shared by the runtime's front end, its engine core and its clients.

Nothing here imports torch, so the language package and HTTP clients can use it for free.
`SamplingParams` is the single definition of the sampling parameter list (SGLang's names);
everything else that takes sampling options converts to it and merges with
`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

StopType = Union[str, list, None]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion.

    Field names follow SGLang's `sampling_params` so its clients work unchanged.
    `validate()` raises `ValueError` naming the offending field.

    Constraints (`regex`, `json_schema`, `grammar`) restrict the output to a language; EOS is
    allowed only where the constraint can end. `max_new_tokens` still caps the length (the
    output is then cut, `finish_reason.type == "length"`), and stop strings are matched on the
    constrained text as usual.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: StopType = None  # a str or a list of str; matched on the text, not emitted
    stop_token_ids: Optional[list] = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    seed: Optional[int] = None
    n: int = 1
    regex: Optional[str] = None
    json_schema: Optional[str] = None  # a JSON string (dicts are serialised by from_dict)
    grammar: Optional[str] = None  # lark syntax
    whitespace_pattern: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "SamplingParams":
        """Builds and validates params from a dict; unknown keys are a `ValueError`."""
        if d is None:
            return cls()
        if isinstance(d, SamplingParams):
            d.validate()
            return d
        if not isinstance(d, dict):
            raise ValueError(f"sampling_params must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - _IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        kwargs = {k: v for k, v in d.items() if k in names}
        if isinstance(kwargs.get("json_schema"), dict):
            import json

            kwargs["json_schema"] = json.dumps(kwargs["json_schema"])
        if "ebnf" in d and d["ebnf"] is not None:
            raise ValueError("sampling parameter 'ebnf' is not supported; use 'grammar' (lark syntax)")
        params = cls(**kwargs)
        params.validate()
        return params

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SamplingParams":
        return dataclasses.replace(self, **changes)

    @property
    def stop_strings(self) -> list:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def constraint(self) -> Optional[tuple]:
        """`(kind, source)` of the output constraint, or None."""
        given = [(k, getattr(self, k)) for k in ("regex", "json_schema", "grammar") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"only one of regex / json_schema / grammar may be set, got {[k for k, _ in given]}")
        return given[0] if given else None

    def validate(self) -> None:
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise ValueError(f"{name} {what}, got {getattr(self, name)!r}")

        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        need(is_int(self.max_new_tokens) and self.max_new_tokens >= 0, "max_new_tokens", "must be an int >= 0")
        need(is_int(self.min_new_tokens) and self.min_new_tokens >= 0, "min_new_tokens", "must be an int >= 0")
        need(self.min_new_tokens <= self.max_new_tokens, "min_new_tokens", "must be <= max_new_tokens")
        need(is_num(self.temperature) and self.temperature >= 0, "temperature", "must be a number >= 0")
        need(is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1), "top_k", "must be -1 or an int >= 1")
        need(is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        need(is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
        need(is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
        need(is_num(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty", "must be > 0")
        need(
            self.stop is None
            or isinstance(self.stop, str)
            or (isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop)),
            "stop",
            "must be a string or a list of non-empty strings",
        )
        need(self.stop != "", "stop", "must not be empty")
        need(
            self.stop_token_ids is None
            or (isinstance(self.stop_token_ids, (list, tuple)) and all(is_int(t) and t >= 0 for t in self.stop_token_ids)),
            "stop_token_ids",
            "must be a list of non-negative ints",
        )
        need(isinstance(self.ignore_eos, bool), "ignore_eos", "must be a bool")
        need(self.seed is None or is_int(self.seed), "seed", "must be an int or null")
        need(is_int(self.n) and 1 <= self.n <= 128, "n", "must be an int in [1, 128]")
        for name in ("regex", "json_schema", "grammar", "whitespace_pattern"):
            need(getattr(self, name) is None or isinstance(getattr(self, name), str), name, "must be a string")
        self.constraint  # noqa: B018 - raises on more than one constraint


# Accepted for SGLang compatibility, with no effect here.
_IGNORED_KEYS = {"spaces_between_special_tokens", "no_stop_trim", "custom_params", "ebnf", "stream_interval"}


@dataclass(frozen=True)
class FinishReason:
    """Why a request ended: `stop` (EOS, stop token or stop string), `length` or `abort`."""

    type: str
    matched: Union[int, str, None] = None
    message: Optional[str] = None
    invalid_request: bool = False  # rejected before running (bad input); the front end raises ValueError

    def to_dict(self) -> dict:
        d: dict = {"type": self.type}
        if self.matched is not None:
            d["matched"] = self.matched
        if self.message is not None:
            d["message"] = self.message
        if self.invalid_request:
            d["invalid_request"] = True
        return d


@dataclass
class GenerateReq:
    """A tokenized request, as the front end sends it to the engine core."""

    rid: str
    input_ids: list
    sampling_params: dict
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    priority: int = 0
    stream: bool = False
    # requests sent in one submission share a group id; in-batch prefix sharing works per group
    group: Optional[str] = None


@dataclass
class AbortReq:
    rid: str


@dataclass
class TokenOut:
    """New tokens for one request since the last message (sent by the engine core)."""

    rid: str
    token_ids: list
    finished: Optional[dict] = None  # FinishReason.to_dict() once finished
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    output_token_logprobs: Optional[list] = None  # [(logprob, token_id)] for the new tokens
    output_top_logprobs: Optional[list] = None  # [[(logprob, token_id), ...]] for the new tokens
    input_token_logprobs: Optional[list] = None  # sent once, with the first tokens
    input_top_logprobs: Optional[list] = None
    started_at: Optional[float] = None
    first_token_at: Optional[float] = None  # wall time the first output token was sampled


def to_wire(obj: Any) -> dict:
    """A message as a msgpack-able dict (type name + fields).

    Shallow on purpose: `dataclasses.asdict` deep-copies every list (a decode step's TokenOut per
    running request made it most of the engine core's host time at batch 256); fields that are
    dataclasses themselves are still converted."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    data = {}
    for name in names:
        value = getattr(obj, name)
        if type(value) not in _PLAIN and dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        data[name] = value
    return {"type": type(obj).__name__, "data": data}


_FIELD_NAMES: dict = {}
_PLAIN = (type(None), bool, int, float, str, bytes, list, tuple, dict)


_WIRE_TYPES: dict = {}


def wire_type(cls: type) -> type:
    _WIRE_TYPES[cls.__name__] = cls
    return cls


for _cls in (GenerateReq, AbortReq, TokenOut):
    wire_type(_cls)


@dataclass
class ControlReq:
    """A request to the engine core that is not a generation (flush, stats, pin, ...)."""

    cid: int
    op: str
    args: dict = field(default_factory=dict)


@dataclass
class ControlOut:
    cid: int
    result: Any = None
    error: Optional[str] = None


wire_type(ControlReq)
wire_type(ControlOut)


def from_wire(msg: dict) -> Any:
    return _WIRE_TYPES[msg["type"]](**msg["data"])
