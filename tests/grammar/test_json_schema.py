"""json_schema_to_grammar: exact languages, documented choices, and clear refusals."""

import importlib.util
import json
import random
import re
import sys
import time
from pathlib import Path

import jsonschema
import lark
import pytest
from lmlang.grammar.errors import GrammarError
from lmlang.grammar.json_schema import json_schema_to_grammar, json_schema_to_ir

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "grammar_soundness.py"
_spec = importlib.util.spec_from_file_location("grammar_soundness", _BENCH)
soundness = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("grammar_soundness", soundness)
_spec.loader.exec_module(soundness)


def regex_of(schema, **kw):
    kind, source = json_schema_to_grammar(schema, **kw)
    assert kind == "regex", source
    return re.compile(source)


def accepts(schema, text, **kw):
    return regex_of(schema, **kw).fullmatch(text) is not None


def lark_accepts(source, text):
    try:
        lark.Lark(source, parser="earley", lexer="dynamic_complete").parse(text)
        return True
    except lark.exceptions.LarkError:
        return False


def assert_samples_valid(schema, n=60, seed=0, **kw):
    """Random strings of the output (regex or lark text) all parse and validate."""
    kind, source = json_schema_to_grammar(schema, **kw)
    rng = random.Random(seed)
    parser = lark.Lark(source, parser="earley") if kind == "lark" else None
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    for _ in range(n):
        text = soundness.sample_regex(source, rng) if kind == "regex" else soundness.sample_lark(parser, rng)
        assert validator.is_valid(json.loads(text)), (text, source[:300])
    return kind


def refusal(schema, **kw):
    with pytest.raises(GrammarError) as info:
        json_schema_to_grammar(schema, **kw)
    return str(info.value)


# ---- scalars -------------------------------------------------------------------------------


def test_scalar_types_and_type_lists():
    assert accepts({"type": "null"}, "null")
    assert accepts({"type": "boolean"}, "false") and not accepts({"type": "boolean"}, "0")
    schema = {"type": ["integer", "string"]}
    assert accepts(schema, "-12") and accepts(schema, '"a"') and not accepts(schema, "1.5")
    number = {"type": "number"}
    for text in ("0", "-0.5", "1e10", "2.5E-3"):
        assert accepts(number, text)
    for text in ("01", "1.", ".5", "+1", "NaN"):
        assert not accepts(number, text)


@pytest.mark.parametrize(
    "bounds",
    [
        {"minimum": -17, "maximum": 123},
        {"exclusiveMinimum": -5, "exclusiveMaximum": 7},
        {"minimum": 0.5, "maximum": 3.5},
        {"minimum": 99},
        {"exclusiveMaximum": -3},
    ],
)
def test_integer_bounds_are_exact(bounds):
    schema = {"type": "integer", **bounds}
    validator = jsonschema.Draft202012Validator(schema)
    rx = regex_of(schema)
    for n in range(-300, 300):
        assert (rx.fullmatch(str(n)) is not None) == validator.is_valid(n), n
    assert not rx.fullmatch("-0") and not rx.fullmatch("007")


def test_number_bounds_are_exact_over_decimals():
    schema = {"type": "number", "exclusiveMinimum": 0.1, "maximum": 2.5}
    validator = jsonschema.Draft202012Validator(schema)
    rx = regex_of(schema)
    for text in ("0.1", "0.10000000000000001", "0.11", "1", "2.5", "2.50", "2.5000001", "-0.5", "0", "2"):
        assert (rx.fullmatch(text) is not None) == validator.is_valid(json.loads(text)), text
    assert not rx.fullmatch("1e0")  # bounded numbers are generated without exponents


def test_draft4_boolean_exclusive_bounds():
    schema = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "minimum": 3, "exclusiveMinimum": True}
    assert not accepts(schema, "3") and accepts(schema, "4")


# ---- strings -------------------------------------------------------------------------------


def test_string_lengths_count_decoded_characters():
    schema = {"type": "string", "minLength": 2, "maxLength": 3}
    assert accepts(schema, '"ab"') and accepts(schema, '"a\\u00e9c"') and accepts(schema, '"\\ud83d\\ude00x"')
    assert not accepts(schema, '"a"') and not accepts(schema, '"abcd"')
    assert not accepts(schema, '"\\ud83dx"')  # a lone surrogate is not a character
    assert not accepts(schema, '"a\nb"')  # raw control characters are not JSON


