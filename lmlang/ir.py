"""The intermediate representation: immutable nodes that a program appends to a stream.

Every primitive (`gen`, `select`, roles, constant text, ...) constructs one of these frozen
dataclasses; the interpreter, the tracer and the program executor all consume the same nodes
through one visitor (`lmlang.visitor.NodeVisitor`). Nodes are plain data: they hold strings,
numbers and tuples only, so a traced `Program` serialises to JSON and back to an equal value.

`a + b` on nodes (or a node and a str) builds a `Seq`, an expression that is flattened into
its items when appended; `Seq` itself never appears in a stream.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Union

ROLES = ("system", "user", "assistant")
GEN_DTYPES = ("str", "int", "float", "bool", "string")


class Expr:
    """Anything that can be appended to a program state; `+` concatenates."""

    def __add__(self, other: Any) -> "Seq":
        return Seq(as_nodes(self) + as_nodes(other))

    def __radd__(self, other: Any) -> "Seq":
        return Seq(as_nodes(other) + as_nodes(self))


@dataclass(frozen=True)
class Node(Expr):
    """Base of the nodes that make up a stream."""


@dataclass(frozen=True)
class Text(Node):
    """Constant text."""

    value: str

    def __post_init__(self) -> None:
        _require(isinstance(self.value, str), f"Text.value must be a str, got {type(self.value).__name__}")


@dataclass(frozen=True)
class Argument(Node):
    """The text of a program argument, bound when the program runs."""

    name: str

    def __post_init__(self) -> None:
        _require(_is_name(self.name), f"Argument.name must be a non-empty str, got {self.name!r}")


@dataclass(frozen=True)
class VarRef(Node):
    """The text of a variable; `stream` names the stream that sets it (None: the appending one)."""

    name: str
    stream: Optional[str] = None

    def __post_init__(self) -> None:
        _require(_is_name(self.name), f"VarRef.name must be a non-empty str, got {self.name!r}")
        _require(self.stream is None or _is_name(self.stream), f"VarRef.stream must be a str, got {self.stream!r}")


@dataclass(frozen=True)
class Gen(Node):
    """A generation. `params` are `SamplingParams` overrides as sorted `(field, value)` pairs.

    `dtype` converts the generated text: "str" (as is), "int", "float", "bool", or "string"
    (a JSON string literal decoded to str).
    """

    name: Optional[str]
    params: tuple = ()
    return_logprob: Optional[bool] = None
    top_logprobs_num: Optional[int] = None
    dtype: str = "str"

    def __post_init__(self) -> None:
        from lmlang.sampling import check_overrides

        _require(self.name is None or _is_name(self.name), f"gen name must be a non-empty str, got {self.name!r}")
        _require(self.dtype in GEN_DTYPES, f"Gen.dtype must be one of {GEN_DTYPES}, got {self.dtype!r}")
        _require(self.return_logprob is None or isinstance(self.return_logprob, bool), "return_logprob must be a bool")
        _require(
            self.top_logprobs_num is None or (isinstance(self.top_logprobs_num, int) and self.top_logprobs_num >= 0),
            f"top_logprobs_num must be an int >= 0, got {self.top_logprobs_num!r}",
        )
        check_overrides(dict(self.params))

    @property
    def overrides(self) -> dict:
        return dict(self.params)


@dataclass(frozen=True)
class Select(Node):
    """Choose one of `choices` by scoring each after the text so far; `method` names a choice method."""

    name: Optional[str]
    choices: tuple
    method: str = "token_length_normalized"

    def __post_init__(self) -> None:
        from lmlang.choices import CHOICE_METHODS

        _require(self.name is None or _is_name(self.name), f"select name must be a non-empty str, got {self.name!r}")
        _require(isinstance(self.choices, tuple) and len(self.choices) > 0, "select needs at least one choice")
        for c in self.choices:
            _require(isinstance(c, str) and c != "", f"select choices must be non-empty strings, got {c!r}")
        _require(self.method in CHOICE_METHODS, f"unknown choice method {self.method!r}; known: {sorted(CHOICE_METHODS)}")


@dataclass(frozen=True)
class RoleBegin(Node):
    role: str

    def __post_init__(self) -> None:
        _require(self.role in ROLES, f"role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class RoleEnd(Node):
    role: str

    def __post_init__(self) -> None:
        _require(self.role in ROLES, f"role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class VarScopeBegin(Node):
    """Start capturing appended text into variable `name`."""

    name: str

    def __post_init__(self) -> None:
        _require(_is_name(self.name), f"var_scope name must be a non-empty str, got {self.name!r}")


@dataclass(frozen=True)
class VarScopeEnd(Node):
    name: str

    def __post_init__(self) -> None:
        _require(_is_name(self.name), f"var_scope name must be a non-empty str, got {self.name!r}")


@dataclass(frozen=True)
class Fork(Node):
    """Start the child streams `children`, each from a copy of this stream's state."""

    children: tuple

    def __post_init__(self) -> None:
        _require(isinstance(self.children, tuple) and len(self.children) >= 1, "Fork needs at least one child stream")
        _require(all(_is_name(c) for c in self.children), f"Fork.children must be stream ids, got {self.children!r}")


