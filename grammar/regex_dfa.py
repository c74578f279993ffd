"""Regex text -> `ByteDFA`: interegular parses, we build the byte-level automaton ourselves.

interegular's own FSM works on characters and cannot be bounded in time, so only its parser is
used: its pattern tree is turned into a Thompson NFA whose character-class edges are expanded to
UTF-8 byte-range chains (grammar/utf8.py) and determinized lazily (grammar/byte_dfa.py); the
budgets of `CompileOptions` bound the NFA's construction time and the DFA's state count. The supported syntax is listed in grammar/compiler.py.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from typing import TYPE_CHECKING

import interegular
from interegular import patterns as ip

from .byte_dfa import ByteDFA, ByteNFA, Repeat
from .errors import GrammarError
from .utf8 import MAX_CODE_POINT, utf8_sequences

if TYPE_CHECKING:
    from .compiler import CompileOptions

MAX_NFA_STATES = 200_000
MAX_UNROLLED_COPIES = 8  # larger counted repetitions keep one body and a counter
_UNSUPPORTED_ESCAPES = {
    "b": "word boundary \\b",
    "B": "non-word-boundary \\B",
    "A": "anchor \\A",
    "Z": "anchor \\Z",
    "z": "anchor \\z",
    "G": "anchor \\G",
    "p": "Unicode property \\p{...}",
    "P": "Unicode property \\P{...}",
    "N": "named character \\N{...}",
}


def regex_to_dfa(
    pattern: str, options: "CompileOptions | None" = None, nonempty: bool = False, shortest: bool = False
) -> ByteDFA:
    """The (lazily built) byte DFA of `pattern`, whole-string match; GrammarError if unsupported.

    nonempty / shortest: see ByteDFA. Results are shared (cached by arguments)."""
    if options is None:
        from .compiler import CompileOptions

        options = CompileOptions()
    return _regex_to_dfa_cached(pattern, options.max_dfa_states, options.timeout_s, nonempty, shortest)


def literal_to_dfa(text: str) -> ByteDFA:
    """The DFA matching exactly `text` (UTF-8)."""
    return regex_to_dfa(re.escape(text))


@lru_cache(maxsize=1024)
def _regex_to_dfa_cached(pattern: str, max_states: int, timeout_s: float, nonempty: bool, shortest: bool) -> ByteDFA:
    deadline = time.monotonic() + timeout_s
    tree = parse_regex(pattern)
    nfa = ByteNFA(max_states=MAX_NFA_STATES, deadline=deadline)
    builder = _NFABuilder(nfa)
    try:
        start, final = builder.fragment(tree, ip.REFlags(0))
    except RecursionError:
        raise GrammarError(f"regex {_short(pattern)} is nested too deeply") from None
    return ByteDFA(nfa, start, final, max_states, f"regex {_short(pattern)}", nonempty=nonempty, shortest=shortest)


def parse_regex(pattern: str) -> "ip.Pattern":
    """interegular's pattern tree for `pattern`, with clear errors for unsupported constructs."""
    if not isinstance(pattern, str):
        raise GrammarError(f"a regex must be a str, got {type(pattern).__name__}")
    try:
        re.compile(pattern)
    except re.error as e:
        raise GrammarError(f"invalid regex {_short(pattern)}: {e}") from None
    text = _strip_anchors(pattern)
    text = _rewrite_escapes(text, pattern)
    try:
        return interegular.parse_pattern(text)
    except ip.Unsupported as e:
        raise GrammarError(f"unsupported construct in regex {_short(pattern)}: {_explain(str(e))}") from None
    except ip.InvalidSyntax as e:
        raise GrammarError(f"regex {_short(pattern)} uses syntax the engine does not support: {e}") from None
    except Exception as e:  # interegular's parser signals some failures with internal exceptions
        raise GrammarError(f"regex {_short(pattern)} uses syntax the engine does not support ({type(e).__name__} {e})") from None


def _short(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 80 else pattern[:77] + "...")


def _explain(message: str) -> str:
    if "Group references" in message:
        return "backreferences (\\1, (?P=name)) are not supported"
    if message in ("'$'", "'^'"):
        return f"anchor {message} is only allowed at the very start (^) or end ($) of the pattern"
    if "Conditional" in message:
        return "conditional groups (?(...)...) are not supported"
    return message


def _strip_anchors(pattern: str) -> str:
    """Drop a leading `^` and an unescaped trailing `$`: matching is always whole-string."""
    text = pattern[1:] if pattern.startswith("^") else pattern
    if text.endswith("$"):
        backslashes = len(text[:-1]) - len(text[:-1].rstrip("\\"))
        if backslashes % 2 == 0:
            text = text[:-1]
    return text


