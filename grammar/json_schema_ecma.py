"""JSON-Schema `pattern` (ECMA-262 dialect) -> regex over serialized JSON string contents.

`pattern` is a search: a string is valid when the pattern matches anywhere in it. The result is
an anchored regex for the whole string body (between the quotes): each top-level alternative gets
`ANY*` on each side that is not anchored by `^`/`$`, where ANY is one canonical character unit
(`json_schema_strings.unit_regex`). Every character the pattern can match becomes one unit, so
quantifiers and lengths count decoded characters, exactly.

Character classes are read with two semantics at once, so that a generated string satisfies the
ECMA meaning and Python's `re` (which validators such as `jsonschema` use): each set is built as
(lo, hi) = (characters in the class under both readings, characters under either reading), and
negation swaps them: `\\d` generates [0-9], `\\D` generates what is a digit under neither. Code
points, not UTF-16 units, are the characters (the `u`-flag reading).

Refused with `PatternError` (then reported by the caller as a GrammarError naming `pattern`):
lookaround, backreferences, `\\b`/`\\B`, `\\p{..}`, legacy octal escapes, unknown letter escapes,
`[]`/`[^]`, anchors anywhere but at the ends of a top-level alternative, and length limits that
cannot be folded into the pattern (see `pattern_regex`).
"""

from __future__ import annotations

import functools
import re

from .json_schema_ir import EMPTY, Alt, Grammar, Node, Pat, alt, rep, seq
from .json_schema_strings import (
    UNIVERSE,
    Charset,
    charset_complement,
    charset_intersect,
    charset_of,
    charset_union,
    unit_regex,
)


class PatternError(ValueError):
    """A pattern outside the supported ECMA subset (the message says which construct)."""


_ECMA_SPACE = charset_union(charset_of("\t\n\x0b\x0c\r \xa0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff"), ((0x2000, 0x200A),))
_ECMA_DIGIT: Charset = ((0x30, 0x39),)
_ECMA_WORD = charset_union(charset_of("_"), ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)))
_LINE_TERMINATORS = charset_of("\n\r\u2028\u2029")
_CONTROL_ESCAPES = {"t": 0x09, "n": 0x0A, "v": 0x0B, "f": 0x0C, "r": 0x0D}


@functools.cache
def _python_class(escape: str) -> Charset:
    """The code points Python's `re` matches with `\\d`, `\\w` or `\\s` (str patterns)."""
    text = "".join(map(chr, range(0x110000)))
    return charset_intersect(tuple((m.start(), m.end() - 1) for m in re.finditer(escape + "+", text)), UNIVERSE)


def _class_escape(letter: str) -> tuple[Charset, Charset]:
    """(lo, hi) sets of the class escapes d D w W s S."""
    ecma = {"d": _ECMA_DIGIT, "w": _ECMA_WORD, "s": _ECMA_SPACE}[letter.lower()]
    python = _python_class("\\" + letter.lower())
    lo, hi = charset_intersect(ecma, python), charset_union(ecma, python)
    return (lo, hi) if letter.islower() else (charset_complement(hi), charset_complement(lo))


