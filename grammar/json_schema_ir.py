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
    node: Node
    min: int
    max: int | None


@dataclass(frozen=True)
class Ref:
    name: str


Node = Lit | Pat | Seq | Alt | Rep | Ref
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
    seen: set = set()  # a set beside the list: enums give thousands of options
    has_empty = False
    for option in options:
        if option is None:
            continue
        for o in option.options if isinstance(option, Alt) else (option,):
            if o == EMPTY:
                has_empty = True
            elif o not in seen:
                seen.add(o)
                out.append(o)
    if not out:
        return EMPTY if has_empty else None
    node = out[0] if len(out) == 1 else Alt(tuple(out))
    return opt(node) if has_empty else node


def literal_union(texts: list[str]) -> Node | None:
    """The alternation of non-empty literal texts as one `Pat` whose regex shares common prefixes
    (a trie: "ab", "ac" -> `a(?:b|c)`): the language of `alt(*map(Lit, texts))`, with a regex
    that grows with the distinct text rather than with every repeated prefix, and one lark
    terminal instead of one per text. None for no text; a single text stays a `Lit`."""
    texts = list(dict.fromkeys(texts))
    if not texts:
        return None
    if len(texts) == 1:
        return Lit(texts[0])
    if any(not t for t in texts) or max(map(len, texts)) > _MAX_TRIE_TEXT:
        return alt(*map(Lit, texts))
    trie: dict = {}
    for text in texts:
        node = trie
        for ch in text:
            node = node.setdefault(ch, {})
        node[_END] = {}
    return Pat(_trie_regex(trie))


_END = ""  # trie key marking the end of a text (texts are non-empty, characters never are)
_MAX_TRIE_TEXT = 400  # longer texts stay a plain alternation (the rendering recurses per branch point)


def _trie_regex(trie: dict) -> str:
    """Regex of the texts below a trie node (the node is not an end: callers handle that)."""
    options = []
    for ch, child in trie.items():
        if ch == _END:
            continue
        chain = ch
        while len(child) == 1 and _END not in child:
            (nxt, child), = child.items()
            chain += nxt
        rest = "" if list(child) == [_END] else _trie_regex(child)
        if rest and _END in child:
            rest = f"(?:{rest})?"
        options.append(escape_literal(chain) + rest)
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


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
        return _LarkWriter(self.rules).write(self.root)


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
        inner = _regex(node.node, "rep", rules, memo)
        return (inner if _is_atom(inner) else f"(?:{inner})") + _quantifier(node.min, node.max)
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


class _LarkWriter:
    """Lark text where no rule has more than a few expansions.

    Lark's loader expands `?` and inline groups into alternatives of the enclosing rule, so a
    sequence of k optional parts would become 2^k expansions. Every part that is not a terminal
    or a rule name therefore gets a helper rule of its own (`x?` alone in a rule is two
    expansions); Ref-free parts that cannot be empty collapse into one regex terminal.
    """

    def __init__(self, rules: dict):
        self.rules = rules
        self.lines: list[str] = []
        self.helpers: dict[Node, str] = {}

    def write(self, root: Node) -> str:
        self.lines.append(f"start: {self.body(root)}")
        for name, body in self.rules.items():
            self.lines.append(f"{name}: {self.body(body)}")
        return "\n".join(self.lines) + "\n"

    def body(self, node: Node) -> str:
        """A rule body: alternatives of sequences of atoms."""
        if isinstance(node, Alt) and self.terminal(node) is None:
            return " | ".join(self.sequence(o) for o in node.options)
        if isinstance(node, Rep) and self.terminal(node) is None:
            return self.repetition(node)
        return self.sequence(node)

    def sequence(self, node: Node) -> str:
        """Atoms of a sequence; adjacent parts that are terminals merge into one terminal."""
        if not isinstance(node, Seq) or self.terminal(node) is not None:
            return self.atom(node)
        out: list[str] = []
        run: list[Node] = []
        for part in node.parts:
            if run and self.terminal(Seq(tuple(run + [part]))) is not None:
                run.append(part)
                continue
            if run:
                out.append(self.atom(run[0] if len(run) == 1 else Seq(tuple(run))))
            run = [part] if self.terminal(part) is not None else []
            if not run:
                out.append(self.atom(part))
        if run:
            out.append(self.atom(run[0] if len(run) == 1 else Seq(tuple(run))))
        return " ".join(out)

    def atom(self, node: Node) -> str:
        """A terminal, a rule name, or the name of a helper rule for `node`."""
        if isinstance(node, Ref):
            return node.name
        terminal = self.terminal(node)
        if terminal is not None:
            return terminal
        name = self.helpers.get(node)
        if name is None:
            name = f"h{len(self.helpers)}"
            self.helpers[node] = name
            self.lines.append(f"{name}: {self.body(node)}")
        return name

    def repetition(self, node: Rep) -> str:
        inner = self.atom(node.node)
        if node.max is None:
            return " ".join([inner] * max(0, node.min - 1) + [inner + ("+" if node.min else "*")])
        optional = ""
        for count in range(1, node.max - node.min + 1):
            optional = inner + "?" if count == 1 else f"({inner} {self.atom(Rep(node.node, 0, count - 1))})?"
        return " ".join([inner] * node.min + ([optional] if optional else []))

    def terminal(self, node: Node) -> str | None:
        if isinstance(node, (Lit, Pat)) or (not _nullable(node) and not any(True for _ in _refs(node))):
            regex = _regex(node, "alt", self.rules, {})
            if len(regex) <= _TERMINAL_CHARS or isinstance(node, (Lit, Pat)):
                return _lark_terminal(regex)
        return None


def _nullable(node: Node) -> bool:
    """Whether a Ref-free node matches the empty string (a Ref counts as not: never collapsed)."""
    if isinstance(node, Rep):
        return node.min == 0 or _nullable(node.node)
    if isinstance(node, Seq):
        return all(_nullable(p) for p in node.parts)
    if isinstance(node, Alt):
        return any(_nullable(o) for o in node.options)
    return False
