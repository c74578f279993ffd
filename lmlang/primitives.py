"""The primitives a program appends: `gen` and its typed forms, `select`, and the roles.

Each is a constructor returning IR (`lmlang.ir`); everything is checked here, at construction,
so a misspelt keyword or a bad value fails on the line that wrote it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from lmlang.choices import method_name, token_length_normalized
from lmlang.ir import Expr, Gen, RoleBegin, RoleEnd, Select, Seq, as_nodes
from lmlang.sampling import overrides_from_keywords

StopType = Union[str, Sequence[str], None]


def gen(
    name: Optional[str] = None,
    max_tokens: Optional[int] = None,
    *,
    stop: StopType = None,
    stop_token_ids: Optional[Sequence[int]] = None,
    min_tokens: Optional[int] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    min_p: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    presence_penalty: Optional[float] = None,
    ignore_eos: Optional[bool] = None,
    seed: Optional[int] = None,
    return_logprob: Optional[bool] = None,
    top_logprobs_num: Optional[int] = None,
    regex: Optional[str] = None,
    json_schema: Any = None,
    grammar: Optional[str] = None,
    choices: Optional[Sequence[str]] = None,
) -> Union[Gen, Select]:
    """Generate text into variable `name` (None: anonymous).

    Every sampling keyword left `None` inherits the run's default (`f.run(temperature=0)`), which
    inherits `SamplingParams`' default. `stop` strings end the generation and are not included.
    `regex`, `json_schema` (a dict, a JSON string or a pydantic model class) and `grammar` (lark
    syntax) constrain the output; at most one may be given. `choices` makes this a `select`.
    `return_logprob` / `top_logprobs_num` put token logprobs in `state.get_meta_info(name)`.
    """
    if choices is not None:
        return select(name, choices)
    overrides = overrides_from_keywords(
        dict(
            max_tokens=max_tokens, stop=stop, stop_token_ids=stop_token_ids, min_tokens=min_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
            seed=seed, regex=regex, json_schema=json_schema, grammar=grammar,
        )
    )
    return Gen(
        name,
        params=tuple(sorted(overrides.items())),
        return_logprob=return_logprob,
        top_logprobs_num=top_logprobs_num,
    )


def _typed(name: Optional[str], regex_name: str, dtype: str, keywords: dict) -> Gen:
    for k in ("regex", "json_schema", "grammar", "choices"):
        if k in keywords:
            raise TypeError(f"gen_{dtype}() takes no {k!r}: its constraint is fixed")
    import lmlang.grammar as grammar

    node = gen(name, regex=getattr(grammar, regex_name), **keywords)
    return Gen(node.name, node.params, node.return_logprob, node.top_logprobs_num, dtype=dtype)


def gen_int(name: Optional[str] = None, **keywords: Any) -> Gen:
    """Generate an integer (`lmlang.grammar.INT_REGEX`); the variable holds an `int`."""
    return _typed(name, "INT_REGEX", "int", keywords)


def gen_float(name: Optional[str] = None, **keywords: Any) -> Gen:
    """Generate a number (`lmlang.grammar.FLOAT_REGEX`); the variable holds a `float`."""
    return _typed(name, "FLOAT_REGEX", "float", keywords)


def gen_bool(name: Optional[str] = None, **keywords: Any) -> Gen:
    """Generate `true` or `false` (`lmlang.grammar.BOOL_REGEX`); the variable holds a `bool`."""
    return _typed(name, "BOOL_REGEX", "bool", keywords)


def gen_string(name: Optional[str] = None, **keywords: Any) -> Gen:
    """Generate a JSON string literal (`lmlang.grammar.STRING_REGEX`); the variable holds the
    decoded `str` (the text of the program keeps the quotes)."""
    return _typed(name, "STRING_REGEX", "string", keywords)


def select(name: Optional[str] = None, choices: Optional[Sequence[str]] = None, *, method: Any = token_length_normalized) -> Select:
    """Choose one of `choices` (non-empty strings) after the text so far; the variable holds it.

    Every choice is scored in one engine submission over the shared prefix; `method` is one of
    `token_length_normalized` (default), `greedy_token_selection`,
    `unconditional_likelihood_normalized`. `state.get_meta_info(name)` has the per-choice scores.
    """
    if choices is None or isinstance(choices, str) or len(choices) == 0:
        raise ValueError(f"select({name!r}) needs a non-empty list of choices, got {choices!r}")
    return Select(name, tuple(choices), method_name(method))


def _role(role: str, content: Any) -> Seq:
    return Seq((RoleBegin(role),) + as_nodes(content) + (RoleEnd(role),))


def system(content: Any = "") -> Seq:
    """A system message around `content` (text and primitives), marked by the chat template."""
    return _role("system", content)


def user(content: Any = "") -> Seq:
    """A user message around `content`."""
    return _role("user", content)


def assistant(content: Any = "") -> Seq:
    """An assistant message around `content` (typically a `gen`)."""
    return _role("assistant", content)


__all__ = [
    "Expr", "gen", "gen_int", "gen_float", "gen_bool", "gen_string", "select", "system", "user", "assistant",
]
