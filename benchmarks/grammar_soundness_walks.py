"""Random strings of a converter's output, and test instances serialized as the converter emits
them: helpers of benchmarks/grammar_soundness.py (static mode, instance checks) and its tests.

    sample_regex(pattern, rng)      a random string of a regex (Python syntax)
    sample_lark(parser, rng)        a random string of a `lark.Lark` grammar
    sample_ir(grammar, rng)         a random string of a `json_schema_ir.Grammar`
    schema_order_text(instance, doc, ensure_ascii, branch_order)   compact JSON, keys in schema order
"""

from __future__ import annotations

import collections
import functools
import json
import random
import re
from typing import Any

try:
    from re import _constants
    from re import _parser as _sre_parser
except ImportError:  # Python 3.10
    import sre_constants as _constants
    import sre_parse as _sre_parser

# ---- random walks over a regex (Python syntax) and over a lark grammar ----------------------

_POOL = [chr(c) for c in range(0x20, 0x7F)] * 3 + list("\t\n\x01\x7féüßñ€中文日本語ア한😀🎉\u00a0\u2028\u200b\ufeff")
_REPEATS = (_constants.MAX_REPEAT, _constants.MIN_REPEAT, getattr(_constants, "POSSESSIVE_REPEAT", None))


@functools.lru_cache(maxsize=256)
def _parse_regex(pattern: str):
    return _sre_parser.parse(pattern)


def sample_regex(pattern: str, rng: random.Random) -> str:
    """A random string of the regex's language (a walk over Python's own parse of it)."""
    out: list[str] = []
    _emit(_parse_regex(pattern), rng, out)
    return "".join(out)


def _emit(items: Any, rng: random.Random, out: list[str]) -> None:
    c = _constants
    for op, av in items:
        if op is c.LITERAL:
            out.append(chr(av))
        elif op is c.NOT_LITERAL:
            out.append(_pick(rng, lambda ch, av=av: ord(ch) != av))
        elif op is c.ANY:
            out.append(_pick(rng, lambda ch: ch != "\n"))
        elif op is c.IN:
            out.append(_pick_in(av, rng))
        elif op in _REPEATS:
            lo, hi, sub = av
            hi = lo + 6 if hi is c.MAXREPEAT else hi
            for _ in range(min(hi, lo + int(rng.expovariate(0.7)))):
                _emit(sub, rng, out)
        elif op is c.SUBPATTERN:
            _emit(av[-1], rng, out)
        elif op is c.BRANCH:
            _emit(rng.choice(av[1]), rng, out)
        elif op is not c.AT:
            raise ValueError(f"sampler: unsupported regex construct {op}")


def _pick(rng: random.Random, ok) -> str:
    for _ in range(1000):
        ch = rng.choice(_POOL) if rng.random() < 0.9 else chr(rng.choice((rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x110000))))
        if ok(ch):
            return ch
    raise ValueError("sampler: no character found for a class")


def _in_class(items: Any, ch: str) -> bool:
    c = _constants
    for op, av in items:
        if op is c.LITERAL and ord(ch) == av or op is c.RANGE and av[0] <= ord(ch) <= av[1]:
            return True
        if op is c.CATEGORY and re.fullmatch({c.CATEGORY_DIGIT: r"\d", c.CATEGORY_WORD: r"\w", c.CATEGORY_SPACE: r"\s"}.get(av, r"\D"), ch):
            return True
    return False


def _pick_in(items: Any, rng: random.Random) -> str:
    c = _constants
    if items and items[0][0] is c.NEGATE:
        return _pick(rng, lambda ch: not _in_class(items[1:], ch))
    op, av = rng.choice(items)
    if op is c.LITERAL:
        return chr(av)
    if op is c.RANGE:
        code = rng.randint(av[0], av[1])
        return chr(code) if not 0xD800 <= code <= 0xDFFF else chr(av[0])
    return _pick(rng, lambda ch: _in_class([(op, av)], ch))


def sample_lark(parser: Any, rng: random.Random, max_depth: int = 12) -> str:
    """A random string of a lark grammar (`lark.Lark` object), expanding rules at random and
    taking the shortest way out below `max_depth`."""
    rules: dict[str, list] = collections.defaultdict(list)
    for rule in parser.rules:
        rules[rule.origin.name].append([s for s in rule.expansion])
    terminals = {t.name: t.pattern for t in parser.terminals}
    height = _heights(rules)
    out: list[str] = []

    def expand(name: str, depth: int) -> None:
        options = rules[name]
        if depth > max_depth:
            best = min(max((height.get(s.name, 0) for s in e), default=0) for e in options)
            options = [e for e in options if max((height.get(s.name, 0) for s in e), default=0) == best]
        for symbol in rng.choice(options):
            if symbol.is_term:
                pattern = terminals[symbol.name]
                out.append(pattern.value if pattern.type == "str" else sample_regex(pattern.value, rng))
            else:
                expand(symbol.name, depth + 1)

    expand("start", 0)
    return "".join(out)


