"""JSON schema -> regex (or lark grammar) whose every match is a valid instance.

`json_schema_to_grammar(schema, whitespace_pattern=None)` returns `("regex", pattern)` for
non-recursive schemas whose regex stays under `REGEX_SIZE_LIMIT` characters, else
`("lark", source)` with start rule `start` (recursive `$ref`, values of any shape such as `{}`,
or a regex too large to be practical). Both describe the same language.

Exactness: every generated string parses to a value that validates (formats asserted), and each
supported keyword is compiled exactly except for these documented choices of one serialization:
compact JSON (no whitespace unless `whitespace_pattern`, which is then allowed between all tokens
of objects and arrays, never around the root value); properties in schema order (see
json_schema_objects); integers without fraction or exponent; bounded numbers without exponent;
canonical escapes in pattern-constrained strings, formats and keys; object schemas that name
properties without `additionalProperties` get no unnamed ones; schemas without `type` are
generated for the types their keywords constrain (all types when none); formats generate a sound
subset of their syntax (json_schema_strings.FORMATS_DOC); `dependencies` is honoured in every
draft (2019-09 replaced it; honouring it there only narrows). Unnamed keys (additionalProperties,
patternProperties) may repeat: JSON parsers keep the last value, which is valid like the others.

Supported (exactly, with the choices above):
- type (and lists), enum, const, boolean schemas; enum/const (and null/boolean-only schemas) are
  filtered through the validator, so every keyword next to them is honoured.
- integers and numbers: minimum, maximum, exclusiveMinimum, exclusiveMaximum (draft-4 boolean
  forms too); multipleOf 1, or an integer dividing 1000 without bounds (json_schema_numbers).
- strings: minLength, maxLength (decoded characters), pattern (ECMA, json_schema_ecma; lengths
  are folded into it where the pattern has at most two open-ended parts), format date, time,
  date-time, uuid, ipv4, ipv6, hostname, email, uri (json_schema_strings.FORMATS_DOC); a format
  no draft defines is ignored, as validators do.
- objects: properties, required, additionalProperties (false, true, a schema), patternProperties
  (disjoint patterns; named properties are subtracted from literal-prefix patterns, and
  additionalProperties may accompany them), propertyNames (checked on named keys; enumerated or
  unconstrained for other keys), minProperties (up to the required count, or 1), maxProperties
  (at least the named count), dependentRequired, dependentSchemas and dependencies (rewritten as
  "absent, or present with its dependents").
- arrays: prefixItems and items (items/additionalItems before 2020-12), minItems, maxItems,
  uniqueItems when at most one item.
- allOf (merged), anyOf (distributed), oneOf (no value a branch generates satisfies another:
  types, where a branch without `type` counts the types it generates; enum/const values, string
  lengths or patterns, number ranges, a property one branch requires and the other forbids or a
  required discriminator; or branches that only list `required`), not (of types, of `required`,
  of nothing), `$ref` to `$defs`/`definitions`/JSON pointers/anchors/embedded `$id`s (recursive
  ones through lark).
- `$schema`: the draft the jsonschema package validates with; a nested one naming another draft
  only where harmless (json_schema_document).
Enumerated values that are plain literals become one regex with shared prefixes. Anything else
is a GrammarError naming the keyword and its JSON path; so are malformed and unsatisfiable
schemas. Keyword tables: json_schema_document.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from interegular.patterns import InvalidSyntax, Unsupported

from .errors import GrammarError
from .json_schema_document import ASSERTION_KEYWORDS, TYPE_KEYWORDS, SchemaDocument
from .json_schema_ecma import PatternError, pattern_regex
from .json_schema_flatten import Flat, Located, flatten
from .json_schema_ir import (
    EMPTY,
    Grammar,
    Lit,
    Node,
    Pat,
    Ref,
    alt,
    escape_literal,
    literal_union,
    rep,
    seq,
)
from .json_schema_numbers import multiple_of_regex, number_range_regex
from .json_schema_objects import build_array, build_object
from .json_schema_oneof import candidates, generates_exclusive, required_only_branches
from .json_schema_strings import (
    FORMATS,
    STRING_UNIT,
    UNSUPPORTED_FORMATS,
    json_literal,
    regex_fsm,
    string_body_regex,
)

# Above this many characters a regex becomes impractical (automaton construction grows with it);
# the lark rendering of the same IR shares repeated parts as rules instead.
REGEX_SIZE_LIMIT = 100_000
# Distributing anyOf/oneOf/if multiplies branches; past this many the schema is refused.
MAX_BRANCHES = 20_000
_JSON_WHITESPACE = set(" \t\n\r")
_TYPE_ORDER = ("null", "boolean", "integer", "fraction", "string", "array", "object")


def json_schema_to_grammar(schema: dict | str | bool | type, whitespace_pattern: str | None = None) -> tuple[str, str]:
    """Compile a JSON schema (dict, JSON text, boolean, or pydantic model class) for generation.

    Returns ("regex", pattern) or ("lark", grammar source with start rule `start`); see the
    module docstring for what is exact. Raises GrammarError for unsupported keywords (naming the
    keyword and its JSON path), malformed schemas, unsatisfiable schemas and whitespace patterns
    that can match anything but JSON whitespace.
    """
    grammar = json_schema_to_ir(schema, whitespace_pattern)
    if not grammar.is_recursive() and grammar.regex_size() <= REGEX_SIZE_LIMIT:
        return "regex", grammar.to_regex()
    return "lark", grammar.to_lark()


def json_schema_to_ir(schema: dict | str | bool | type, whitespace_pattern: str | None = None) -> Grammar:
    """The grammar IR behind `json_schema_to_grammar` (same arguments and errors), for tools
    that walk the language directly, e.g. samplers in tests and benchmarks."""
    schema = load_schema(schema)
    ws = _whitespace(whitespace_pattern)
    doc = SchemaDocument(schema)
    builder = _Builder(doc, ws)
    grammar = Grammar(builder.gen(Located(schema, doc.root_base, "#")), builder.rules)
    grammar.prune()
    if grammar.root is None:
        reason = builder.unsat_reasons[0] if builder.unsat_reasons else "no value satisfies it"
        raise GrammarError(f"the schema is unsatisfiable: {reason}")
    return grammar


def load_schema(schema: Any) -> Any:
    """A schema given as a dict, a bool, JSON text or a pydantic model class, parsed and checked."""
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, (dict, bool)):
        raise GrammarError(f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
    if schema is False:
        raise GrammarError("the schema is unsatisfiable: the root schema is false")
    return schema


def _whitespace(pattern: str | None) -> str | None:
    """Check that `pattern` matches only JSON whitespace; return it as a group."""
    if pattern is None:
        return None
    try:
        re.compile(pattern)
        fsm = regex_fsm(pattern)
    except (re.error, ValueError, InvalidSyntax, Unsupported) as e:
        raise GrammarError(f"whitespace_pattern {pattern!r} is not a supported regex: {e}") from None
    live = {s for s in fsm.states if _reaches_final(fsm, s)}
    for state in live:
        for symbol, target in fsm.map.get(state, {}).items():
            chars = [c for c, sym in fsm.alphabet._symbol_mapping.items() if sym == symbol]
            if target in live and any(not isinstance(c, str) or c not in _JSON_WHITESPACE for c in chars):
                raise GrammarError(f"whitespace_pattern {pattern!r} can match characters other than JSON whitespace")
    printable = "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 else c for c in pattern)
    return f"(?:{printable})"


def _reaches_final(fsm, state) -> bool:
    seen, stack = {state}, [state]
    while stack:
        s = stack.pop()
        if s in fsm.finals:
            return True
        for target in fsm.map.get(s, {}).values():
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return False


class _Builder:
    """Builds the IR of a document's schemas; named rules for `$ref` targets."""

    def __init__(self, doc: SchemaDocument, ws: str | None):
        self.doc = doc
        self.ws = ws
        self.rules: dict[str, Node | None] = {}
        self._rule_of: dict[int, str] = {}
        self._shared: dict[Node, str] = {}
        self._done: dict[tuple, tuple] = {}
        self._active: dict[tuple, str] = {}
        self._recursive: set[str] = set()
        self._combined: dict[tuple, Located] = {}
        self._branches = 0
        self.unsat_reasons: list[str] = []

    def note_unsat(self, reason: str) -> None:
        self.unsat_reasons.append(reason)

    def tok(self, text: str) -> Node:
        """A punctuation token with the whitespace allowed around it inside containers."""
        if self.ws is None:
            return Lit(text)
        if text in "{[":
            return Pat(escape_literal(text) + self.ws)
        if text in "}]":
            return Pat(self.ws + escape_literal(text))
        return Pat(self.ws + escape_literal(text) + self.ws)

    def shared(self, node: Node) -> Node:
        """A named rule for a subtree used more than once (inlined by the regex rendering)."""
        if isinstance(node, (Lit, Pat, Ref)) or node == EMPTY:
            return node
        name = self._shared.get(node)
        if name is None:
            name = f"s{len(self._shared)}"
            self._shared[node] = name
            self.rules[name] = node
        return Ref(name)

    def gen(self, loc: Located) -> Node | None:
        """The language of one schema."""
        s = loc.schema
        if s is True:
            return self.any_value()
        if s is False:
            self.note_unsat(f"the schema at {loc.path} is false")
            return None
        if not any(k in ASSERTION_KEYWORDS for k in s):
            return self.any_value()
        if isinstance(s.get("$ref"), str) and (self.doc.draft <= 7 or all(k == "$ref" or k not in ASSERTION_KEYWORDS for k in s)):
            return self._ref(loc)
        return self.gen_flat([loc], frozenset(), loc)

    def conjunction(self, locs: list[Located], origin: Located, label: str) -> Node | None:
        """The language of the conjunction of `locs` (any value when empty)."""
        locs = [loc for loc in locs if loc.schema is not True]
        if any(loc.schema is False for loc in locs):
            self.note_unsat(f"{label} at {origin.path} is forbidden (false schema)")
            return None
        if not locs:
            return self.any_value()
        if len(locs) == 1:
            return self.gen(locs[0])
        key = tuple(id(loc.schema) for loc in locs)
        if key not in self._combined:  # one object per conjunction: gen_flat memoizes by identity
            self._combined[key] = Located({"allOf": [loc.schema for loc in locs]}, locs[0].base, locs[0].path)
        return self.gen_flat(locs, frozenset(), self._combined[key])

    def _ref(self, loc: Located) -> Node:
        target, base, path = self.doc.resolve(loc.schema["$ref"], self.doc.base_of(loc.schema, loc.base), loc.path)
        name = self._rule_of.get(id(target))
        if name is None:
            name = "r_" + re.sub("[^a-z0-9]+", "_", path.lower()).strip("_") + f"_{len(self._rule_of)}"
            self._rule_of[id(target)] = name
            self.rules[name] = None
            self.rules[name] = self.gen(Located(target, base, path))
        return Ref(name)

    def gen_flat(self, roots: list[Located], resolved: frozenset, origin: Located) -> Node | None:
        """The language of the conjunction of `roots`, distributing anyOf/oneOf over branches.
        Values from enum/const are checked against `origin`, the schema being compiled.

        Memoized; a conjunction reached again while it is being built (recursion through `$ref`
        inside allOf/anyOf/oneOf) becomes a named rule."""
        key = (tuple(id(r.schema) for r in roots), resolved, id(origin.schema))
        if key in self._done:
            return self._done[key][0]
        name = self._active.get(key)
        if name is not None:
            self._recursive.add(name)
            return Ref(name)
        name = f"c{len(self._done) + len(self._active)}"
        self._active[key] = name
        try:
            node = self._gen_flat(roots, resolved, origin)
        finally:
            del self._active[key]
        if name in self._recursive:
            self.rules[name] = node
            node = Ref(name)
        self._done[key] = (node, roots, origin)
        return node

    def _gen_flat(self, roots: list[Located], resolved: frozenset, origin: Located) -> Node | None:
        flat = flatten(self.doc, roots, resolved)
        if flat.unsat:
            self.note_unsat(flat.unsat)
            return None
        values = candidates(flat)
        if values is not None:
            return self._finite(values, origin)
        if flat.disjunctions:
            if self._required_value_conflict(flat):
                return None
            self._branches += len(flat.disjunctions[0].branches)
            if self._branches > MAX_BRANCHES:
                raise GrammarError(f"anyOf/oneOf/if at {flat.disjunctions[0].path}: more than {MAX_BRANCHES} combinations")
            d = flat.disjunctions[0]
            if d.kind == "oneOf":
                return self._one_of(d, roots, resolved | {d.key}, origin)
            return alt(*(self.gen_flat(roots + [b], resolved | {d.key}, origin) for b in d.branches))
        return self._typed(flat, origin)

    def _required_value_conflict(self, flat: Flat) -> bool:
        """Whether a required property's enumerated values already contradict each other: such
        combinations of branches are dropped before they multiply (e.g. chains of if/then on a
        discriminator)."""
        if flat.allowed_types() != {"object"}:
            return False
        for name in flat.required:
            values = None
            for part in flat.objects:
                if name in part.properties:
                    found = candidates(flatten(self.doc, [part.properties[name]]))
                    if found is not None:
                        values = found if values is None else [v for v in values if v in found]
            if values == []:
                self.note_unsat(f"required property {name!r} has no value every branch allows")
                return True
        return False

    def _finite(self, candidates: list, origin: Located) -> Node | None:
        seen, nodes = set(), []
        for value in candidates:
            text = json_literal(value)
            if text not in seen and self.doc.is_valid(origin.schema, value):
                seen.add(text)
                nodes.append(self.literal(value))
        if not candidates:
            self.note_unsat(f"the enum at {origin.path} is empty or its values contradict each other")
        elif not nodes:
            self.note_unsat(f"no enum/const value at {origin.path} satisfies the schema")
        if all(isinstance(node, Lit) for node in nodes):
            return literal_union([node.text for node in nodes])
        return alt(*nodes)

    def literal(self, value: Any) -> Node:
        """One JSON value, with whitespace allowed inside its containers."""
        if self.ws is None or not isinstance(value, (dict, list)) or not value:
            return Lit(json_literal(value))
        if isinstance(value, list):
            items = [self.literal(v) for v in value]
            inner = [x for item in items for x in (self.tok(","), item)][1:]
            return seq(self.tok("["), *inner, self.tok("]"))
        members = [seq(Lit(json_literal(k)), self.tok(":"), self.literal(v)) for k, v in value.items()]
        inner = [x for m in members for x in (self.tok(","), m)][1:]
        return seq(self.tok("{"), *inner, self.tok("}"))

    def any_value(self) -> Node:
        """Any JSON value (a recursive rule: the result then needs the lark rendering)."""
        if "json_value" not in self.rules:
            string = Pat(f'"{STRING_UNIT}*"')
            value = Ref("json_value")
            member = seq(string, self.tok(":"), value)
            obj = alt(seq(self.tok("{"), self.tok("}")), seq(self.tok("{"), member, rep(seq(self.tok(","), member), 0, None), self.tok("}")))
            arr = alt(seq(self.tok("["), self.tok("]")), seq(self.tok("["), value, rep(seq(self.tok(","), value), 0, None), self.tok("]")))
            scalar = Pat(f"{string.regex}|{number_range_regex(None, None, False)}|true|false|null")
            self.rules["json_value"] = alt(scalar, obj, arr)
        return Ref("json_value")

    def _typed(self, flat: Flat, origin: Located) -> Node | None:
        types = set(flat.allowed_types())
        for loc in flat.nots:
            excluded = _negated_types(loc)
            if "integer" in excluded and "fraction" in types and "fraction" not in excluded:
                raise GrammarError(f"not at {loc.path}: excluding integers from numbers is not supported")
            types -= excluded
        if "fraction" in types:
            types.discard("integer")
        for keyword, path in flat.unsupported:
            families = [t for t, kws in TYPE_KEYWORDS.items() if keyword in kws]
            if not families or any(t in types or (t == "number" and "fraction" in types) for t in families):
                raise GrammarError(f"{keyword} at {path} is not supported")
        nodes = []
        for type_name in _TYPE_ORDER:
            if type_name in types:
                nodes.append(self._type(type_name, flat, origin))
        node = alt(*nodes)
        if node is None and not types:
            self.note_unsat(f"no type is allowed at {origin.path}")
        return node

    def _type(self, type_name: str, flat: Flat, origin: Located) -> Node | None:
        if type_name == "null":
            return Lit("null")
        if type_name == "boolean":
            return alt(Lit("true"), Lit("false"))
        if type_name in ("integer", "fraction"):
            return self._number(flat, type_name == "integer")
        if type_name == "string":
            return self._string(flat)
        if type_name == "array":
            return build_array(self, flat, origin)
        return build_object(self, flat, origin)

    def _number(self, flat: Flat, integer_only: bool) -> Node | None:
        if flat.multiple_of:
            return self._multiple_of(flat)
        regex = number_range_regex(flat.lower, flat.upper, integer_only)
        if regex is None:
            self.note_unsat(f"no number satisfies {', '.join(flat.bound_paths)}")
            return None
        return Pat(regex)

    def _multiple_of(self, flat: Flat) -> Node:
        """Integer multipleOf: multiples of 1, or of a divisor of 1000, without bounds (a
        non-integer is never a multiple of an integer, so numbers are generated as integers)."""
        step = 1
        for value, path in flat.multiple_of:
            if not isinstance(value, int) or isinstance(value, bool):
                raise GrammarError(f"multipleOf at {path} is not supported (only integers)")
            step = math.lcm(step, value)
        regex = multiple_of_regex(step)
        if regex is None or (step != 1 and (flat.lower or flat.upper)):
            path = flat.multiple_of[0][1]
            raise GrammarError(f"multipleOf at {path} is not supported (1, or a divisor of 1000 without bounds)")
        return Pat(regex if step != 1 else number_range_regex(flat.lower, flat.upper, True))

    def _string(self, flat: Flat) -> Node | None:
        lo, hi = flat.min_length, flat.max_length
        if hi is not None and lo > hi:
            self.note_unsat(f"minLength > maxLength ({lo} > {hi})")
            return None
        formats = {}
        for name, path in flat.formats:
            if name in UNSUPPORTED_FORMATS:
                raise GrammarError(f"format {name!r} at {path} is not supported")
            if name in FORMATS:
                formats[name] = path
        patterns = dict(flat.patterns)
        if len(formats) > 1:
            raise GrammarError(f"format at {list(formats.values())[1]}: two different formats in one schema")
        if len(patterns) > 1:
            raise GrammarError(f"pattern at {list(patterns.values())[1]}: several patterns in one schema")
        if formats and patterns:
            raise GrammarError(f"pattern at {next(iter(patterns.values()))} together with a format")
        if formats:
            name, path = next(iter(formats.items()))
            regex, fmin, fmax = FORMATS[name]
            if (hi is not None and fmin > hi) or (fmax is not None and fmax < lo):
                self.note_unsat(f"format {name!r} at {path} cannot meet minLength/maxLength")
                return None
            if lo > fmin or (hi is not None and (fmax is None or fmax > hi)):
                raise GrammarError(f"minLength/maxLength together with format {name!r} at {path}")
            return Pat(f'"{regex}"')
        if patterns:
            pattern, path = next(iter(patterns.items()))
            try:
                body = pattern_regex(pattern, lo, hi)
            except PatternError as e:
                raise GrammarError(f"pattern at {path}: {e}") from None
            if body is None:
                self.note_unsat(f"no string matches the pattern at {path} within minLength/maxLength")
                return None
            return Pat(f'"{body}"')
        return Pat(f'"{string_body_regex(lo, hi)}"')

    def _one_of(self, d, roots: list[Located], resolved: frozenset, origin: Located) -> Node | None:
        """A oneOf as the union of its branches, once they are known to exclude each other."""
        branch_roots = [roots + [b] for b in d.branches]
        flats = [flatten(self.doc, r, resolved) for r in branch_roots]
        for i, fi in enumerate(flats):
            for j in range(i + 1, len(flats)):
                if not generates_exclusive(self.doc, fi, flats[j], [d.branches[i].schema], [d.branches[j].schema]):
                    rewritten = required_only_branches(self.doc, d.branches)
                    if rewritten is None:
                        raise GrammarError(f"oneOf at {d.path}: cannot prove branches {i} and {j} mutually exclusive")
                    branch_roots = [None if extra is None else roots + extra for extra in rewritten]
                    break
            else:
                continue
            break
        return alt(*(self.gen_flat(r, resolved, origin) for r in branch_roots if r is not None))


def _negated_types(loc: Located) -> set:
    """Types excluded by `not`: supported for `not: false`, `not: true`, `not: {type: ...}`."""
    s = loc.schema
    if s is False:
        return set()
    if s is True:
        return set(_TYPE_ORDER)
    if all(k == "type" or k not in ASSERTION_KEYWORDS for k in s) and "type" in s:
        names = s["type"] if isinstance(s["type"], list) else [s["type"]]
        out = set()
        for n in names:
            out |= {"integer", "fraction"} if n == "number" else {n}
        return out
    raise GrammarError(f"not at {loc.path} is not supported (only `not` of types or booleans)")
