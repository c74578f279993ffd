"""`oneOf` made exact: proofs that branches exclude each other, and the `required`-only rewrite.

A oneOf compiles to the union of its branches only when no value a branch generates satisfies
another branch; such a value would otherwise be invalid. `exclusive` gives sufficient conditions
on the validity sets of the branches; `generates_exclusive` checks one direction, where the
generating branch counts only the types it generates (`generated_types`: a branch without `type`
generates the types its keywords name, e.g. objects for `properties`, which is what makes
`oneOf: [{properties: {kind: {const: a}}, required: [kind]}, ...]` exact without `type`):

- the types do not meet;
- one branch is finite (enum/const/null/boolean) and none of its values satisfies the other;
- strings of disjoint length ranges or of disjoint patterns, numbers of disjoint ranges;
- objects where a property required by one branch is forbidden by the other
  (`additionalProperties: false` without it, or a `false` property schema), or required by
  both with values that exclude each other by these same rules (the discriminator pattern).

`required_only_branches` handles `oneOf: [{required: R1}, {required: R2}, ...]` exactly without a
proof: branch i becomes "R_i present and, for each j != i, some name of R_j - R_i absent".
"""

from __future__ import annotations

from .json_schema_document import ASSERTION_KEYWORDS, SchemaDocument
from .json_schema_ecma import PatternError, pattern_regex
from .json_schema_flatten import ALL_TYPES, Flat, Located, absent, flatten
from .json_schema_numbers import Bound
from .json_schema_strings import regex_fsm

# Pattern regexes longer than this are not compared (the automaton product could be slow).
_MAX_PROOF_REGEX = 4000


def candidates(flat: Flat) -> list | None:
    """The finite set of values a conjunction can take, when it is finite."""
    if flat.finite is not None:
        return flat.finite
    types = flat.allowed_types()
    if types <= {"null", "boolean"}:
        return ([None] if "null" in types else []) + ([False, True] if "boolean" in types else [])
    return None


def _declared(flat: Flat) -> frozenset:
    return flat.types if flat.types is not None else ALL_TYPES


def generated_types(flat: Flat) -> frozenset:
    """The types of every value generated for the conjunction `flat`: `Flat.allowed_types`, or
    the declared types while disjunctions remain to be distributed (a branch may name more
    keyword types; declared types only narrow)."""
    return _declared(flat) if flat.disjunctions else flat.allowed_types()


def generates_exclusive(doc: SchemaDocument, a: Flat, b: Flat, schemas_a: list, schemas_b: list) -> bool:
    """Whether no value generated for `a` satisfies `b`, and none generated for `b` satisfies `a`
    (sufficient conditions only; see `exclusive`)."""
    return exclusive(doc, a, b, schemas_a, schemas_b, generated=True) and exclusive(doc, b, a, schemas_b, schemas_a, generated=True)


def exclusive(doc: SchemaDocument, a: Flat, b: Flat, schemas_a: list, schemas_b: list, depth: int = 0,
              generated: bool = False) -> bool:
    """Whether no value satisfies both branches (sufficient conditions only). `schemas_x` are the
    schemas whose conjunction branch x is, to test enumerated values against. With `generated`,
    whether no value *generated* for `a` satisfies `b`: `a` then has only its generated types."""
    if a.unsat or b.unsat:
        return True
    ca, cb = candidates(a), candidates(b)
    if ca is not None and cb is not None and depth == 0:
        return True  # finite branches are filtered through the validator of the whole oneOf
    if ca is not None:
        return not any(_valid_all(doc, schemas_b, v) for v in ca)
    if cb is not None:
        return not any(_valid_all(doc, schemas_a, v) for v in cb)
    common = (generated_types(a) if generated else _declared(a)) & _declared(b)
    if not common:
        return True
    if common <= {"string"} and (_disjoint_lengths(a, b) or _disjoint_patterns(a, b)):
        return True
    if common <= {"integer", "fraction"} and _disjoint_ranges(a.lower, a.upper, b.lower, b.upper):
        return True
    if common <= {"object"} and depth < 3:
        return _objects_exclusive(doc, a, b, depth) or _objects_exclusive(doc, b, a, depth)
    return False