@pytest.mark.parametrize(
    "pattern, good, bad",
    [
        ("^[a-z]+$", ["abc"], ["", "aB", "a1"]),
        ("abc", ["xxabcxx", "abc"], ["ab"]),
        ("^\\d{3}-\\d{4}$", ["555-1234"], ["5551234", "٣٣٣-1234"]),
        ("^(foo|bar)$|^x", ["foo", "xyz"], ["foox", "yx"]),
        ('^[^"\\\\]*$', ["plain"], ['a\\"b']),
        ("^a\\.b\\/c$", ["a.b/c"], ["aXb/c"]),
        ("^\\S+$", ["ab"], ["a b", "a\\tb"]),
    ],
)
def test_pattern_is_a_search_in_the_ecma_dialect(pattern, good, bad):
    schema = {"type": "string", "pattern": pattern}
    for text in good:
        assert accepts(schema, '"' + text + '"'), text
    for text in bad:
        assert not accepts(schema, '"' + text + '"'), text


def test_pattern_with_lengths_folds_into_the_pattern():
    schema = {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*", "minLength": 2, "maxLength": 4}
    assert accepts(schema, '"ab"') and accepts(schema, '"a_$!"') and not accepts(schema, '"a"')
    assert not accepts(schema, '"abcde"') and not accepts(schema, '"1abc"')
    assert_samples_valid({"type": "string", "pattern": "[0-9a-f]+", "minLength": 6, "maxLength": 6})


@pytest.mark.parametrize("pattern", ["(?=a)b", "(a)\\1", "\\bword", "^a|b^c", "\\p{L}", "[]"])
def test_unsupported_pattern_constructs_are_refused(pattern):
    message = refusal({"type": "string", "pattern": pattern})
    assert "pattern" in message or "malformed" in message


@pytest.mark.parametrize("fmt", ["date", "time", "date-time", "uuid", "ipv4", "ipv6", "hostname", "email", "uri"])
def test_formats_generate_valid_strings(fmt):
    assert_samples_valid({"type": "string", "format": fmt}, n=80)


def test_date_format_knows_the_calendar():
    schema = {"type": "string", "format": "date"}
    assert accepts(schema, '"2000-02-29"') and accepts(schema, '"2024-02-29"')
    assert not accepts(schema, '"1900-02-29"') and not accepts(schema, '"2023-04-31"')
    assert not accepts(schema, '"0000-01-01"')


def test_unknown_format_is_ignored_and_unsupported_one_refused():
    assert accepts({"type": "string", "format": "int64"}, '"x"')
    assert "format 'idn-hostname'" in refusal({"type": "string", "format": "idn-hostname"})


# ---- objects and arrays --------------------------------------------------------------------


def test_properties_in_schema_order_required_mandatory():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
        "required": ["b"],
    }
    assert accepts(schema, '{"b":"x"}') and accepts(schema, '{"a":1,"b":"x","c":true}')
    assert not accepts(schema, '{"a":1}') and not accepts(schema, '{"b":"x","a":1}')
    assert not accepts(schema, '{"b":"x","d":1}')  # unnamed properties: none without additionalProperties
    all_optional = {"type": "object", "properties": schema["properties"]}
    for text in ("{}", '{"c":false}', '{"a":1,"c":true}', '{"b":"","c":true}'):
        assert accepts(all_optional, text), text
    assert not accepts(all_optional, '{,"c":true}') and not accepts(all_optional, '{"a":1,}')


def test_additional_properties_schema_excludes_named_keys():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}
    assert accepts(schema, '{"a":"s","b":1,"ab":2}') and accepts(schema, '{"x":1}')
    assert not accepts(schema, '{"a":"s","a":3}') and not accepts(schema, '{"b":"s"}')
    assert_samples_valid(schema)


def test_additional_properties_true_and_required_unlisted_are_any_values():
    schema = {"type": "object", "required": ["id"], "additionalProperties": True}
    kind = assert_samples_valid(schema)
    assert kind == "lark"