def _rewrite_escapes(text: str, original: str) -> str:
    """Rewrite \\uXXXX / \\UXXXXXXXX (which interegular lacks) and reject unsupported escapes."""
    out = []
    i = 0
    in_class = False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "uU":
                width = 4 if nxt == "u" else 8
                cp = int(text[i + 2 : i + 2 + width], 16)
                out.append(f"\\x{cp:02x}" if cp < 0x100 else chr(cp))
                i += 2 + width
                continue
            if nxt in _UNSUPPORTED_ESCAPES and not (in_class and nxt == "b"):
                raise GrammarError(f"unsupported construct in regex {_short(original)}: {_UNSUPPORTED_ESCAPES[nxt]}")
            out.append(text[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            if text[i + 1 : i + 2] == "]" or text[i + 1 : i + 3] == "^]":  # a leading ] is literal
                j = i + (2 if text[i + 1] == "]" else 3)
                out.append(text[i:j])
                i = j
                continue
        elif c == "]" and in_class:
            in_class = False
        elif c == "(" and not in_class and text[i + 1 : i + 3] in ("?=", "?!"):
            raise GrammarError(f"unsupported construct in regex {_short(original)}: lookahead (?=...)/(?!...)")
        elif c == "(" and not in_class and text[i + 1 : i + 4] in ("?<=", "?<!"):
            raise GrammarError(f"unsupported construct in regex {_short(original)}: lookbehind (?<=...)/(?<!...)")
        out.append(c)
        i += 1
    return "".join(out)


def _char_ranges(chars: frozenset, negated: bool, flags: "ip.REFlags") -> list[tuple[int, int]]:
    """Sorted disjoint code point ranges of a character group."""
    if flags & ip.REFlags.CASE_INSENSITIVE:
        extra = {v for c in chars for v in (c.lower(), c.upper()) if len(v) == 1}
        chars = frozenset(chars) | extra
    points = sorted(ord(c) for c in chars)
    ranges: list[tuple[int, int]] = []
    for p in points:
        if ranges and ranges[-1][1] + 1 == p:
            ranges[-1] = (ranges[-1][0], p)
        else:
            ranges.append((p, p))
    if not negated:
        return ranges
    out, lo = [], 0
    for a, b in ranges:
        if a > lo:
            out.append((lo, a - 1))
        lo = b + 1
    if lo <= MAX_CODE_POINT:
        out.append((lo, MAX_CODE_POINT))
    return out


class _NFABuilder:
    """Thompson construction from interegular's pattern tree onto a ByteNFA."""

    def __init__(self, nfa: ByteNFA):
        self.nfa = nfa
        self._seq_memo: dict[tuple, list] = {}

    def fragment(self, node, flags) -> tuple[int, int]:
        """(start, end) states of a sub-automaton for `node`."""
        nfa = self.nfa
        if isinstance(node, ip.Pattern):
            flags = ip._combine_flags(flags, node.added_flags, node.removed_flags)
            if len(node.options) == 1:
                return self.fragment(node.options[0], flags)
            s, e = nfa.new_state(), nfa.new_state()
            for option in node.options:
                a, b = self.fragment(option, flags)
                nfa.add_eps(s, a)
                nfa.add_eps(b, e)
            return s, e
        if isinstance(node, ip._Concatenation):
            s = cur = nfa.new_state()
            for part in node.parts:
                if isinstance(part, ip._NonCapturing):
                    kind = "lookbehind" if part.backwards else "lookahead"
                    raise GrammarError(f"unsupported construct in regex: {kind}")
                a, b = self.fragment(part, flags)
                nfa.add_eps(cur, a)
                cur = b
            return s, cur
        if isinstance(node, ip._Repeated):
            return self._repeat(node, flags)
        if isinstance(node, ip._CharGroup):
            return self._chars(node.chars, node.negated, flags)
        if node is ip._DOT:
            dotall = bool(flags & ip.REFlags.SINGLE_LINE)
            return self._chars(frozenset() if dotall else frozenset("\n"), True, flags & ~ip.REFlags.CASE_INSENSITIVE)
        if node is ip._EMPTY:
            s = nfa.new_state()
            return s, s
        raise GrammarError(f"unsupported regex construct {type(node).__name__}")

    def _repeat(self, node, flags) -> tuple[int, int]:
        """Small repetitions: copies of the body (built once, then cloned). Large counted ones
        (`{0,375}` for a maxLength is common in generated regexes): one body and a counter,
        if every copy of the body takes at least one character (see ByteDFA's views)."""
        nfa = self.nfa
        copies = node.min + (1 if node.max is None else node.max - node.min)
        if copies == 0:
            s = nfa.new_state()
            return s, s
        if copies > MAX_UNROLLED_COPIES and node.base.lengths[0] >= 1:
            s, end = nfa.new_state(), nfa.new_state()
            a, b = self.fragment(node.base, flags)
            nfa.add_repeat(s, Repeat(first=a, last=b, end=end, min=node.min, max=node.max))
            if node.min == 0:
                nfa.add_eps(s, end)
            return s, end
        lo = len(nfa.edges)
        a, b = self.fragment(node.base, flags)
        hi = len(nfa.edges)
        frags = [(a, b)] + [(a + off, b + off) for off in (nfa.clone(lo, hi) for _ in range(copies - 1))]
        s = cur = nfa.new_state()
        for a, b in frags[: node.min]:
            nfa.add_eps(cur, a)
            cur = b
        if node.max is None:
            a, b = frags[-1]
            hub = nfa.new_state()
            nfa.add_eps(cur, hub)
            nfa.add_eps(hub, a)
            nfa.add_eps(b, hub)
            return s, hub
        end = nfa.new_state()
        for a, b in frags[node.min :]:
            nfa.add_eps(cur, end)
            nfa.add_eps(cur, a)
            cur = b
        nfa.add_eps(cur, end)
        return s, end

    def _chars(self, chars: frozenset, negated: bool, flags) -> tuple[int, int]:
        key = (chars, negated, bool(flags & ip.REFlags.CASE_INSENSITIVE))
        seqs = self._seq_memo.get(key)
        if seqs is None:
            seqs = [seq for lo, hi in _char_ranges(chars, negated, flags) for seq in utf8_sequences(lo, hi)]
            self._seq_memo[key] = seqs
        nfa = self.nfa
        s, e = nfa.new_state(), nfa.new_state()
        if not seqs:
            nfa.has_dead_ends = True
        for seq in seqs:
            cur = s
            for k, (lo, hi) in enumerate(seq):
                nxt = e if k == len(seq) - 1 else nfa.new_state()
                nfa.add_edge(cur, lo, hi, nxt)
                cur = nxt
        return s, e
