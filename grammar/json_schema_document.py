"""A JSON schema document: its draft, its validator, `$ref` resolution, and the keyword tables.

Keyword policy (one place):

- `ANNOTATION_KEYWORDS` carry no assertion and are ignored.
- Keywords that no JSON Schema draft defines (`x-...`, `nullable`, typos, ...) are ignored too:
  validators ignore them, so ignoring them is exact.
- Every assertion keyword a draft defines is either compiled exactly or refused with a
  GrammarError naming it and its JSON path (the lists below and the compiler's checks).

Drafts: a schema's draft is the one the jsonschema package validates it with (`validator_for`
on its `$schema`, exact URIs only; 2020-12 when absent or unknown), so the converter and the
validator read the same keywords the same way; draft 3 is refused. A nested `$schema` (which
the validator honours for that subschema) naming another draft is ignored where harmless: only
when no schema object below it uses a keyword whose meaning differs between the two drafts as
the converter reads them (`$ref` beside assertions, boolean or numeric `exclusiveMinimum`/
`exclusiveMaximum`, `items`/`additionalItems`/`prefixItems`, `id`/`$id`/anchors); else refused.

`$ref` resolution covers JSON pointers (`#/...`, percent- and `~`-escaped), `$anchor`
(and `$id: "#name"` in drafts 6-7, `id` in draft 4), and `$id`-named resources embedded in the
document. Remote references are refused: nothing is fetched.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

import jsonschema
import referencing.exceptions
from jsonschema.validators import validator_for

from .errors import GrammarError

ANNOTATION_KEYWORDS = frozenset(
    {
        "title", "description", "examples", "example", "default", "$schema", "$id", "id", "$comment",
        "deprecated", "readOnly", "writeOnly", "$anchor", "$dynamicAnchor", "$recursiveAnchor",
        "$vocabulary", "contentMediaType", "contentEncoding", "contentSchema", "$defs", "definitions",
    }
)

# Assertion keywords by the instance type they constrain: a keyword only matters when its type
# can be generated (e.g. `uniqueItems` on a string schema changes nothing).
TYPE_KEYWORDS: dict[str, frozenset] = {
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
    "array": frozenset(
        {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains",
         "minContains", "maxContains", "unevaluatedItems"}
    ),
    "object": frozenset(
        {"properties", "patternProperties", "additionalProperties", "required", "minProperties",
         "maxProperties", "propertyNames", "dependentRequired", "dependentSchemas", "dependencies",
         "unevaluatedProperties"}
    ),
}
TYPE_KEYWORDS["integer"] = TYPE_KEYWORDS["number"]

# Keywords refused wherever they matter (limited support for some is decided by the compiler).
UNSUPPORTED_KEYWORDS = frozenset(
    {"contains", "minContains", "maxContains", "unevaluatedItems", "unevaluatedProperties", "$dynamicRef",
     "$recursiveRef"}
)

# Every keyword with an assertion in some draft; anything else is an annotation or unknown.
ASSERTION_KEYWORDS = frozenset().union(
    *TYPE_KEYWORDS.values(),
    UNSUPPORTED_KEYWORDS,
    {"type", "enum", "const", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "dependentRequired",
     "dependentSchemas", "dependencies"},
)

_VALIDATOR_DRAFTS = {
    jsonschema.Draft3Validator: 3, jsonschema.Draft4Validator: 4, jsonschema.Draft6Validator: 6,
    jsonschema.Draft7Validator: 7, jsonschema.Draft201909Validator: 2019, jsonschema.Draft202012Validator: 2020,
}
_DRAFT_VALIDATORS = {draft: cls for cls, draft in _VALIDATOR_DRAFTS.items()}
_IDENTIFIERS = ("id", "$id", "$anchor", "$dynamicAnchor", "$recursiveAnchor")
_DEFAULT_BASE = "https://lmlang.invalid/schema.json"
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SCHEMA_SINGLES = (
    "additionalProperties", "additionalItems", "items", "not", "if", "then", "else", "contains",
    "propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema",
)


def schema_draft(schema: Any, enclosing: int = 2020, path: str = "#") -> int:
    """4, 6, 7, 2019 or 2020: the draft the jsonschema package validates `schema` with, from its
    `$schema` (`enclosing`, the draft around it, when it has none; 2020 when unknown)."""
    cls = validator_for(schema, default=_DRAFT_VALIDATORS[enclosing])
    draft = _VALIDATOR_DRAFTS.get(cls, 2020)
    if draft == 3:
        raise GrammarError(f"$schema at {path}: draft 3 schemas are not supported")
    return draft


def draft_conflict(schema: dict, ours: int, theirs: int) -> str | None:
    """A keyword of one schema object that the converter, reading draft `ours`, would read
    differently from a validator of draft `theirs` (None if there is none)."""
    if (ours <= 7) != (theirs <= 7) and "$ref" in schema and any(k != "$ref" and k in ASSERTION_KEYWORDS for k in schema):
        return "$ref"
    if (ours == 4) != (theirs == 4):
        for keyword in ("exclusiveMinimum", "exclusiveMaximum"):
            if keyword in schema:
                return keyword
    if (ours == 2020) != (theirs == 2020):
        for keyword in ("items", "additionalItems", "prefixItems"):
            if keyword in schema:
                return keyword
    return next((k for k in _IDENTIFIERS if k in schema), None)


def subschemas(schema: dict):
    """(keyword, key, subschema) for every direct subschema of `schema` (key: name or index)."""
    for keyword in _SCHEMA_MAPS:
        value = schema.get(keyword)
        if isinstance(value, dict):
            for key, sub in value.items():
                if isinstance(sub, (dict, bool)):
                    yield keyword, key, sub
    for keyword in _SCHEMA_LISTS:
        value = schema.get(keyword)
        if isinstance(value, list):
            for index, sub in enumerate(value):
                yield keyword, index, sub
    for keyword in _SCHEMA_SINGLES:
        value = schema.get(keyword)
        if isinstance(value, (dict, bool)):
            yield keyword, None, value


def join_uri(base: str, ref: str) -> str:
    """`ref` resolved against `base` (fragment-only references work for any scheme, e.g. urn:)."""
    if ref.startswith("#"):
        return urldefrag(base)[0] + ref
    return urljoin(base, ref)


def _pointer_token(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


class SchemaDocument:
    """A root schema with its draft, validator (formats asserted) and reference index."""

    def __init__(self, root: Any):
        self.root = root
        self.draft = schema_draft(root)
        self.validator_class = validator_for(root, default=jsonschema.Draft202012Validator)
        try:
            self.validator_class.check_schema(root)
        except jsonschema.SchemaError as e:
            where = "#/" + "/".join(_pointer_token(p) for p in e.absolute_path)
            raise GrammarError(f"malformed schema at {where}: {e.message}") from None
        self.validator = self.validator_class(root, format_checker=self.validator_class.FORMAT_CHECKER)
        self.resources: dict[str, tuple[Any, str]] = {}
        self.anchors: dict[tuple[str, str], tuple[Any, str]] = {}
        self.bases: dict[int, str] = {}
        self.root_base = _DEFAULT_BASE
        self._index(root, _DEFAULT_BASE, "#", self.draft)
        self.root_base = self.bases.get(id(root), _DEFAULT_BASE)
        self.resources.setdefault(_DEFAULT_BASE, (root, "#"))
        self._derived: dict[tuple, Any] = {}

    def derived(self, key: tuple, make) -> Any:
        """A schema built from this document's schemas (e.g. a rewrite of `dependentRequired`),
        made once per key and kept: compilation memoizes by object identity."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def base_of(self, schema: Any, fallback: str) -> str:
        return self.bases.get(id(schema), fallback)

    def _index(self, node: Any, base: str, path: str, draft: int) -> None:
        if not isinstance(node, dict):
            return
        if path != "#" and isinstance(node.get("$schema"), str):
            draft = schema_draft(node, draft, f"{path}/$schema")
        if draft != self.draft:
            conflict = draft_conflict(node, self.draft, draft)
            if conflict:
                raise GrammarError(
                    f"$schema at {path}: a draft {draft} subschema in a draft {self.draft} document is not supported "
                    f"where the drafts read a keyword differently ({conflict} at {path}/{conflict})"
                )
        ident = node.get("id" if self.draft == 4 else "$id")
        if isinstance(ident, str):
            if self.draft <= 7 and ident.startswith("#"):
                self.anchors[(base, ident[1:])] = (node, path)
            else:
                base = urldefrag(join_uri(base, ident))[0]
                self.resources[base] = (node, path)
        anchor = node.get("$anchor") or node.get("$dynamicAnchor")
        if isinstance(anchor, str) and self.draft >= 2019:
            self.anchors[(base, anchor)] = (node, path)
        self.bases[id(node)] = base
        for keyword, key, sub in subschemas(node):
            token = keyword if key is None else f"{keyword}/{_pointer_token(key)}"
            self._index(sub, base, f"{path}/{token}", draft)

    def resolve(self, ref: str, base: str, path: str) -> tuple[Any, str, str]:
        """(target schema, its base URI, its JSON path) of `ref` written at `path` under `base`."""
        uri = join_uri(base, ref)
        doc, fragment = urldefrag(uri)
        if doc not in self.resources:
            raise GrammarError(f"$ref {ref!r} at {path} cannot be resolved (remote references are not fetched)")
        node, node_path = self.resources[doc]
        if fragment.startswith("/"):
            for token in fragment[1:].split("/"):
                token = unquote(token).replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and token in node:
                    node = node[token]
                elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                    node = node[int(token)]
                else:
                    raise GrammarError(f"$ref {ref!r} at {path} points to nothing")
                node_path = f"{node_path}/{_pointer_token(token)}"
        elif fragment:
            if (doc, fragment) not in self.anchors:
                raise GrammarError(f"$ref {ref!r} at {path}: no anchor {fragment!r}")
            node, node_path = self.anchors[(doc, fragment)]
        if not isinstance(node, (dict, bool)):
            raise GrammarError(f"$ref {ref!r} at {path} points to a {type(node).__name__}, not a schema")
        return node, self.bases.get(id(node), doc), node_path

    def is_valid(self, schema: Any, instance: Any) -> bool:
        """Whether `instance` satisfies `schema` (a subschema of, or built from, this document)."""
        try:
            return self.validator.evolve(schema=schema).is_valid(instance)
        except referencing.exceptions.Unresolvable as e:
            raise GrammarError(f"cannot validate against the schema: {e}") from None
