"""`GrammarCompiler`: constraint source -> `CompiledGrammar`, with an LRU cache per tokenizer.

Supported constraint kinds and the exact subset each accepts:

regex (`compile_regex`, `validate_regex`): Python `re` syntax as parsed by interegular, matched
against the WHOLE output (implicitly anchored; a leading `^` and a trailing `$` are allowed and
ignored). Supported: literals, escapes `\\d \\w \\s \\D \\W \\S` (ASCII classes), `\\n \\t \\r
\\f \\v \\xHH \\uXXXX \\UXXXXXXXX`, classes `[...]` with ranges and `^` negation, `.` (any
character but newline; `(?s)` includes it), groups `(...)`, `(?:...)`, `(?P<name>...)`,
alternation, quantifiers `* + ? {n} {n,} {n,m}` (a lazy `?` suffix is accepted and means the
same: the automaton matches a set of strings), inline flags `(?i)`, `(?s)`. Any Unicode text is
matched as UTF-8 bytes, so tokens that split a multi-byte character are handled. Rejected with
`GrammarError` naming the construct: backreferences, lookahead/lookbehind, `\\b \\B \\A \\Z`,
`^`/`$` elsewhere, `\\p{..}`, conditionals. Patterns whose NFA is over 200k states or takes
longer than `timeout_s` to build are rejected too; DFAs are built lazily (state by state as
generation reaches them, beyond what `precompute_s` covers at compile time), so a pathological
pattern such as `(a|b)*a(a|b){20}` compiles within that budget.

grammar (`compile_grammar`): lark grammar text, loaded by lark's own grammar loader (rules,
`?rule` inlining, templates, EBNF `? * + [] ~`, string literals incl. `"..."i`, regex terminals
`/.../flags` in the regex subset above, terminals built from terminals, `%import common.X`,
`%ignore`). The start rule is `start` unless given. Recognition is Earley over terminals, so any
context-free grammar works (ambiguous, left- or right-recursive). The lexer is contextual and
greedy: only terminals the parser can take next are candidates, and a lexeme ends only when the
next byte cannot extend it (like lark's standard lexer). Terminals that match the empty string
are rejected (make the rule optional instead: `x?`). Where one lexeme matches both a normal and an
`%ignore` terminal, the normal terminal wins.

json_schema (`compile_json_schema`): converted by `grammar/json_schema.py`
(`json_schema_to_grammar(schema, whitespace_pattern=None) -> ("regex", pattern) | ("lark",
source)`), then compiled as above.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .errors import GrammarError
from .matcher import CompiledGrammar
from .tokenizer_info import TokenizerInfo

KINDS = ("regex", "grammar", "json_schema")


@dataclass(frozen=True)
class CompileOptions:
    """Budgets that bound the work for pathological constraints.

    max_dfa_states: limit on the states of any one automaton (a regex, a lark terminal, a
      lexer); DFAs are built lazily, so this bounds memory while masks are computed.
    timeout_s: limit on the wall time spent building one regex's NFA.
    precompute_s: time a regex constraint spends at compile time computing the masks of its DFA
      states (breadth-first from the start, see CompiledRegex.precompute), so that a request
      finds them cached; 0 leaves every mask to be computed when first needed.
    """

    max_dfa_states: int = 250_000
    timeout_s: float = 10.0
    precompute_s: float = 0.05


def validate_regex(pattern: str, options: CompileOptions = CompileOptions()) -> None:
    """Check that `pattern` compiles (no tokenizer needed); raise GrammarError naming the problem."""
    from .regex_dfa import regex_to_dfa

    regex_to_dfa(pattern, options)


def validate_grammar(source: str, start: str = "start", options: CompileOptions = CompileOptions()) -> None:
    """Check that a lark grammar compiles (no tokenizer needed); raise GrammarError if not."""
    from .cfg import load_cfg

    load_cfg(source, start, options)


def compile_regex(pattern: str, tokenizer_info: TokenizerInfo, options: CompileOptions = CompileOptions()) -> CompiledGrammar:
    """Compile a regex (see the module docstring for the subset) for one tokenizer."""
    from .regex_matcher import CompiledRegex
    from .regex_dfa import regex_to_dfa

    compiled = CompiledRegex(regex_to_dfa(pattern, options), tokenizer_info, kind="regex", source=pattern)
    compiled.precompute(options.precompute_s)
    return compiled


def compile_grammar(
    source: str, tokenizer_info: TokenizerInfo, start: str = "start", options: CompileOptions = CompileOptions()
) -> CompiledGrammar:
    """Compile a lark grammar (see the module docstring for the semantics) for one tokenizer."""
    from .cfg import load_cfg
    from .cfg_matcher import CompiledCFG

    return CompiledCFG(load_cfg(source, start, options), tokenizer_info, kind="grammar", source=source, options=options)


def canonical_schema(schema: Any) -> str:
    """A JSON schema as compact JSON text: the cache key. Key order is kept, because property
    order decides the order in which an object's properties are generated."""
    from .json_schema import load_schema

    return json.dumps(load_schema(schema), separators=(",", ":"), ensure_ascii=False)


