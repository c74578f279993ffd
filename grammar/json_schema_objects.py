"""Objects and arrays of a flattened schema as grammar IR.

Objects. Properties are emitted in schema order (the order of `properties`, then `required`
names that `properties` does not list); required ones are mandatory, optional ones optional.
Then come the properties the schema does not name, if it allows any:

- `patternProperties` keys match their pattern, with the schema of that pattern. Patterns must be
  provably disjoint (read generously, as ECMA or Python may); named properties are subtracted
  exactly from patterns of the form `^literal` / `^literal[class]*$`, other patterns must match
  no named property. Named properties that a pattern matches take its schema too.
- `additionalProperties: true` or a schema: any key except the named ones and those of the
  patterns (which must then be `^literal` prefixes), by exact complement over canonically
  serialized keys (one serialization per key, so excluding a name excludes it for good).
- `propertyNames` that enumerates keys turns the allowed unnamed keys into optional properties;
  one that accepts every string is no constraint; others are checked on the named keys only.

An object schema that names properties but says nothing about `additionalProperties` gets no
unnamed properties (a sound tightening, as in OpenAI structured outputs and XGrammar's strict
mode); `{"type": "object"}` alone still means any object. Unnamed keys may repeat; a JSON parser
keeps the last value, which is valid like every other one.

Arrays: positional schemas (`prefixItems`, or `items` as a list before 2020-12), then the rest
schema, within `minItems`..`maxItems`. `uniqueItems: true` is refused unless at most one item.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import GrammarError
from .json_schema_ecma import PatternError, pattern_regex, simple_key_pattern
from .json_schema_flatten import Flat, Located, flatten
from .json_schema_ir import EMPTY, Lit, Node, Pat, alt, opt, rep, seq
from .json_schema_oneof import candidates
from .json_schema_strings import (
    FORMATS,
    UNIVERSE,
    UNSUPPORTED_FORMATS,
    charset_of,
    json_literal,
    key_complement_regex,
    regex_fsm,
    unit_regex,
)

if TYPE_CHECKING:
    from .json_schema import _Builder

_REQUIRED, _OPTIONAL, _STAR = "required", "optional", "star"


def comma_sequence(builder: _Builder, items: list[tuple[Node, str]], sep: Node) -> Node | None:
    """Comma-separated items in the given order (None if no item at all can appear).

    Required items must appear, optional ones at most once, star ones any number of times."""
    first_required = next((i for i, (_, kind) in enumerate(items) if kind == _REQUIRED), None)

    def after(node: Node, kind: str) -> Node:
        sep_node = seq(sep, node)
        return sep_node if kind == _REQUIRED else rep(sep_node, 0, 1 if kind == _OPTIONAL else None)

    if first_required is not None:
        before = [rep(seq(node, sep), 0, 1 if kind == _OPTIONAL else None) for node, kind in items[:first_required]]
        tail = [after(node, kind) for node, kind in items[first_required + 1 :]]
        return seq(*before, items[first_required][0], *tail)
    # All optional: choose the first item present; the tails are shared rules.
    options = []
    tail: Node = EMPTY
    for node, kind in reversed(items):
        head = seq(node, rep(seq(sep, node), 0, None)) if kind == _STAR else node
        options.append(seq(head, tail))
        tail = builder.shared(seq(after(node, kind), tail))
    return alt(*reversed(options))


def build_object(builder: _Builder, flat: Flat, origin: Located) -> Node | None:
    """The object language of `flat` (None if no object satisfies it)."""
    parts = flat.objects
    names: list[str] = []
    for part in parts:
        names += [k for k in part.properties if k not in names]
    names += [k for k in flat.required if k not in names]
    items: list[tuple[Node, str]] = []
    for name in names:
        required = name in flat.required
        value = _named_value(builder, parts, name, origin)
        if value is not None and not all(builder.doc.is_valid(pn.schema, name) for pn in flat.property_names):
            value = None
        if value is None:
            if required:
                builder.note_unsat(f"required property {name!r} at {origin.path} cannot be satisfied")
                return None
            continue
        items.append((seq(Lit(json_literal(name)), builder.tok(":"), value), _REQUIRED if required else _OPTIONAL))
    if flat.property_names and _no_key_constraint(builder, flat):
        flat.property_names = []
    items += _unnamed_properties(builder, flat, names, origin)
    star = any(kind == _STAR for _, kind in items)
    n_required = sum(kind == _REQUIRED for _, kind in items)
    if flat.max_properties is not None and n_required > flat.max_properties:
        builder.note_unsat(f"maxProperties at {origin.path} is below the number of required properties")
        return None
    if flat.max_properties is not None and (star or len(items) > flat.max_properties):
        raise GrammarError(f"maxProperties at {origin.path} cannot be compiled exactly here")
    if flat.min_properties > n_required and flat.min_properties != 1:
        raise GrammarError(f"minProperties at {origin.path} cannot be compiled exactly here")
    content = comma_sequence(builder, items, builder.tok(",")) if items else None
    empty = None if n_required or flat.min_properties > 0 else seq(builder.tok("{"), builder.tok("}"))
    full = None if content is None else seq(builder.tok("{"), content, builder.tok("}"))
    node = alt(empty, full)
    if node is None:
        builder.note_unsat(f"no object satisfies minProperties at {origin.path}")
    return node


def _named_value(builder: _Builder, parts: list, name: str, origin: Located) -> Node | None:
    """The value language of a named property: the conjunction of what every part requires."""
    locs = []
    for part in parts:
        matching = [loc for pattern, loc in part.patterns.items() if _pattern_matches(pattern, name, loc.path)]
        if name in part.properties:
            locs.append(part.properties[name])
        elif not matching and part.additional is not None:
            locs.append(part.additional)
        locs += matching
    return builder.conjunction(locs, origin, name)


def _pattern_matches(pattern: str, name: str, path: str) -> bool:
    """Whether a key pattern applies to `name` under the ECMA reading or Python's."""
    try:
        ours = re.fullmatch(pattern_regex(pattern), json_literal(name)[1:-1]) is not None
    except PatternError as e:
        raise GrammarError(f"patternProperties pattern at {path}: {e}") from None
    try:
        return ours or re.search(pattern, name) is not None
    except re.error:
        return ours