class _Parser:
    """Recursive descent over the ECMA pattern grammar (Annex B leniencies where unambiguous)."""

    def __init__(self, pattern: str):
        self.text = pattern
        self.i = 0

    def peek(self, k: int = 0) -> str:
        return self.text[self.i + k] if self.i + k < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        if not ch:
            raise PatternError("unexpected end of pattern")
        self.i += 1
        return ch

    def parse(self) -> tuple:
        node = self.disjunction()
        if self.i != len(self.text):
            raise PatternError(f"unbalanced ')' at offset {self.i}")
        return node

    def disjunction(self) -> tuple:
        options = [self.alternative()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.alternative())
        return ("alt", options)

    def alternative(self) -> tuple:
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.term())
        return ("seq", items)

    def term(self) -> tuple:
        ch = self.peek()
        if ch in "^$":
            self.i += 1
            if self.peek() in ("*", "+", "?") or self._quantifier_ahead():
                raise PatternError("quantified anchor")
            return ("bol",) if ch == "^" else ("eol",)
        if ch in "*+?" or (ch == "{" and self._quantifier_ahead()):
            raise PatternError(f"nothing to repeat at offset {self.i}")
        return self.quantified(self.atom())

    def atom(self) -> tuple:
        ch = self.take()
        if ch == ".":
            return ("set", charset_complement(_LINE_TERMINATORS), charset_complement(charset_of("\n")))
        if ch == "[":
            return self.char_class()
        if ch == "(":
            if self.peek() == "?":
                self.i += 1
                kind = self.take()
                if kind in "=!" or (kind == "<" and self.peek() in "=!"):
                    raise PatternError("lookaround")
                if kind == "<":
                    while self.take() != ">":
                        pass
                elif kind != ":":
                    raise PatternError(f"group syntax (?{kind}")
            node = self.disjunction()
            if self.take() != ")":
                raise PatternError("missing ')'")
            return node
        if ch == "\\":
            return self.atom_escape()
        return ("set", charset_of(ch), charset_of(ch))

    def atom_escape(self) -> tuple:
        ch = self.peek()
        if ch in ("b", "B"):
            raise PatternError(f"word boundary \\{ch}")
        if ch.isdigit() and ch != "0":
            raise PatternError("backreference")
        if ch == "k":
            raise PatternError("named backreference \\k")
        lo, hi = self.class_escape()
        return ("set", lo, hi)

    def class_escape(self, in_class: bool = False) -> tuple[Charset, Charset]:
        """After a backslash: an escape's (lo, hi) sets."""
        ch = self.take()
        if ch in "dDwWsS":
            return _class_escape(ch)
        code = None
        if ch in _CONTROL_ESCAPES:
            code = _CONTROL_ESCAPES[ch]
        elif ch == "b" and in_class:
            code = 0x08
        elif ch == "c" and self.peek().isascii() and self.peek().isalpha():
            code = ord(self.take()) % 32
        elif ch == "0" and not self.peek().isdigit():
            code = 0
        elif ch == "x" and re.fullmatch("[0-9a-fA-F]{2}", self.text[self.i : self.i + 2]):
            code = int(self.text[self.i : self.i + 2], 16)
            self.i += 2
        elif ch == "u" and re.fullmatch("[0-9a-fA-F]{4}", self.text[self.i : self.i + 4]):
            code = int(self.text[self.i : self.i + 4], 16)
            self.i += 4
            low = self.text[self.i : self.i + 6]
            if 0xD800 <= code <= 0xDBFF and re.fullmatch("\\\\u[dD][c-fC-F][0-9a-fA-F]{2}", low):
                code = 0x10000 + ((code - 0xD800) << 10) + (int(low.removeprefix("\\u"), 16) - 0xDC00)
                self.i += 6
        elif ch.isalnum() or not ch:
            raise PatternError(f"escape \\{ch}")
        else:
            code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            raise PatternError("lone surrogate escape")
        return charset_of(chr(code)), charset_of(chr(code))

    def char_class(self) -> tuple:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        if self.peek() == "]":
            raise PatternError("empty class [] or [^]")
        lo: Charset = ()
        hi: Charset = ()
        while self.peek() != "]":
            first, single = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                last, last_single = self.class_atom()
                if single is None or last_single is None:
                    part_lo = charset_union(charset_union(first[0], last[0]), charset_of("-"))
                    part_hi = charset_union(charset_union(first[1], last[1]), charset_of("-"))
                else:
                    if single > last_single:
                        raise PatternError("class range out of order")
                    part_lo = part_hi = charset_intersect(((single, last_single),), UNIVERSE)
            else:
                part_lo, part_hi = first
            lo, hi = charset_union(lo, part_lo), charset_union(hi, part_hi)
        self.i += 1
        if negate:
            lo, hi = charset_complement(hi), charset_complement(lo)
        return ("set", lo, hi)

    def class_atom(self) -> tuple[tuple[Charset, Charset], int | None]:
        """One class member: its (lo, hi) sets and its code point when it is a single character."""
        ch = self.take()
        if ch == "\\":
            is_class = self.peek() in "dDwWsS"
            sets = self.class_escape(in_class=True)
            return sets, None if is_class else sets[0][0][0]
        return (charset_of(ch), charset_of(ch)), ord(ch)

    def _quantifier_ahead(self) -> bool:
        return re.match(r"\{[0-9]+(,[0-9]*)?\}", self.text[self.i :]) is not None

    def quantified(self, node: tuple) -> tuple:
        ch = self.peek()
        if ch in ("*", "+", "?"):
            self.i += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        elif ch == "{" and self._quantifier_ahead():
            m = re.match(r"\{([0-9]+)(,([0-9]*))?\}", self.text[self.i :])
            self.i += m.end()
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            if hi is not None and hi < lo:
                raise PatternError("quantifier {n,m} with n > m")
        elif ch == "{" and self.text.startswith("{,", self.i):
            raise PatternError("quantifier {,n} (read differently by ECMA and Python)")
        else:
            return node
        if self.peek() == "?":
            self.i += 1
        return ("rep", node, lo, hi)