@dataclass(frozen=True)
class Join(Node):
    """Wait for `children` and gather each variable they set into a list (in child order)."""

    children: tuple

    def __post_init__(self) -> None:
        _require(isinstance(self.children, tuple) and len(self.children) >= 1, "Join needs at least one child stream")
        _require(all(_is_name(c) for c in self.children), f"Join.children must be stream ids, got {self.children!r}")


@dataclass(frozen=True)
class Seq(Expr):
    """A concatenation of nodes; flattened into its items when appended."""

    items: tuple


NODE_TYPES: dict = {
    cls.__name__: cls
    for cls in (Text, Argument, VarRef, Gen, Select, RoleBegin, RoleEnd, VarScopeBegin, VarScopeEnd, Fork, Join)
}


def as_nodes(x: Any) -> tuple:
    """The nodes that appending `x` means: a str is Text, a Seq its items, a node itself.

    Placeholders handed out by the tracer (traced arguments and variables) convert through
    their `__lmlang_node__` method.
    """
    if isinstance(x, str):
        return (Text(x),) if x else ()
    if isinstance(x, Seq):
        return x.items
    if isinstance(x, Node):
        return (x,)
    to_node = getattr(type(x), "__lmlang_node__", None)
    if to_node is not None:
        return (to_node(x),)
    raise TypeError(
        f"cannot append a {type(x).__name__} to a program: append str or lmlang primitives "
        f"(convert other values with str(...))"
    )


def node_to_dict(node: Node) -> dict:
    """A JSON-ready dict: `{"op": <type name>, <field>: <value>, ...}`; tuples become lists."""
    out: dict = {"op": type(node).__name__}
    for f in fields(node):
        value = getattr(node, f.name)
        if isinstance(node, Gen) and f.name == "params":
            value = {k: _thaw(v) for k, v in value}
        out[f.name] = _thaw(value)
    return out


def node_from_dict(d: dict) -> Node:
    """Inverse of `node_to_dict`; raises `ValueError` for an unknown op or bad fields."""
    if not isinstance(d, dict) or not isinstance(d.get("op"), str):
        raise ValueError(f"a program node must be an object with an 'op' string, got {d!r}")
    cls = NODE_TYPES.get(d["op"])
    if cls is None:
        raise ValueError(f"unknown program node op {d['op']!r}; known: {sorted(NODE_TYPES)}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names - {"op"})
    if unknown:
        raise ValueError(f"{d['op']} node has unknown field(s): {', '.join(unknown)}")
    kwargs = {k: _freeze(v) for k, v in d.items() if k != "op"}
    if cls is Gen and "params" in d:
        if not isinstance(d["params"], dict):
            raise ValueError(f"Gen.params must be an object, got {d['params']!r}")
        kwargs["params"] = tuple(sorted((k, _freeze(v)) for k, v in d["params"].items()))
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad {d['op']} node {d!r}: {e}") from None


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def _is_name(x: Any) -> bool:
    return isinstance(x, str) and x != ""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


TextLike = Union[str, Expr]