def _unnamed_properties(builder: _Builder, flat: Flat, names: list[str], origin: Located) -> list[tuple[Node, str]]:
    """Items for properties that `properties`/`required` do not name: pattern keys, then the
    additional ones (any other key), as star items; with an enumerated propertyNames, optional
    items for the enumerated keys instead."""
    parts = flat.objects
    extra_locs, extras = [], True
    for part in parts:
        if part.additional is None:
            extras = extras and not (part.properties or part.patterns)  # the tightening above
        elif part.additional.schema is False:
            extras = False
        else:
            extra_locs.append(part.additional)
    pattern_parts = [part for part in parts if part.patterns]
    if pattern_parts and len(parts) > 1:
        raise GrammarError(f"patternProperties at {pattern_parts[0].path} combined with other object schemas")
    patterns = pattern_parts[0].patterns if pattern_parts else {}
    allowed = _property_names(builder, flat)
    if allowed is not None:
        return _enumerated_keys(builder, parts, names, allowed, extras, origin)
    if flat.property_names and (patterns or extras):
        raise GrammarError(f"propertyNames at {flat.property_names[0].path} with unnamed properties")
    items = []
    for pattern, loc in patterns.items():
        keys = _pattern_keys(pattern, names, loc.path)
        if keys is None:
            continue
        if len(patterns) > 1 and not _keys_avoid(keys, [p for p in patterns if p != pattern]):
            raise GrammarError(f"patternProperties at {loc.path}: patterns overlap (keys would need both schemas)")
        value = builder.gen(loc)
        if value is not None:
            items.append((seq(Pat(f'"{keys}"'), builder.tok(":"), value), _STAR))
    if extras:
        prefixes = []
        for pattern, loc in patterns.items():
            simple = simple_key_pattern(pattern)
            if simple is None or simple[1] != UNIVERSE:
                raise GrammarError(f"patternProperties at {loc.path} with additionalProperties other than false")
            prefixes.append(simple[0])
        keys = key_complement_regex(names, blocked=prefixes)
        value = builder.conjunction(extra_locs, origin, "additionalProperties")
        if keys is not None and value is not None:
            items.append((seq(Pat(f'"{keys}"'), builder.tok(":"), value), _STAR))
    return items


def _keys_avoid(keys: str, patterns: list[str]) -> bool:
    """Whether no key of `keys` can match any of `patterns`, read generously (ECMA or Python)."""
    fsm = regex_fsm(keys)
    for pattern in patterns:
        try:
            other = pattern_regex(pattern, upper=True)
        except PatternError:
            return False
        if other is not None and not fsm.isdisjoint(regex_fsm(other)):
            return False
    return True