def _lengths(node: tuple) -> tuple[int, int | None]:
    kind = node[0]
    if kind == "set":
        return 1, 1
    if kind in ("bol", "eol"):
        return 0, 0
    if kind == "rep":
        mn, mx = _lengths(node[1])
        return mn * node[2], None if mx is None or node[3] is None else mx * node[3]
    parts = [_lengths(n) for n in node[1]]
    if kind == "seq":
        return sum(p[0] for p in parts), None if any(p[1] is None for p in parts) else sum(p[1] for p in parts)
    if not parts:
        return 0, 0
    return min(p[0] for p in parts), None if any(p[1] is None for p in parts) else max(p[1] for p in parts)


def _has_anchor(node: tuple) -> bool:
    if node[0] in ("bol", "eol"):
        return True
    if node[0] == "rep":
        return _has_anchor(node[1])
    return node[0] in ("seq", "alt") and any(_has_anchor(n) for n in node[1])


_ANY_STAR = ("rep", ("set", UNIVERSE, UNIVERSE), 0, None)
# Most alternatives one length split may expand to (two variable parts under a length limit).
_MAX_SPLITS = 256


def _absorb(items: list) -> list:
    """Simplify next to ANY*: `X{a,b} ANY*` is `X{a} ANY*` (X's extra repeats are ANY's)."""
    out: list = []
    for item in items:
        if item == _ANY_STAR and out and out[-1] == _ANY_STAR:
            continue
        out.append(item)
    for k, item in enumerate(out):
        near_any = (k > 0 and out[k - 1] == _ANY_STAR) or (k + 1 < len(out) and out[k + 1] == _ANY_STAR)
        if near_any and item != _ANY_STAR and item[0] == "rep" and item[1][0] == "set":
            out[k] = ("rep", item[1], item[2], item[2])
    return [item for item in out if not (item[0] == "rep" and item[3] == 0)]


def _fit_length(items: list, min_length: int, max_length: int | None) -> list[list]:
    """Item lists (alternatives) for one alternative restricted to total lengths in range."""
    mn, mx = _lengths(("seq", items))
    if max_length is not None and mn > max_length or mx is not None and mx < min_length:
        return []
    if mn >= min_length and (max_length is None or (mx is not None and mx <= max_length)):
        return [items]
    variable = [k for k, item in enumerate(items) if _lengths(item)[0] != _lengths(item)[1]]
    if len(variable) > 2 or any(items[k][0] != "rep" or _lengths(items[k][1]) != (1, 1) for k in variable):
        raise PatternError("minLength/maxLength with a pattern whose length they cannot be folded into")
    fixed = mn - sum(items[k][2] for k in variable)
    lo_total, hi_total = min_length - fixed, None if max_length is None else max_length - fixed
    if len(variable) == 1:
        (k,) = variable
        counts = [(max(items[k][2], lo_total), _min_none(items[k][3], hi_total))]
        return [_with_counts(items, variable, [c]) for c in counts if c[1] is None or c[0] <= c[1]]
    i, j = variable
    (a1, b1), (a2, b2) = items[i][2:], items[j][2:]
    last = hi_total - a2 if hi_total is not None else max(a1, lo_total - a2)
    if b1 is not None:
        last = min(last, b1)
    if last - a1 > _MAX_SPLITS:
        raise PatternError("minLength/maxLength with a pattern of two open-ended parts over a long range")
    out = []
    for c1 in range(a1, last + 1):
        open_end = hi_total is None and c1 == last
        first = (c1, b1) if open_end else (c1, c1)
        second = (max(a2, lo_total - c1), _min_none(b2, None if hi_total is None else hi_total - c1))
        if second[1] is None or second[0] <= second[1]:
            out.append(_with_counts(items, variable, [first, second]))
    return out


