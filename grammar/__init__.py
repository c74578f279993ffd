"""Constrained decoding: regex, JSON schema and lark CFGs compiled to per-token masks.

Public API (imported lazily, so `import lmlang.grammar` is cheap):

- `TokenizerInfo.from_huggingface(tokenizer, vocab_size=None)`: the byte view of a vocabulary.
- `GrammarCompiler(tokenizer_info, cache_size=128)`: `.compile_regex(p)`, `.compile_grammar(lark)`,
  `.compile_json_schema(schema, whitespace_pattern=None)`, `.compile(kind, source)` -> `CompiledGrammar`.
- `CompiledGrammar.matcher()` -> `GrammarMatcher`: `fill_bitmask(buf, row)`, `accept(token)`,
  `accept_bytes`, `accept_text`, `rollback(k)`, `fork()`, `can_terminate()`, `is_done()`,
  `forced_text()` (contracts in grammar/matcher.py; supported syntax in grammar/compiler.py).
- `compile_regex`, `compile_grammar`, `validate_regex`, `validate_grammar`, `CompileOptions`.
- `allocate_bitmask(batch, vocab_size)`, `bitmask_to_bool(buf, row, vocab_size)`.
- `GrammarError` (a ValueError) for every constraint that cannot be compiled.
- Typed regexes for gen_int & co: `INT_REGEX`, `FLOAT_REGEX`, `BOOL_REGEX`, `STRING_REGEX`.

How it works (one file per step):
- tokenizer_info.py / token_trie.py: every token's bytes, in a breadth-first trie of flat arrays.
- regex_dfa.py / utf8.py / byte_dfa.py / lazy_table.py: a regex (parsed by interegular) becomes a
  byte-level NFA, determinized lazily (a DFA state's row is built when first reached); large
  counted repetitions keep a counter instead of being unrolled.
- cfg.py / earley.py / lexer.py: a lark grammar becomes BNF rules over terminals (each a byte
  DFA), an Earley recognizer with persistent nodes, and a lazily built product lexer per set of
  terminals the parser expects.
- regex_matcher.py / cfg_matcher.py: a token mask is a vectorized walk of the trie through the
  (lexer) DFA (subtrees that never leave a self-looping state are taken whole; narrow frontiers
  go on in Python), cached per state, so repeated states cost a dict lookup and a row copy. A
  regex constraint precomputes its states' masks at compile time, breadth-first within
  `CompileOptions.precompute_s`, in batched walks, one per class of states alike for the longest
  token's length; bitmask.py holds the packed layout the runtime and kernels share.
- Performance note for servers: lazily built automata allocate many small Python objects; call
  `gc.freeze()` after startup so that cyclic-GC passes do not rescan long-lived objects.
"""

import importlib

_EXPORTS = {
    "GrammarError": ".errors",
    "TokenizerInfo": ".tokenizer_info",
    "GrammarCompiler": ".compiler",
    "CompileOptions": ".compiler",
    "compile_regex": ".compiler",
    "compile_grammar": ".compiler",
    "validate_regex": ".compiler",
    "validate_grammar": ".compiler",
    "CompiledGrammar": ".matcher",
    "GrammarMatcher": ".matcher",
    "allocate_bitmask": ".bitmask",
    "bitmask_to_bool": ".bitmask",
    "INT_REGEX": ".typed",
    "FLOAT_REGEX": ".typed",
    "BOOL_REGEX": ".typed",
    "STRING_REGEX": ".typed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmlang.grammar' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