def test_pattern_properties_with_false_additional():
    schema = {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False}
    assert accepts(schema, '{"x-a":1,"x-b":2}') and not accepts(schema, '{"y":1}') and not accepts(schema, '{"x-a":"s"}')


def test_arrays_prefix_items_and_counts():
    schema = {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": {"type": "null"}, "minItems": 1, "maxItems": 4}
    for text in ('["a"]', '["a",1]', '["a",1,null,null]'):
        assert accepts(schema, text), text
    for text in ("[]", '[1]', '["a",1,null,null,null]', '["a","b"]'):
        assert not accepts(schema, text), text
    closed = {"type": "array", "prefixItems": [{"type": "integer"}], "items": False}
    assert accepts(closed, "[1]") and accepts(closed, "[]") and not accepts(closed, "[1,2]")


def test_draft7_items_array_and_additional_items():
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "integer"}], "additionalItems": False}
    assert accepts(schema, "[1]") and not accepts(schema, "[1,2]")


# ---- combinators, enums, refs --------------------------------------------------------------


def test_enum_and_const_are_filtered_by_their_siblings():
    schema = {"type": "string", "enum": ["a", "bb", 3, None], "maxLength": 1}
    assert accepts(schema, '"a"') and not accepts(schema, '"bb"') and not accepts(schema, "3")
    assert accepts({"const": {"k": [1, 2]}}, '{"k":[1,2]}')


def test_large_enums_share_prefixes_in_one_pattern():
    words = [f"{a}{b}{c}" for a in "abcde" for b in "xyz" for c in ("", "q", "qr")] + [1, 12, None]
    rx = regex_of({"enum": words})
    for word in words:
        assert rx.fullmatch(json.dumps(word))
    for text in ('"a"', '"ax', '"axqrr"', '"axr"', "123", '"ex"x', "nul", '""'):
        assert not rx.fullmatch(text)
    urls = [f"https://example.com/api/v1/resources/{i}" for i in range(200)]
    assert len(regex_of({"enum": urls}).pattern) < sum(len(u) for u in urls) // 4
    huge = {"type": "object", "properties": {"k": {"enum": [f"v{i}" for i in range(3000)]}}, "required": ["k"]}
    start = time.perf_counter()
    assert accepts(huge, '{"k":"v2999"}') and not accepts(huge, '{"k":"v3000"}')
    assert time.perf_counter() - start < 2.0


def test_draft_is_the_validators_and_nested_schema_keys_are_checked():
    # only the exact draft-04 URI is draft 4 for the validator: here $ref and its siblings conjoin
    https_04 = {"$schema": "https://json-schema.org/draft-04/schema#", "$ref": "#/$defs/s", "maxLength": 2,
                "$defs": {"s": {"type": "string"}}}
    assert accepts(https_04, '"ab"') and not accepts(https_04, '"abc"')
    assert refusal({"$schema": "http://json-schema.org/draft-03/schema#", "type": "string"}).startswith("$schema at #")
    same = {"type": "object", "properties": {"a": {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "maximum": 5}}}
    assert accepts(same, '{"a":5}') and not accepts(same, '{"a":6}')
    items = {"$schema": "https://json-schema.org/draft/2019-09/schema", "type": "object", "properties": {
        "a": {"$schema": "https://json-schema.org/draft/2020-12/schema", "prefixItems": [{"type": "integer"}], "items": False}}}
    message = refusal(items)
    assert message.startswith("$schema at #/properties/a") and "items" in message
    ref = {"$schema": "http://json-schema.org/draft-07/schema#", "$defs": {"s": {"type": "string"}},
           "properties": {"a": {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": "#/$defs/s", "maxLength": 1}}}
    assert "$ref" in refusal(ref)


def test_any_of_all_of_and_one_of():
    schema = {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "string", "maxLength": 1}]}
    assert accepts(schema, "12") and accepts(schema, '"x"') and not accepts(schema, "3")
    merged = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, {"properties": {"a": {"minimum": 5}}}]}
    assert accepts(merged, '{"a":5}') and not accepts(merged, '{"a":4}')
    assert accepts({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "1")


def test_one_of_discriminator_and_required_only_branches():
    tagged = {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
            {"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "string"}}, "required": ["kind"]},
        ]
    }
    assert accepts(tagged, '{"kind":"a","x":1}') and not accepts(tagged, '{"kind":"a","y":"s"}')
    either = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "oneOf": [{"required": ["a"]}, {"required": ["b"]}]}
    assert accepts(either, '{"a":1}') and accepts(either, '{"b":1}') and not accepts(either, '{"a":1,"b":2}')


