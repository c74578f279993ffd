"""Lark grammar text -> `CFG`: rules over integer symbols and one byte DFA per terminal.

lark's own loader parses the grammar (EBNF, templates, `%import common.X`, `%ignore`) and
flattens it to BNF rules and terminal patterns; everything after that is ours (grammar/earley.py,
grammar/lexer.py). Terminal regexes go through grammar/regex_dfa.py. A terminal regex with a lazy
quantifier (`*?`, `+?`, `??`, `{m,n}?`) is taken as a shortest-match terminal: it ends at its
first possible end (e.g. `/\\/\\*(.|\\n)*?\\*\\//` stops at the first `*/`). lark's
`common.ESCAPED_STRING`, which needs a lookbehind, is replaced by the equivalent regular
expression. Unproductive rules (that derive no string) are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .byte_dfa import ByteDFA, trim_dfa
from .errors import GrammarError
from .regex_dfa import regex_to_dfa

if TYPE_CHECKING:
    from .compiler import CompileOptions

# lark's common.ESCAPED_STRING as loaded, and a lookbehind-free regex for the same strings
_LARK_ESCAPED_STRING = r'".*?(?<!\\)(\\\\)*?"'
_ESCAPED_STRING = r'"(?:[^"\\\n]|\\[^\n])*"'
_LAZY_QUANTIFIER = re.compile(r"(?<!\\)(?:\\\\)*(?:[*+?]|\})\?")


@dataclass(frozen=True, eq=False)
class CFG:
    """A context-free grammar over terminals, ready for the Earley recognizer.

    rules: (lhs nonterminal id, rhs symbols); a symbol s >= 0 is nonterminal s, s < 0 is
    terminal ~s. terminal_dfas[t]: the bytes terminal t matches. ignore: terminals that may
    appear between any two terminals (lark `%ignore`) and are dropped before parsing.
    """

    nonterminal_names: tuple[str, ...]
    terminal_names: tuple[str, ...]
    terminal_dfas: tuple[ByteDFA, ...]
    rules: tuple[tuple[int, tuple[int, ...]], ...]
    start: int
    ignore: frozenset[int]


def load_cfg(source: str, start: str = "start", options: "CompileOptions | None" = None) -> CFG:
    """Parse lark grammar text into a CFG; GrammarError on any problem, naming it."""
    from lark.exceptions import LarkError
    from lark.load_grammar import load_grammar

    if not isinstance(source, str):
        raise GrammarError(f"a lark grammar must be a str, got {type(source).__name__}")
    try:
        grammar, _ = load_grammar(source, "<grammar>", [], False)
        terminals, rules, ignore_names = grammar.compile([start], set())
    except LarkError as e:
        raise GrammarError(f"invalid lark grammar: {e}") from None
    except Exception as e:  # the loader reports some malformed input with plain exceptions
        raise GrammarError(f"invalid lark grammar: {type(e).__name__}: {e}") from None
    term_ids = {t.name: i for i, t in enumerate(terminals)}
    dfas = tuple(_terminal_dfa(t, options) for t in terminals)
    nt_names: list[str] = []
    nt_ids: dict[str, int] = {}

    def nt(name: str) -> int:
        if name not in nt_ids:
            nt_ids[name] = len(nt_names)
            nt_names.append(name)
        return nt_ids[name]

    nt(start)
    bnf = []
    for rule in rules:
        rhs = tuple(~term_ids[s.name] if s.is_term else nt(s.name) for s in rule.expansion)
        bnf.append((nt(rule.origin.name), rhs))
    if not any(lhs == 0 for lhs, _ in bnf):
        raise GrammarError(f"grammar has no rule for the start symbol {start!r}")
    bnf = _productive_rules(bnf, nt_names)
    if not any(lhs == 0 for lhs, _ in bnf):
        raise GrammarError(f"the start rule {start!r} derives no finite string (every alternative recurses forever)")
    return CFG(
        nonterminal_names=tuple(nt_names),
        terminal_names=tuple(t.name for t in terminals),
        terminal_dfas=dfas,
        rules=tuple(bnf),
        start=0,
        ignore=frozenset(term_ids[n] for n in ignore_names),
    )


def _terminal_dfa(terminal, options) -> ByteDFA:
    from lark.lexer import PatternStr

    pattern = terminal.pattern
    if isinstance(pattern, PatternStr):
        regex = pattern.to_regexp()
        lazy = False
    else:
        value = _ESCAPED_STRING if pattern.value == _LARK_ESCAPED_STRING else pattern.value
        regex = "".join(f"(?{f}:" for f in sorted(pattern.flags)) + value + ")" * len(pattern.flags)
        lazy = bool(_LAZY_QUANTIFIER.search(_without_classes(value)))
    try:
        dfa = regex_to_dfa(regex, options)
    except GrammarError as e:
        raise GrammarError(f"terminal {terminal.name}: {e}") from None
    if dfa.accept[0]:
        raise GrammarError(
            f"terminal {terminal.name} matches the empty string; terminals must consume input "
            "(make its use optional in the rule instead, e.g. `x?`)"
        )
    return shortest_match(dfa) if lazy else dfa


def _without_classes(regex: str) -> str:
    """The regex with [...] classes removed (a `?` inside a class is no quantifier)."""
    return re.sub(r"\[(?:\\.|[^\]\\])*\]", "C", regex)


def shortest_match(dfa: ByteDFA) -> ByteDFA:
    """The DFA that stops at the first accepting state: no transitions out of accepting states."""
    table = dfa.table.copy()
    table[:-1][dfa.accept] = -1
    return trim_dfa(table, dfa.byte_class, dfa.accept)


def _productive_rules(rules: list, names: list[str]) -> list:
    """Drop rules that use a nonterminal deriving no terminal string."""
    productive: set[int] = set()
    changed = True
    while changed:
        changed = False
        for lhs, rhs in rules:
            if lhs not in productive and all(s < 0 or s in productive for s in rhs):
                productive.add(lhs)
                changed = True
    return [(lhs, rhs) for lhs, rhs in rules if all(s < 0 or s in productive for s in rhs)]