class GrammarCompiler:
    """Compiles constraints for one tokenizer and keeps the last `cache_size` results (LRU).

    Thread-safe. The cache key is (kind, source, options): compiling the same regex twice returns
    the same `CompiledGrammar`, whose lazily built per-state masks then serve every request.
    """

    def __init__(self, tokenizer_info: TokenizerInfo, cache_size: int = 128, options: CompileOptions = CompileOptions()):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.tokenizer_info = tokenizer_info
        self.cache_size = cache_size
        self.options = options
        self._cache: OrderedDict[tuple, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile_regex(self, pattern: str) -> CompiledGrammar:
        """A regex constraint (whole-output match)."""
        return self.compile("regex", pattern)

    def compile_grammar(self, source: str) -> CompiledGrammar:
        """A lark grammar constraint with start rule `start`."""
        return self.compile("grammar", source)

    def compile_json_schema(self, schema: dict | str, whitespace_pattern: str | None = None) -> CompiledGrammar:
        """A JSON schema constraint; `whitespace_pattern` is a regex for the whitespace allowed
        between JSON tokens (None: the converter's default)."""
        return self._cached(("json_schema", canonical_schema(schema), whitespace_pattern), self._build_json_schema)

    def compile(self, kind: str, source: Any) -> CompiledGrammar:
        """Dispatch on kind: "regex" (str), "grammar" (lark str), "json_schema" (dict or str)."""
        if kind == "regex":
            return self._cached(("regex", source), lambda key: compile_regex(key[1], self.tokenizer_info, self.options))
        if kind == "grammar":
            return self._cached(("grammar", source), lambda key: compile_grammar(key[1], self.tokenizer_info, "start", self.options))
        if kind == "json_schema":
            return self.compile_json_schema(source)
        raise ValueError(f"unknown constraint kind {kind!r}; expected one of {KINDS}")

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _build_json_schema(self, key: tuple) -> CompiledGrammar:
        from .cfg import load_cfg
        from .cfg_matcher import CompiledCFG
        from .json_schema import json_schema_to_grammar
        from .regex_dfa import regex_to_dfa
        from .regex_matcher import CompiledRegex

        _, schema_text, whitespace_pattern, _options = key
        target_kind, target = json_schema_to_grammar(json.loads(schema_text), whitespace_pattern=whitespace_pattern)
        info = self.tokenizer_info
        if target_kind == "regex":
            compiled = CompiledRegex(regex_to_dfa(target, self.options), info, kind="json_schema", source=schema_text)
            compiled.precompute(self.options.precompute_s)
            return compiled
        if target_kind == "lark":
            cfg = load_cfg(target, "start", self.options)
            return CompiledCFG(cfg, info, kind="json_schema", source=schema_text, options=self.options)
        raise GrammarError(f"json_schema_to_grammar returned unknown kind {target_kind!r}")

    def _cached(self, key: tuple, build) -> CompiledGrammar:
        key = key + (self.options,)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = build(key)
        if self.cache_size:
            with self._lock:
                self._cache[key] = compiled
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return compiled