def test_one_of_branches_without_type_count_only_the_types_they_generate():
    # non-objects satisfy both branches, but only objects are generated and those are exclusive
    tagged = {"oneOf": [{"properties": {"kind": {"const": "a"}}, "required": ["kind"]},
                        {"properties": {"kind": {"const": "b"}}, "required": ["kind"]}]}
    assert accepts(tagged, '{"kind":"a"}') and accepts(tagged, '{"kind":"b"}') and not accepts(tagged, '"a"')
    assert_samples_valid(tagged)
    # a string generated by the second branch would satisfy the first (no type: any string)
    assert refusal({"oneOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]}, {"type": "string"}]}).startswith("oneOf")
    # the first branch's anyOf may still generate strings: its types are not narrowed
    nested = {"oneOf": [{"properties": {"a": {"type": "integer"}}, "anyOf": [{"minLength": 2}, {"required": ["a"]}]}, {"type": "string"}]}
    assert refusal(nested).startswith("oneOf")


def test_one_of_that_cannot_be_proven_exclusive_is_refused():
    message = refusal({"oneOf": [{"type": "integer"}, {"minimum": 2}]})
    assert message.startswith("oneOf at #/oneOf")


def test_not_of_types():
    schema = {"type": ["string", "null"], "not": {"type": "null"}}
    assert accepts(schema, '"a"') and not accepts(schema, "null")


def test_refs_defs_anchors_and_recursion():
    schema = {"$defs": {"pos": {"$anchor": "pos", "type": "integer", "minimum": 1}}, "type": "array", "items": {"$ref": "#pos"}}
    assert accepts(schema, "[1,2]") and not accepts(schema, "[0]")
    tree = {
        "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}},
        "$ref": "#/$defs/node",
    }
    kind, source = json_schema_to_grammar(tree)
    assert kind == "lark"
    assert lark_accepts(source, '{"v":1,"kids":[{"v":2},{"v":3,"kids":[]}]}')
    assert not lark_accepts(source, '{"v":1,"kids":[{"w":2}]}')
    assert_samples_valid(tree)


def test_unconstrained_values_need_the_cfg():
    kind, source = json_schema_to_grammar({})
    assert kind == "lark" and lark_accepts(source, '{"a":[1,{"b":null}],"c":"x"}')
    assert_samples_valid({"type": "object", "properties": {"meta": {}}, "required": ["meta"]})


def test_whitespace_pattern_everywhere_inside_containers():
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}, "required": ["a"]}
    assert accepts(schema, '{ "a" : [ 1 , 2 ] }', whitespace_pattern="[ ]?")
    assert not accepts(schema, '{ "a" : [ 1 , 2 ] }')
    assert "whitespace" in refusal(schema, whitespace_pattern="[ x]*")


def test_pydantic_models_are_accepted():
    pydantic = pytest.importorskip("pydantic")

    class Point(pydantic.BaseModel):
        x: int
        label: str = "p"

    assert accepts(Point, '{"x":1,"label":"a"}') and accepts(Point, '{"x":1}')


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema, words",
    [
        ({"type": "array", "contains": {"type": "integer"}}, ["contains", "#/contains"]),
        ({"properties": {"a": {"type": "integer", "multipleOf": 3}}}, ["multipleOf", "#/properties/a/multipleOf"]),
        ({"type": "object", "unevaluatedProperties": False}, ["unevaluatedProperties"]),
        ({"type": "array", "uniqueItems": True}, ["uniqueItems"]),
        ({"type": "string", "not": {"pattern": "^a"}}, ["not", "#/not"]),
    ],
)
def test_unsupported_keywords_name_keyword_and_path(schema, words):
    message = refusal(schema)
    for word in words:
        assert word in message


