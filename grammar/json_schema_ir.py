"""The small grammar IR that JSON-schema compilation builds, rendered as one regex or as lark.

A `Grammar` is a root node plus named rules. Nodes are immutable: `Lit` (literal text), `Pat` (a
self-contained regex fragment that never matches the empty string: a whole JSON scalar, a key, a
punctuation token with its whitespace), `Seq`, `Alt`, `Rep` (counted repetition) and `Ref` (a
named rule, possibly recursive). `None` stands for the empty language (an unsatisfiable
subschema); the constructors `seq`, `alt`, `opt`, `rep` propagate it, so callers never build a
node that contains `None`.

Rendering: `to_regex` inlines every rule (refused by `is_recursive` grammars); `to_lark` emits one
lark rule per named rule plus `start`. Lark terminals are never zero-width because every leaf
matches at least one character (whitespace is attached to punctuation, never a leaf of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

_REGEX_META = set(".^$*+?{}[]\\|()")
# Ref-free subtrees up to this many regex characters become one lark terminal.
_TERMINAL_CHARS = 600


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Pat:
    regex: str


@dataclass(frozen=True)
class Seq:
    parts: tuple


@dataclass(frozen=True)
class Alt:
    options: tuple


@dataclass(frozen=True)
class Rep:
    node: "Node"
    min: int
    max: int | None


@dataclass(frozen=True)
class Ref:
    name: str


Node = Union[Lit, Pat, Seq, Alt, Rep, Ref]
EMPTY = Seq(())


def seq(*parts: Node | None) -> Node | None:
    """Concatenation; None if any part is None. Nested sequences are flattened, literals merged."""
    out: list = []
    for part in parts:
        if part is None:
            return None
        for p in part.parts if isinstance(part, Seq) else (part,):
            if isinstance(p, Lit) and out and isinstance(out[-1], Lit):
                out[-1] = Lit(out[-1].text + p.text)
            else:
                out.append(p)
    return out[0] if len(out) == 1 else Seq(tuple(out))


def alt(*options: Node | None) -> Node | None:
    """Alternation; None options are dropped, None if none is left. An EMPTY option becomes `opt`."""
    out: list = []
    has_empty = False
    for option in options:
        if option is None:
            continue
        for o in option.options if isinstance(option, Alt) else (option,):
            if o == EMPTY:
                has_empty = True
            elif o not in out:
                out.append(o)
    if not out:
        return EMPTY if has_empty else None
    node = out[0] if len(out) == 1 else Alt(tuple(out))
    return opt(node) if has_empty else node


def opt(node: Node | None) -> Node:
    """Zero or one; the optional empty language is the empty string."""
    return rep(node, 0, 1)


def rep(node: Node | None, lo: int, hi: int | None) -> Node | None:
    """`node` repeated lo..hi times (hi None: unbounded)."""
    if hi is not None and hi < lo:
        return None
    if node is None or node == EMPTY or hi == 0:
        return EMPTY if lo == 0 or node == EMPTY else None
    if lo == hi == 1:
        return node
    if isinstance(node, Rep) and node.min == 0 and node.max == 1 and lo == 0 and hi == 1:
        return node
    return Rep(node, lo, hi)


@dataclass
class Grammar:
    """A root node and named rules (rule bodies may reference each other, recursively)."""

    root: Node | None
    rules: dict[str, Node | None] = field(default_factory=dict)

    def prune(self) -> None:
        """Remove references to rules with an empty language and rules the root cannot reach."""
        productive: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, body in self.rules.items():
                if name not in productive and body is not None and _productive(body, productive):
                    productive.add(name)
                    changed = True
        empty = {name for name, body in self.rules.items() if body == EMPTY}
        rewritten = {name: _rewrite(body, productive, empty) if name in productive else None for name, body in self.rules.items()}
        self.root = _rewrite(self.root, productive, empty) if self.root is not None else None
        self.rules = {}
        stack = [self.root] if self.root is not None else []
        while stack:
            for name in _refs(stack.pop()):
                if name not in self.rules:
                    self.rules[name] = rewritten[name]
                    stack.append(rewritten[name])

    def is_recursive(self) -> bool:
        """Whether some rule reaches itself (then only the lark rendering exists)."""
        state: dict[str, int] = {}

        def visit(name: str) -> bool:
            state[name] = 1
            for child in _refs(self.rules[name]):
                if state.get(child) == 1 or (child not in state and visit(child)):
                    return True
            state[name] = 2
            return False

        return any(name not in state and visit(name) for name in self.rules)

    def regex_size(self) -> int:
        """The length of `to_regex()` without building it (rules are counted once per use)."""
        sizes: dict[str, int] = {}

        def size(node: Node) -> int:
            if isinstance(node, Lit):
                return len(node.text) * 2
            if isinstance(node, Pat):
                return len(node.regex) + 4
            if isinstance(node, Ref):
                if node.name not in sizes:
                    sizes[node.name] = size(self.rules[node.name])
                return sizes[node.name]
            if isinstance(node, Rep):
                return size(node.node) + 12
            children = node.parts if isinstance(node, Seq) else node.options
            return sum(size(c) for c in children) + len(children) + 4

        return size(self.root)

    def to_regex(self) -> str:
        """One regex for the whole language (requires a non-recursive grammar)."""
        memo: dict[tuple[str, str], str] = {}
        return _regex(self.root, "alt", self.rules, memo)

    def to_lark(self) -> str:
        """Lark grammar source with start rule `start`."""
        lines = [f"start: {_lark(self.root, self.rules)[0]}"]
        for name, body in self.rules.items():
            lines.append(f"{name}: {_lark(body, self.rules)[0]}")
        return "\n".join(lines) + "\n"


def _productive(node: Node, productive: set[str]) -> bool:
    if isinstance(node, (Lit, Pat)):
        return True
    if isinstance(node, Ref):
        return node.name in productive
    if isinstance(node, Rep):
        return node.min == 0 or _productive(node.node, productive)
    if isinstance(node, Seq):
        return all(_productive(p, productive) for p in node.parts)
    return any(_productive(o, productive) for o in node.options)


def _rewrite(node: Node, productive: set[str], empty: set[str]) -> Node | None:
    if isinstance(node, (Lit, Pat)):
        return node
    if isinstance(node, Ref):
        if node.name in empty:
            return EMPTY
        return node if node.name in productive else None
    if isinstance(node, Rep):
        return rep(_rewrite(node.node, productive, empty), node.min, node.max)
    if isinstance(node, Seq):
        return seq(*(_rewrite(p, productive, empty) for p in node.parts))
    return alt(*(_rewrite(o, productive, empty) for o in node.options))


def _refs(node: Node):
    if isinstance(node, Ref):
        yield node.name
    elif isinstance(node, Rep):
        yield from _refs(node.node)
    elif isinstance(node, (Seq, Alt)):
        for child in node.parts if isinstance(node, Seq) else node.options:
            yield from _refs(child)


def escape_literal(text: str) -> str:
    """`text` as a regex matching exactly it (control characters as \\xHH)."""
    from .json_schema_strings import regex_char

    return "".join(regex_char(ord(ch), _REGEX_META) for ch in text)


def _quantifier(lo: int, hi: int | None) -> str:
    if (lo, hi) == (0, 1):
        return "?"
    if hi is None:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


def _atom_end(regex: str, start: int) -> int:
    """The index just past the atom (character, escape, class or group) that begins at `start`."""
    ch = regex[start]
    if ch == "\\":
        if regex[start + 1] in "xuU":
            return start + {"x": 4, "u": 6, "U": 10}[regex[start + 1]]
        return start + 2
    if ch == "[":
        i = start + 1
        if i < len(regex) and regex[i] == "^":
            i += 1
        while regex[i] != "]" or i == start + 1:
            i += 2 if regex[i] == "\\" else 1
        return i + 1
    if ch == "(":
        depth, i = 0, start
        while True:
            c = regex[i]
            if c == "\\":
                i += 2
                continue
            if c == "[":
                i = _atom_end(regex, i)
                continue
            depth += {"(": 1, ")": -1}.get(c, 0)
            i += 1
            if depth == 0:
                return i
    return start + 1


def _is_atom(regex: str) -> bool:
    """A single character, escape, class or group, which a quantifier may follow as it is."""
    return bool(regex) and regex[0] not in "*+?{|)" and _atom_end(regex, 0) == len(regex)


def _regex(node: Node, ctx: str, rules: dict, memo: dict) -> str:
    if isinstance(node, Ref):
        key = (node.name, ctx)
        if key not in memo:
            memo[key] = _regex(rules[node.name], ctx, rules, memo)
        return memo[key]
    if isinstance(node, Lit):
        text = escape_literal(node.text)
        return text if ctx != "rep" or _is_atom(text) else f"(?:{text})"
    if isinstance(node, Pat):
        return node.regex if ctx == "alt" or _is_atom(node.regex) else f"(?:{node.regex})"
    if isinstance(node, Rep):
        return _regex(node.node, "rep", rules, memo) + _quantifier(node.min, node.max)
    if isinstance(node, Seq):
        text = "".join(_regex(p, "seq", rules, memo) for p in node.parts)
        return text if ctx != "rep" or len(node.parts) == 1 else f"(?:{text})"
    text = "|".join(_regex(o, "alt", rules, memo) for o in node.options)
    return text if ctx == "alt" else f"(?:{text})"


def _lark_terminal(regex: str) -> str:
    """`/regex/` for lark: `/` escaped, and `"` written as \\x22 (lark's loader rewrites `\\"`)."""
    out, i = [], 0
    while i < len(regex):
        ch = regex[i]
        if ch == "\\":
            nxt = regex[i + 1]
            out.append("\\x22" if nxt == '"' else "\\/" if nxt == "/" else "\\" + nxt)
            i += 2
            continue
        out.append({"/": "\\/", '"': "\\x22"}.get(ch, ch))
        i += 1
    return "/" + "".join(out) + "/"


def _lark(node: Node, rules: dict) -> tuple[str, bool]:
    """Lark expression for `node` and whether it is atomic (a name, terminal or group)."""
    if not any(True for _ in _refs(node)):
        regex = _regex(node, "alt", rules, {})
        if len(regex) <= _TERMINAL_CHARS or isinstance(node, (Lit, Pat)):
            return _lark_terminal(regex), True
    if isinstance(node, Ref):
        return node.name, True
    if isinstance(node, Seq):
        return " ".join(_lark_atom(p, rules) for p in node.parts), False
    if isinstance(node, Alt):
        return " | ".join(_lark(o, rules)[0] for o in node.options), False
    inner = _lark_atom(node.node, rules)
    if (node.min, node.max) in ((0, 1), (0, None), (1, None)):
        return inner + {(0, 1): "?", (0, None): "*", (1, None): "+"}[(node.min, node.max)], False
    required = [inner] * node.min
    if node.max is None:
        return " ".join(required + [inner + "*"]), False
    optional = ""
    for _ in range(node.max - node.min):
        optional = f"({inner} {optional})?" if optional else f"{inner}?"
    return " ".join(required + ([optional] if optional else [])), False


def _lark_atom(node: Node, rules: dict) -> str:
    text, atomic = _lark(node, rules)
    return text if atomic else f"({text})"
