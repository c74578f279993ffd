"""Flattening: a conjunction of schemas (`allOf`, `$ref` with siblings) -> one `Flat` constraint set.

`flatten(doc, roots)` walks every root schema, follows `allOf` and `$ref` (in drafts up to 7 a
`$ref` replaces its siblings, as those drafts say; later drafts conjoin them), and combines the
keywords exactly: types intersect, bounds take the tighter side, `required` unites. Keywords whose
meaning depends on their siblings (`additionalProperties` on `properties`, `items` on
`prefixItems`) are kept per schema object (`ObjectPart`, `ArrayPart`) and combined when the
object or array is built. `anyOf`/`oneOf` are left as disjunctions for the caller to distribute.
A schema object reached twice is read once (A and A is A), which also ends `$ref` cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .json_schema_document import (
    ASSERTION_KEYWORDS,
    TYPE_KEYWORDS,
    UNSUPPORTED_KEYWORDS,
    SchemaDocument,
)
from .json_schema_numbers import Bound, tighter_lower, tighter_upper

# "number" is split so that intersecting with "integer" is plain set intersection.
ALL_TYPES = frozenset({"null", "boolean", "integer", "fraction", "string", "array", "object"})
_TYPE_SETS = {
    "null": {"null"}, "boolean": {"boolean"}, "integer": {"integer"}, "number": {"integer", "fraction"},
    "string": {"string"}, "array": {"array"}, "object": {"object"},
}


@dataclass(frozen=True)
class Located:
    """A schema with the base URI its references resolve against and its JSON path."""

    schema: Any
    base: str
    path: str

    def child(self, schema: Any, token: str) -> Located:
        return Located(schema, self.base, f"{self.path}/{token}")


@dataclass
class ObjectPart:
    """The object keywords of one schema object (additionalProperties depends on its siblings)."""

    properties: dict[str, Located]
    patterns: dict[str, Located]
    additional: Located | None
    path: str


@dataclass
class ArrayPart:
    """The array keywords of one schema object: positional schemas and the schema of the rest."""

    prefix: list[Located]
    rest: Located | None
    path: str


@dataclass
class Disjunction:
    kind: str  # "anyOf" or "oneOf"
    key: Any  # identifies the disjunction, so that each one is distributed once
    branches: list[Located]
    path: str


@dataclass
class Flat:
    """The combined constraints of a conjunction of schemas."""

    types: frozenset | None = None
    keyword_types: set = field(default_factory=set)
    unsat: str | None = None
    lower: Bound | None = None
    upper: Bound | None = None
    bound_paths: list = field(default_factory=list)
    multiple_of: list = field(default_factory=list)
    min_length: int = 0
    max_length: int | None = None
    patterns: list = field(default_factory=list)
    formats: list = field(default_factory=list)
    min_items: int = 0
    max_items: int | None = None
    unique_items: str | None = None
    arrays: list = field(default_factory=list)
    min_properties: int = 0
    max_properties: int | None = None
    required: list = field(default_factory=list)
    objects: list = field(default_factory=list)
    property_names: list = field(default_factory=list)
    nots: list = field(default_factory=list)
    disjunctions: list = field(default_factory=list)
    finite: list | None = None
    unsupported: list = field(default_factory=list)

    def allowed_types(self) -> frozenset:
        """The declared types, else the types named by the keywords present (a tightening for
        schemas like {"properties": ...}: only objects are generated), else every type."""
        if self.types is not None:
            return self.types
        if self.keyword_types:
            return frozenset().union(*(_TYPE_SETS[t] for t in self.keyword_types))
        return ALL_TYPES


def _bound(value: Any) -> Fraction:
    return Fraction(value)


def flatten(doc: SchemaDocument, roots: list[Located], resolved: frozenset = frozenset()) -> Flat:
    """Combine `roots` (and everything they conjoin) into one Flat; disjunctions whose list id is
    in `resolved` were already distributed by the caller and are skipped."""
    flat = Flat()
    seen: set[int] = set()
    stack = list(reversed(roots))
    while stack:
        loc = stack.pop()
        schema = loc.schema
        if id(schema) in seen and isinstance(schema, dict):
            continue
        seen.add(id(schema))
        if schema is True:
            continue
        if schema is False:
            flat.unsat = flat.unsat or f"the schema at {loc.path} is false"
            continue
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target, base, path = doc.resolve(ref, doc.base_of(schema, loc.base), loc.path)
            stack.append(Located(target, base, path))
            if doc.draft <= 7:
                continue
        _read(doc, flat, loc, stack, resolved)
    return flat


def _read(doc: SchemaDocument, flat: Flat, loc: Located, stack: list, resolved: frozenset) -> None:
    s, path = loc.schema, loc.path
    for keyword in s:
        for type_name, keywords in TYPE_KEYWORDS.items():
            if keyword in keywords:
                flat.keyword_types.add(type_name)
        if keyword in UNSUPPORTED_KEYWORDS:
            flat.unsupported.append((keyword, f"{path}/{keyword}"))
    if "type" in s:
        names = s["type"] if isinstance(s["type"], list) else [s["type"]]
        types = frozenset().union(*(_TYPE_SETS.get(n, set()) for n in names))
        flat.types = types if flat.types is None else flat.types & types
    for keyword in ("enum", "const"):
        if keyword in s:
            values = s["enum"] if keyword == "enum" else [s["const"]]
            flat.finite = list(values) if flat.finite is None else [v for v in flat.finite if v in values]
    _read_numbers(doc, flat, s, path)
    if "minLength" in s:
        flat.min_length = max(flat.min_length, int(s["minLength"]))
    if "maxLength" in s:
        flat.max_length = _min_opt(flat.max_length, int(s["maxLength"]))
    if "pattern" in s:
        flat.patterns.append((s["pattern"], f"{path}/pattern"))
    if isinstance(s.get("format"), str):
        flat.formats.append((s["format"], f"{path}/format"))
    if "minItems" in s:
        flat.min_items = max(flat.min_items, int(s["minItems"]))
    if "maxItems" in s:
        flat.max_items = _min_opt(flat.max_items, int(s["maxItems"]))
    if s.get("uniqueItems") is True:
        flat.unique_items = f"{path}/uniqueItems"
    if "minProperties" in s:
        flat.min_properties = max(flat.min_properties, int(s["minProperties"]))
    if "maxProperties" in s:
        flat.max_properties = _min_opt(flat.max_properties, int(s["maxProperties"]))
    for name in s.get("required", []) if isinstance(s.get("required"), list) else []:
        if name not in flat.required:
            flat.required.append(name)
    if any(k in s for k in ("properties", "patternProperties", "additionalProperties")):
        flat.objects.append(
            ObjectPart(
                {k: loc.child(v, f"properties/{_token(k)}") for k, v in s.get("properties", {}).items()},
                {k: loc.child(v, f"patternProperties/{_token(k)}") for k, v in s.get("patternProperties", {}).items()},
                loc.child(s["additionalProperties"], "additionalProperties") if "additionalProperties" in s else None,
                path,
            )
        )
    _read_array(doc, flat, loc)
    if "propertyNames" in s:
        flat.property_names.append(loc.child(s["propertyNames"], "propertyNames"))
    if "not" in s:
        _read_not(doc, flat, loc.child(s["not"], "not"), stack, resolved)
    _read_dependencies(doc, flat, loc, resolved)
    if "if" in s and ("then" in s or "else" in s):
        # if P then T else E  ==  (P and T) or (not P and E); the two branches never overlap.
        condition, then, otherwise = s["if"], s.get("then", True), s.get("else", True)
        branches = [
            Located(doc.derived(("if-then", id(s)), lambda: {"allOf": [condition, then]}), loc.base, f"{path}/then"),
            Located(doc.derived(("if-else", id(s)), lambda: {"allOf": [negation(doc, condition), otherwise]}), loc.base, f"{path}/if"),
        ]
        _add_disjunction(flat, "anyOf", ("if", id(s)), branches, f"{path}/if", resolved)
    for index, sub in enumerate(s.get("allOf", [])):
        stack.append(loc.child(sub, f"allOf/{index}"))
    for kind in ("anyOf", "oneOf"):
        if kind in s:
            branches = [loc.child(sub, f"{kind}/{i}") for i, sub in enumerate(s[kind])]
            _add_disjunction(flat, kind, id(s[kind]), branches, f"{path}/{kind}", resolved)


def absent(doc: SchemaDocument, name: str) -> dict:
    """The schema "property `name` is absent" (other properties untouched, so no tightening)."""
    return doc.derived(("absent", name), lambda: {"properties": {name: False}, "additionalProperties": True})


def negation(doc: SchemaDocument, schema: Any) -> Any:
    """A schema for exactly the values `schema` rejects: rewritten structurally where that is
    exact (booleans; `properties`, `allOf`, `anyOf`, `not` alone), else `{"not": schema}`."""
    return doc.derived(("negation", id(schema)), lambda: _negation(doc, schema))


def _negation(doc: SchemaDocument, s: Any) -> Any:
    if isinstance(s, bool):
        return not s
    keys = [k for k in s if k in ASSERTION_KEYWORDS]
    if len(keys) != 1:
        return {"not": s} if keys else False
    keyword, value = keys[0], s[keys[0]]
    if keyword == "properties" and isinstance(value, dict) and value:
        # Fails only for an object that has one of the properties with a rejected value.
        options = [{"type": "object", "required": [k], "properties": {k: negation(doc, v)}} for k, v in value.items()]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if keyword == "allOf" and value:
        return {"anyOf": [negation(doc, v) for v in value]}
    if keyword == "anyOf" and value:
        return {"allOf": [negation(doc, v) for v in value]}
    if keyword == "not":
        return value
    return {"not": s}


def _read_not(doc: SchemaDocument, flat: Flat, loc: Located, stack: list, resolved: frozenset) -> None:
    """`not`: structural rewrites (`negation`), of nothing, of everything, of `required`; others
    kept for the caller (`not` of types is compiled, anything else refused unless the values are
    enumerated and checked by the validator)."""
    s = loc.schema
    rewritten = negation(doc, s)
    if not (isinstance(rewritten, dict) and list(rewritten) == ["not"]):
        stack.append(Located(rewritten, loc.base, loc.path))
        return
    assertions = [k for k in s if k in ASSERTION_KEYWORDS]
    if assertions == ["required"] and isinstance(s["required"], list) and s["required"]:
        # Non-objects satisfy any `required`, so its negation holds only for objects lacking a name.
        flat.types = (flat.types if flat.types is not None else ALL_TYPES) & {"object"}
        names = list(dict.fromkeys(s["required"]))
        branches = [Located(absent(doc, n), loc.base, loc.path) for n in names]
        _add_disjunction(flat, "anyOf", ("not-required", id(s)), branches, loc.path, resolved)
    else:
        flat.nots.append(loc)


def _read_dependencies(doc: SchemaDocument, flat: Flat, loc: Located, resolved: frozenset) -> None:
    """`dependentRequired` / `dependentSchemas` / `dependencies` as exact disjunctions:
    {a: [b]} is anyOf[a absent, required [a, b]]; {a: S} is anyOf[a absent, required [a] and S]."""
    s = loc.schema
    for keyword in ("dependentRequired", "dependentSchemas", "dependencies"):
        if not isinstance(s.get(keyword), dict):
            continue
        for name, dependency in s[keyword].items():
            path = f"{loc.path}/{keyword}/{_token(name)}"
            if isinstance(dependency, list):
                present = doc.derived(("requires", name, id(dependency)), lambda name=name, dependency=dependency: {"required": [name, *dependency]})
            else:
                present = doc.derived(("implies", name, id(dependency)), lambda name=name, dependency=dependency: {"required": [name], "allOf": [dependency]})
            branches = [Located(absent(doc, name), loc.base, path), Located(present, loc.base, path)]
            _add_disjunction(flat, "anyOf", ("dependency", id(dependency), name), branches, path, resolved)


def _add_disjunction(flat: Flat, kind: str, key: tuple, branches: list, path: str, resolved: frozenset) -> None:
    if key not in resolved:
        flat.disjunctions.append(Disjunction(kind, key, branches, path))


def _read_numbers(doc: SchemaDocument, flat: Flat, s: dict, path: str) -> None:
    for keyword in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        value = s.get(keyword)
        if value is None or isinstance(value, bool):
            continue
        if doc.draft == 4 and keyword.startswith("exclusive"):
            continue
        flat.bound_paths.append(f"{path}/{keyword}")
        lower = keyword.endswith("inimum")
        inclusive = not keyword.startswith("exclusive")
        if doc.draft == 4:
            inclusive = s.get("exclusiveMinimum" if lower else "exclusiveMaximum") is not True
        bound = Bound(_bound(value), inclusive)
        if lower:
            flat.lower = tighter_lower(flat.lower, bound)
        else:
            flat.upper = tighter_upper(flat.upper, bound)
    if "multipleOf" in s:
        flat.multiple_of.append((s["multipleOf"], f"{path}/multipleOf"))


def _read_array(doc: SchemaDocument, flat: Flat, loc: Located) -> None:
    s = loc.schema
    if doc.draft == 2020:
        if "prefixItems" not in s and "items" not in s:
            return
        prefix = [loc.child(v, f"prefixItems/{i}") for i, v in enumerate(s.get("prefixItems", []))]
        rest = loc.child(s["items"], "items") if "items" in s else None
    elif isinstance(s.get("items"), list):
        prefix = [loc.child(v, f"items/{i}") for i, v in enumerate(s["items"])]
        rest = loc.child(s["additionalItems"], "additionalItems") if "additionalItems" in s else None
    elif "items" in s:
        prefix, rest = [], loc.child(s["items"], "items")
    else:
        return
    flat.arrays.append(ArrayPart(prefix, rest, loc.path))


def _min_opt(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


def _token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