def test_keywords_irrelevant_to_the_generated_type_are_fine():
    assert accepts({"type": "string", "uniqueItems": True, "contains": {}}, '"x"')


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "maximum": 4},
        {"type": "array", "minItems": 3, "maxItems": 2},
        {"type": "string", "minLength": 3, "maxLength": 2},
        {"enum": []},
        False,
        {"type": "object", "properties": {"a": False}, "required": ["a"]},
        {"allOf": [{"type": "string"}, {"type": "integer"}]},
    ],
)
def test_unsatisfiable_schemas_are_errors(schema):
    assert "unsatisfiable" in refusal(schema)


@pytest.mark.parametrize("schema", [{"type": "strung"}, {"minLength": -1}, {"required": "a"}, "{not json", 3])
def test_malformed_schemas_are_errors(schema):
    message = refusal(schema)
    assert "malformed" in message or "JSON" in message


def test_remote_refs_are_refused():
    assert "cannot be resolved" in refusal({"$ref": "https://example.com/schema.json"})


def test_ir_and_regex_agree_on_samples():
    schema = {"type": "object", "properties": {"n": {"type": "number", "maximum": 3}, "s": {"enum": ["x", "y"]}}}
    grammar = json_schema_to_ir(schema)
    rx = regex_of(schema)
    rng = random.Random(1)
    for _ in range(50):
        assert rx.fullmatch(soundness.sample_ir(grammar, rng))


def test_integer_multiple_of_divisors_of_1000():
    rx = regex_of({"type": "integer", "multipleOf": 25})
    assert all((rx.fullmatch(str(n)) is not None) == (n % 25 == 0) for n in range(-600, 600))
    assert "multipleOf" in refusal({"type": "integer", "multipleOf": 7})
    assert "multipleOf" in refusal({"type": "number", "multipleOf": 0.01})


def test_dependencies_and_not_required_are_rewritten_exactly():
    props = {"a": {"type": "integer"}, "b": {"type": "integer"}}
    dep = {"type": "object", "properties": props, "dependentRequired": {"a": ["b"]}}
    assert accepts(dep, '{"a":1,"b":2}') and accepts(dep, '{"b":2}') and not accepts(dep, '{"a":1}')
    old = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "properties": props, "dependencies": {"a": {"required": ["b"]}}}
    assert accepts(old, "{}") and not accepts(old, '{"a":1}')
    neg = {"type": "object", "properties": props, "not": {"required": ["a"]}}
    assert accepts(neg, '{"b":1}') and not accepts(neg, '{"a":1}')


def test_pattern_property_prefixes_leave_named_and_other_keys_exact():
    schema = {
        "type": "object",
        "properties": {"x-id": {"minimum": 0}},
        "patternProperties": {"^x-": {"type": "integer"}},
        "additionalProperties": {"type": "boolean"},
    }
    assert accepts(schema, '{"x-id":0,"x-n":-1,"y":true}')
    assert not accepts(schema, '{"x-id":-1}') and not accepts(schema, '{"x-id":0.5}')
    assert not accepts(schema, '{"x-n":true}') and not accepts(schema, '{"y":1}')
    assert_samples_valid(schema)


def test_property_names_enumerated_or_unconstrained():
    schema = {"type": "object", "propertyNames": {"enum": ["a", "b"]}, "additionalProperties": {"type": "integer"}}
    assert accepts(schema, '{"a":1,"b":2}') and not accepts(schema, '{"c":1}')
    assert accepts({"type": "object", "propertyNames": {"type": "string"}, "additionalProperties": {"type": "null"}}, '{"k":null}')


def test_if_then_else_is_split_on_the_condition():
    schema = {
        "type": "object",
        "properties": {"kind": {"enum": ["a", "b"]}, "x": {"type": "integer"}, "y": {"type": "string"}},
        "required": ["kind"],
        "if": {"properties": {"kind": {"const": "a"}}},
        "then": {"required": ["x"]},
        "else": {"required": ["y"]},
    }
    assert accepts(schema, '{"kind":"a","x":1}') and accepts(schema, '{"kind":"b","y":""}')
    assert not accepts(schema, '{"kind":"a","y":""}') and not accepts(schema, '{"kind":"b","x":1}')
    assert accepts({"type": ["string", "integer"], "if": {"type": "string"}, "then": {"minLength": 2}}, "7")
