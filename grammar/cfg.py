"""Lark grammar text -> `CFG`: rules over integer symbols and one byte DFA per terminal.

lark's own loader parses the grammar (EBNF, templates, `%import common.X`, `%ignore`) and
flattens it to BNF rules and terminal patterns; everything after that is ours (grammar/earley.py,
grammar/lexer.py). Terminal regexes go through grammar/regex_dfa.py. A terminal regex with a lazy
quantifier (`*?`, `+?`, `??`, `{m,n}?`) is taken as a shortest-match terminal: it ends at its
first possible end (e.g. `/\\/\\*(.|\\n)*?\\*\\//` stops at the first `*/`). lark's
`common.ESCAPED_STRING`, which needs a lookbehind, is replaced by the equivalent regular
expression. A terminal that can match the empty string (e.g. `/[ \t]*/`) becomes an optional
occurrence of its non-empty part (lexemes are never empty). Unproductive rules (that derive no
string) are dropped.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .byte_dfa import ByteDFA
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
    terminal ~s. terminal_dfas[t]: the non-empty byte strings terminal t matches (None if it
    only ever matched the empty string; it is then never lexed). ignore: terminals that may
    appear between any two terminals (lark `%ignore`) and are dropped before parsing.
    """

    nonterminal_names: tuple[str, ...]
    terminal_names: tuple[str, ...]
    terminal_dfas: tuple[ByteDFA | None, ...]
    rules: tuple[tuple[int, tuple[int, ...]], ...]
    start: int
    ignore: frozenset[int]


def load_cfg(source: str, start: str = "start", options: "CompileOptions | None" = None) -> CFG:
    """Parse lark grammar text into a CFG; GrammarError on any problem, naming it."""
    from lark.exceptions import LarkError
    from lark.load_grammar import load_grammar

    if not isinstance(source, str):
        raise GrammarError(f"a lark grammar must be a str, got {type(source).__name__}")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 50_000))  # generated grammars nest groups hundreds deep
    try:
        grammar, _ = load_grammar(source, "<grammar>", [], False)
        _hoist_groups(grammar)
        terminals, rules, ignore_names = grammar.compile([start], set())
    except LarkError as e:
        raise GrammarError(f"invalid lark grammar: {e}") from None
    except (ValueError, AssertionError) as e:  # the loader reports some malformed input so
        raise GrammarError(f"invalid lark grammar: {type(e).__name__}: {e}") from None
    finally:
        sys.setrecursionlimit(limit)
    term_ids = {t.name: i for i, t in enumerate(terminals)}
    dfas = tuple(_terminal_dfa(t, options) for t in terminals)
    nullable_terms = {t.name for t, d in zip(terminals, dfas) if d.accept[0]}
    dfas = tuple(_terminal_dfa(t, options, nonempty=True) if d.accept[0] else d for t, d in zip(terminals, dfas))
    nt_names: list[str] = []
    nt_ids: dict[str, int] = {}

    def nt(name: str) -> int:
        if name not in nt_ids:
            nt_ids[name] = len(nt_names)
            nt_names.append(name)
        return nt_ids[name]

    nt(start)
    bnf = []
    # a terminal that matches "" is used as an optional nonterminal over its non-empty part
    optional: dict[int, int] = {}
    for t, term in enumerate(terminals):
        if term.name in nullable_terms:
            optional[t] = nt(f"{term.name}?")
            bnf.append((optional[t], ()))
            if dfas[t] is not None:
                bnf.append((optional[t], (~t,)))
    for rule in rules:
        rhs = tuple(
            (optional.get(term_ids[s.name], ~term_ids[s.name])) if s.is_term else nt(s.name) for s in rule.expansion
        )
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
        ignore=frozenset(term_ids[n] for n in ignore_names if dfas[term_ids[n]] is not None),
    )


def _terminal_dfa(terminal, options, nonempty: bool = False) -> ByteDFA | None:
    """The terminal's DFA (with `nonempty`: of its non-empty matches, None if there are none)."""
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
        dfa = regex_to_dfa(regex, options, nonempty=nonempty, shortest=lazy)
    except GrammarError as e:
        raise GrammarError(f"terminal {terminal.name}: {e}") from None
    return None if nonempty and dfa.is_empty_language() else dfa


def _without_classes(regex: str) -> str:
    """The regex with [...] classes removed (a `?` inside a class is no quantifier)."""
    return re.sub(r"\[(?:\\.|[^\]\\])*\]", "C", regex)


def _hoist_groups(grammar) -> None:
    """Give every optional (`x?`, `[x]`) and every parenthesized alternation inside a sequence a
    rule of its own, in lark's rule trees before lark flattens them.

    lark turns `a? b? c?` into the 2**3 sequences of one rule (it distributes alternatives over
    sequences), which is exponential in the number of optional parts: a JSON-schema object with
    20 optional properties would be a million rules. As separate rules they stay linear.
    """
    from lark import Token, Tree
    from lark.grammar import NonTerminal, RuleOptions

    new_rules = []

    def new_rule(alternatives: list) -> Tree:
        name = f"__lmlang_group_{len(new_rules)}"
        new_rules.append((name, (), Tree("expansions", alternatives), RuleOptions()))
        return Tree("value", [NonTerminal(name)])

    def alternatives_of(item) -> list:
        if isinstance(item, Tree) and item.data == "expansions":
            return [hoist_expansion(e) for e in item.children]
        return [Tree("expansion", [hoist_item(item)])]

    def hoist_expansion(expansion):
        if isinstance(expansion, Tree) and expansion.data == "alias":
            return Tree("alias", [hoist_expansion(expansion.children[0]), expansion.children[1]])
        if isinstance(expansion, Tree) and expansion.data == "expansion":
            return Tree("expansion", [hoist_item(c) for c in expansion.children])
        return hoist_item(expansion)

    def hoist_item(item):
        if not isinstance(item, Tree):
            return item
        if item.data == "maybe" or (
            item.data == "expr" and len(item.children) == 2 and isinstance(item.children[1], Token) and item.children[1] == "?"
        ):
            return new_rule(alternatives_of(item.children[0]) + [Tree("expansion", [])])
        if item.data == "expr":
            return Tree("expr", [hoist_item(item.children[0]), *item.children[1:]])
        if item.data == "expansions":
            if len(item.children) == 1:
                return Tree("expansions", [hoist_expansion(item.children[0])])
            return new_rule(alternatives_of(item))
        return item

    for i, (name, params, tree, options) in enumerate(grammar.rule_defs):
        if params:  # templates are expanded by lark later; leave them as written
            continue
        top = [hoist_expansion(e) for e in tree.children] if tree.data == "expansions" else [hoist_expansion(tree)]
        grammar.rule_defs[i] = (name, params, Tree("expansions", top), options)
    grammar.rule_defs.extend(new_rules)


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

