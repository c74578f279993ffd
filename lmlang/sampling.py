"""`gen`'s keyword names mapped onto the runtime's one `SamplingParams` list.

`GEN_TO_SAMPLING` is the only place the language names sampling options: each `gen` keyword
maps to a `SamplingParams` field. A keyword left `None` inherits the run's default; the run's
defaults inherit `SamplingParams`' own. Merging is `dataclasses.replace`, innermost last.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Optional

from lmlang.runtime.protocol import SamplingParams

GEN_TO_SAMPLING: dict = {
    "max_tokens": "max_new_tokens",
    "min_tokens": "min_new_tokens",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "ignore_eos": "ignore_eos",
    "seed": "seed",
    "regex": "regex",
    "json_schema": "json_schema",
    "grammar": "grammar",
}
CONSTRAINT_KEYWORDS = ("regex", "json_schema", "grammar")
# Keywords a run may set as defaults for every gen (constraints belong to one gen).
RUN_DEFAULT_KEYWORDS = tuple(k for k in GEN_TO_SAMPLING if k not in CONSTRAINT_KEYWORDS)


def overrides_from_keywords(keywords: dict) -> dict:
    """`SamplingParams` field -> value for the keywords that are not None, normalised and checked."""
    unknown = sorted(set(keywords) - set(GEN_TO_SAMPLING))
    if unknown:
        raise TypeError(f"unknown sampling keyword(s): {', '.join(unknown)}; known: {', '.join(GEN_TO_SAMPLING)}")
    overrides = {}
    for keyword, value in keywords.items():
        if value is None:
            continue
        field = GEN_TO_SAMPLING[keyword]
        overrides[field] = _normalise(field, value)
    check_overrides(overrides)
    return overrides


def check_overrides(overrides: dict) -> None:
    """Raises `ValueError` naming the gen keyword if `overrides` cannot form valid params."""
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
    probe = dict(overrides)
    # min_tokens alone is checked against itself, not against a default max the run may raise
    if "min_new_tokens" in probe and "max_new_tokens" not in probe and isinstance(probe["min_new_tokens"], int):
        probe["max_new_tokens"] = max(probe["min_new_tokens"], SamplingParams.max_new_tokens)
    for key in ("stop", "stop_token_ids"):
        if isinstance(probe.get(key), tuple):
            probe[key] = list(probe[key])
    try:
        dataclasses.replace(SamplingParams(), **probe).validate()
    except ValueError as e:
        raise ValueError(_gen_names(str(e))) from None
    if overrides.get("regex") is not None:
        _validate_regex(overrides["regex"])
    if overrides.get("json_schema") is not None:
        try:
            json.loads(overrides["json_schema"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"json_schema is not valid JSON: {e}") from None


def merge(base: SamplingParams, *layers: Optional[dict]) -> SamplingParams:
    """`base` with each layer of overrides applied in order (later wins)."""
    params = base
    for layer in layers:
        if layer:
            params = dataclasses.replace(params, **{k: list(v) if isinstance(v, tuple) else v for k, v in layer.items()})
    try:
        params.validate()
    except ValueError as e:
        raise ValueError(_gen_names(str(e))) from None
    return params


def sampling_dict(params: SamplingParams) -> dict:
    """The params as a `sampling_params` dict for the runtime: only fields that differ from default."""
    default = SamplingParams()
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if getattr(params, f.name) != getattr(default, f.name)}


def _normalise(field: str, value: Any) -> Any:
    if field == "stop":
        if isinstance(value, (list, tuple)):
            return tuple(value)
        return value
    if field == "stop_token_ids":
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"stop_token_ids must be a list of ints, got {value!r}")
        return tuple(value)
    if field == "json_schema":
        return _schema_string(value)
    return value


def _schema_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value)
    model_json_schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(model_json_schema):
        return json.dumps(model_json_schema())
    raise ValueError(f"json_schema must be a dict, a JSON string or a pydantic model class, got {type(value).__name__}")


def _validate_regex(pattern: str) -> None:
    from lmlang.grammar import validate_regex

    try:
        validate_regex(pattern)
    except ValueError as e:
        raise ValueError(f"invalid regex {pattern!r}: {e}") from None


def _gen_names(message: str) -> str:
    """Rewrites a `SamplingParams` validation message to use `gen`'s keyword names."""
    for keyword, field in GEN_TO_SAMPLING.items():
        if keyword != field:
            message = re.sub(rf"\b{field}\b", keyword, message)
    return message