def _pattern_keys(pattern: str, names: list[str], path: str) -> str | None:
    """Key bodies matching a patternProperties pattern, minus the named properties."""
    simple = simple_key_pattern(pattern)
    if simple is not None:
        prefix, tail = simple
        rest = key_complement_regex([n[len(prefix) :] for n in names if n.startswith(prefix)], alphabet=tail)
        return None if rest is None else "".join(unit_regex(charset_of(c)) for c in prefix) + rest
    clash = [name for name in names if _pattern_matches(pattern, name, path)]
    if clash:
        raise GrammarError(f"patternProperties at {path} also matches the named property {clash[0]!r}")
    try:
        return pattern_regex(pattern)
    except PatternError as e:
        raise GrammarError(f"patternProperties pattern at {path}: {e}") from None


def _property_names(builder: _Builder, flat: Flat) -> list[str] | None:
    """The keys `propertyNames` allows when it enumerates them, else None (no constraint on
    unnamed keys, or one only checked on the named keys)."""
    allowed = None
    for loc in flat.property_names:
        values = candidates(flatten(builder.doc, [loc]))
        if values is not None:
            keys = [v for v in values if isinstance(v, str) and builder.doc.is_valid(loc.schema, v)]
            allowed = keys if allowed is None else [k for k in allowed if k in keys]
    if allowed is None:
        return None
    return [k for k in allowed if all(builder.doc.is_valid(loc.schema, k) for loc in flat.property_names)]


def _no_key_constraint(builder: _Builder, flat: Flat) -> bool:
    """Whether every propertyNames schema accepts every string (e.g. {"type": "string"})."""
    for loc in flat.property_names:
        f = flatten(builder.doc, [loc])
        if f.unsat or "string" not in f.allowed_types() or f.min_length or f.max_length is not None:
            return False
        if f.patterns or f.nots or f.disjunctions or f.finite is not None or f.unsupported:
            return False
        if any(name in FORMATS or name in UNSUPPORTED_FORMATS for name, _ in f.formats):
            return False
    return True


def _enumerated_keys(builder: _Builder, parts: list, names: list[str], allowed: list[str], extras: bool, origin: Located) -> list:
    """Optional items for the keys an enumerated propertyNames allows beyond the named ones."""
    items = []
    for key in dict.fromkeys(allowed):
        if key in names:
            continue
        matching = any(_pattern_matches(p, key, loc.path) for part in parts for p, loc in part.patterns.items())
        if not matching and not extras:
            continue
        value = _named_value(builder, parts, key, origin)
        if value is not None:
            items.append((seq(Lit(json_literal(key)), builder.tok(":"), value), _OPTIONAL))
    return items


def build_array(builder: _Builder, flat: Flat, origin: Located) -> Node | None:
    """The array language of `flat` (None if no array satisfies it)."""
    parts = flat.arrays
    n_prefix = max((len(p.prefix) for p in parts), default=0)
    max_items = flat.max_items
    elements: list[Node] = []
    for index in range(n_prefix):
        if max_items is not None and index >= max_items:
            break
        locs = [p.prefix[index] if index < len(p.prefix) else p.rest for p in parts]
        node = builder.conjunction([loc for loc in locs if loc is not None], origin, f"item {index}")
        if node is None:
            max_items = index
            break
        elements.append(node)
    rest = builder.conjunction([p.rest for p in parts if p.rest is not None], origin, "items")
    if rest is None and len(elements) == n_prefix:
        max_items = len(elements) if max_items is None else min(max_items, len(elements))
    min_items = flat.min_items
    if max_items is not None and min_items > max_items:
        builder.note_unsat(f"no array at {origin.path} has between {min_items} and {max_items} items")
        return None
    if flat.unique_items and (max_items is None or max_items > 1):
        raise GrammarError(f"uniqueItems at {flat.unique_items} (arrays of more than one item)")
    sep = builder.tok(",")
    # tail[i]: the items from index i on, given that item i-1 is present (each starts with a comma).
    n = len(elements)
    rest_lo = max(0, min_items - n)
    rest_hi = None if max_items is None else max_items - n
    tail: Node = rep(seq(sep, rest), rest_lo, rest_hi)
    for index in range(n - 1, 0, -1):
        step = seq(sep, elements[index], tail)
        tail = step if index < min_items else opt(step)
    if n:
        first = seq(elements[0], tail)
    elif rest is not None and (max_items is None or max_items > 0):
        first = seq(rest, rep(seq(sep, rest), max(0, min_items - 1), None if max_items is None else max_items - 1))
    else:
        first = None
    full = None if first is None else seq(builder.tok("["), first, builder.tok("]"))
    empty = seq(builder.tok("["), builder.tok("]")) if min_items == 0 else None
    node = alt(empty, full)
    if node is None:
        builder.note_unsat(f"no array satisfies the schema at {origin.path}")
    return node