def sample_ir(grammar: Any, rng: random.Random, max_depth: int = 12) -> str:
    """A random string of a `json_schema_ir.Grammar` (the converter's IR, before rendering)."""
    from lmlang.grammar.json_schema_ir import Alt, Lit, Pat, Ref, Rep, Seq

    heights: dict[str, int] = {}

    def height(node: Any) -> int:
        if isinstance(node, (Lit, Pat)):
            return 0
        if isinstance(node, Ref):
            return heights.get(node.name, 1 << 20) + 1
        if isinstance(node, Rep):
            return 0 if node.min == 0 else height(node.node)
        if isinstance(node, Seq):
            return max((height(p) for p in node.parts), default=0)
        return min(height(o) for o in node.options)

    for _ in range(len(grammar.rules) + 1):
        for name, body in grammar.rules.items():
            heights[name] = min(heights.get(name, 1 << 20), height(body))
    out: list[str] = []

    def walk(node: Any, depth: int) -> None:
        if isinstance(node, Lit):
            out.append(node.text)
        elif isinstance(node, Pat):
            out.append(sample_regex(node.regex, rng))
        elif isinstance(node, Ref):
            walk(grammar.rules[node.name], depth + 1)
        elif isinstance(node, Seq):
            for part in node.parts:
                walk(part, depth)
        elif isinstance(node, Alt):
            options = node.options
            if depth > max_depth:
                best = min(height(o) for o in options)
                options = [o for o in options if height(o) == best]
            walk(rng.choice(options), depth)
        else:
            hi = node.min + 6 if node.max is None else node.max
            count = node.min if depth > max_depth else min(hi, node.min + int(rng.expovariate(0.7)))
            for _ in range(count):
                walk(node.node, depth)

    walk(grammar.root, 0)
    return "".join(out)


def _heights(rules: dict[str, list]) -> dict[str, int]:
    height: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        for name, expansions in rules.items():
            for e in expansions:
                if all(s.is_term or s.name in height for s in e):
                    h = 1 + max((height.get(s.name, 0) for s in e if not s.is_term), default=0)
                    if h < height.get(name, 1 << 30):
                        height[name] = h
                        changed = True
    return height


# ---- test instances serialized the way the converter orders keys -----------------------------


def schema_order_text(instance: Any, doc: Any, ensure_ascii: bool, branch_order: bool = False) -> str:
    """Compact JSON of `instance` with object keys in schema order (properties, then required),
    the order the converter emits them in. Keys named by anyOf/oneOf branches come in the order
    of all branches, or with `branch_order`, of the first branch the value satisfies alone (the
    converter orders each branch's object by that branch's own `properties`)."""
    ordered = _ordered(instance, [(doc.root, doc.root_base)], doc, 0, branch_order)
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=ensure_ascii)


def _applicable(schemas: list, doc: Any, value: Any, branch_order: bool) -> list:
    out, stack, seen = [], list(schemas), set()
    while stack:
        schema, base = stack.pop(0)
        if not isinstance(schema, dict) or id(schema) in seen:
            continue
        seen.add(id(schema))
        out.append((schema, base))
        base = doc.base_of(schema, base)
        if isinstance(schema.get("$ref"), str):
            try:
                target, target_base, _ = doc.resolve(schema["$ref"], base, "#")
                stack.append((target, target_base))
            except ValueError:
                pass
        stack += [(sub, base) for sub in schema.get("allOf", []) if isinstance(sub, dict)]
        for keyword in ("anyOf", "oneOf"):
            branches = [(sub, base) for sub in schema.get(keyword, []) if isinstance(sub, dict)]
            if branch_order:
                branches = next(([b] for b in branches if _satisfies(doc, b[0], value)), branches)
            stack += branches
    return out


def _satisfies(doc: Any, schema: Any, value: Any) -> bool:
    try:
        return doc.is_valid(schema, value)
    except ValueError:  # GrammarError: a reference the document cannot resolve
        return False


def _ordered(value: Any, schemas: list, doc: Any, depth: int, branch_order: bool) -> Any:
    if depth > 50 or not isinstance(value, (dict, list)):
        return value
    applicable = _applicable(schemas, doc, value, branch_order)
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            subs = []
            for schema, base in applicable:
                prefix = schema.get("prefixItems", schema.get("items") if isinstance(schema.get("items"), list) else [])
                rest = schema.get("items") if isinstance(schema.get("items"), dict) else schema.get("additionalItems")
                sub = prefix[i] if i < len(prefix) else rest
                if sub is not None:
                    subs.append((sub, base))
            out.append(_ordered(item, subs, doc, depth + 1, branch_order))
        return out
    order: list[str] = []
    for schema, _ in applicable:
        order += [k for k in schema.get("properties", {}) if k not in order]
    for schema, _ in applicable:
        order += [k for k in schema.get("required", []) if isinstance(k, str) and k not in order]
    keys = [k for k in order if k in value] + [k for k in value if k not in order]
    return {
        k: _ordered(value[k], [(s["properties"][k], b) for s, b in applicable if k in s.get("properties", {})], doc, depth + 1,
                    branch_order)
        for k in keys
    }