def _valid_all(doc: SchemaDocument, schemas: list, value) -> bool:
    return all(doc.is_valid(s, value) for s in schemas)


def _disjoint_lengths(a: Flat, b: Flat) -> bool:
    return (a.max_length is not None and a.max_length < b.min_length) or (
        b.max_length is not None and b.max_length < a.min_length
    )


def _disjoint_patterns(a: Flat, b: Flat) -> bool:
    """Whether the patterns of two string branches match no common string, read generously
    (every character a class may mean in ECMA or Python), so that disjointness is certain."""
    if len(a.patterns) != 1 or len(b.patterns) != 1:
        return False
    try:
        ra, rb = pattern_regex(a.patterns[0][0], upper=True), pattern_regex(b.patterns[0][0], upper=True)
    except PatternError:
        return False
    if ra is None or rb is None:
        return True
    if len(ra) + len(rb) > _MAX_PROOF_REGEX:
        return False
    return regex_fsm(ra).isdisjoint(regex_fsm(rb))


def _below(upper: Bound | None, lower: Bound | None) -> bool:
    """Whether every value under `upper` is below every value over `lower`."""
    if upper is None or lower is None:
        return False
    return upper.value < lower.value or (upper.value == lower.value and not (upper.inclusive and lower.inclusive))


def _disjoint_ranges(lo_a, hi_a, lo_b, hi_b) -> bool:
    return _below(hi_a, lo_b) or _below(hi_b, lo_a)


def _objects_exclusive(doc: SchemaDocument, a: Flat, b: Flat, depth: int) -> bool:
    """A property required by `a` that `b` forbids, or whose values under `a` and `b` exclude
    each other (a discriminator)."""
    for name in a.required:
        if _forbidden(b, name):
            return True
        locs_a = [part.properties[name] for part in a.objects if name in part.properties]
        locs_b = [part.properties[name] for part in b.objects if name in part.properties]
        if locs_a and locs_b:
            fa, fb = flatten(doc, locs_a), flatten(doc, locs_b)
            if exclusive(doc, fa, fb, [l.schema for l in locs_a], [l.schema for l in locs_b], depth + 1):
                return True
    return False


def _forbidden(flat: Flat, name: str) -> bool:
    """Whether every object valid under `flat` lacks property `name`."""
    for part in flat.objects:
        if name in part.properties:
            if part.properties[name].schema is False:
                return True
        elif not part.patterns and part.additional is not None and part.additional.schema is False:
            return True
    return False


def required_only_branches(doc: SchemaDocument, branches: list[Located]) -> list[list[Located]] | None:
    """For a oneOf whose branches only list `required`: extra roots per branch (None if another
    shape). A branch that implies another one gets None (it can never be the only one)."""
    sets = []
    for loc in branches:
        s = loc.schema
        if not isinstance(s, dict) or not isinstance(s.get("required"), list):
            return None
        if any(k in ASSERTION_KEYWORDS for k in s if k != "required"):
            return None
        sets.append(list(dict.fromkeys(s["required"])))
    out = []
    for i, loc in enumerate(branches):
        extra = [loc, Located(doc.derived(("object",), lambda: {"type": "object"}), loc.base, loc.path)]
        for j, other in enumerate(sets):
            if j == i:
                continue
            missing = tuple(name for name in other if name not in sets[i])
            if not missing:
                extra = None
                break
            schema = doc.derived(("absent-any", missing), lambda missing=missing: {"anyOf": [absent(doc, n) for n in missing]})
            extra.append(Located(schema, loc.base, loc.path))
        out.append(extra)
    return out