def _min_none(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _with_counts(items: list, positions: list[int], counts: list[tuple]) -> list:
    out = list(items)
    for k, (lo, hi) in zip(positions, counts):
        out[k] = ("rep", items[k][1], lo, hi)
    return out


def _to_ir(node: tuple, upper: bool) -> Node | None:
    kind = node[0]
    if kind == "set":
        unit = unit_regex(node[2] if upper else node[1])
        return None if unit is None else Pat(unit)
    if kind == "rep":
        return rep(_to_ir(node[1], upper), node[2], node[3])
    if kind == "seq":
        return seq(*(_to_ir(n, upper) for n in node[1])) if node[1] else EMPTY
    return alt(*(_to_ir(n, upper) for n in node[1]))


def simple_key_pattern(pattern: str) -> tuple[str, Charset] | None:
    """(L, C) when `pattern` matches exactly the strings L C* (a literal prefix, then any number of
    characters of C; C empty: only L itself), else None. Used to subtract names from key patterns."""
    try:
        tree = _Parser(pattern).parse()
    except PatternError:
        return None
    if len(tree[1]) != 1:
        return None
    items = list(tree[1][0][1])
    if not items or items[0] != ("bol",):
        # Unanchored: only a pattern that can match the empty string anywhere matches everything.
        optional = all(item == ("eol",) or (item[0] == "rep" and item[2] == 0) for item in items)
        return ("", UNIVERSE) if optional and ("eol",) not in items else None
    items.pop(0)
    end = bool(items) and items[-1] == ("eol",)
    if end:
        items.pop()
    tail: Charset = () if end else UNIVERSE
    if items and items[-1][0] == "rep" and items[-1][1][0] == "set" and items[-1][2:] == (0, None):
        tail = items.pop()[1][1] if end else UNIVERSE
    prefix = ""
    for item in items:
        if item[0] != "set" or len(item[1]) != 1 or item[1][0][0] != item[1][0][1] or item[1] != item[2]:
            return None
        prefix += chr(item[1][0][0])
    return prefix, tail


def _edge_alternatives(tree: tuple) -> list[list]:
    """Top-level alternatives as item lists, with groups at either end that hold anchors spread
    into alternatives of their own: `^(a|$)` is `^a|^$`."""
    out, todo = [], [list(option[1]) for option in tree[1]]
    while todo:
        items = todo.pop(0)
        first = next((k for k, item in enumerate(items) if item != ("bol",)), None)
        last = next((k for k in range(len(items) - 1, -1, -1) if items[k] != ("eol",)), None)
        for index in (first, last):
            item = items[index] if index is not None else None
            if item is not None and item[0] == "alt" and _has_anchor(item):
                todo[:0] = [items[:index] + list(option[1]) + items[index + 1 :] for option in item[1]]
                break
        else:
            out.append(items)
    return out


@functools.lru_cache(maxsize=512)
def pattern_regex(pattern: str, min_length: int = 0, max_length: int | None = None, upper: bool = False) -> str | None:
    """Regex for string bodies (between the quotes) that `pattern` matches (as a search) and whose
    length is in [min_length, max_length], safe to concatenate (an alternation comes grouped);
    None when no string qualifies. Raises PatternError.

    upper: read every class generously (what ECMA or Python may match) instead of strictly; the
    result then covers every string either reading matches (used to prove patterns disjoint)."""
    tree = _Parser(pattern).parse()
    alternatives = []
    for items in _edge_alternatives(tree):
        start = bool(items) and items[0] == ("bol",)
        while items and items[0] == ("bol",):
            items.pop(0)
        end = bool(items) and items[-1] == ("eol",)
        while items and items[-1] == ("eol",):
            items.pop()
        if any(_has_anchor(item) for item in items):
            raise PatternError("'^' or '$' inside the pattern (only at the ends of an alternative)")
        # Python's `$` also matches before a final newline: the generous reading allows one.
        tail = [_ANY_STAR] if not end else [("rep", ("set", charset_of("\n"), charset_of("\n")), 0, 1)] if upper else []
        items = _absorb(([] if start else [_ANY_STAR]) + items + tail)
        alternatives += [("seq", fitted) for fitted in _fit_length(items, min_length, max_length)]
    node = _to_ir(("alt", alternatives), upper)
    if node is None:
        return None
    if node == EMPTY:
        return ""
    regex = Grammar(node).to_regex()
    return f"(?:{regex})" if isinstance(node, Alt) else regex
