"""GrammarCompiler dispatch (regex, lark, JSON schema via grammar/json_schema.py), bitmask
helpers, and the typed regexes behind gen_int & co."""

import json
import random
import re

import numpy as np
import pytest

from lmlang.grammar import (
    BOOL_REGEX,
    FLOAT_REGEX,
    INT_REGEX,
    STRING_REGEX,
    GrammarCompiler,
    GrammarError,
    allocate_bitmask,
    bitmask_to_bool,
)
from lmlang.grammar.typed import TYPED


@pytest.fixture(scope="module")
def compiler(info):
    return GrammarCompiler(info)


def test_json_schema_generations_are_valid_instances(info, gen, compiler):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    compiled = compiler.compile_json_schema(schema)
    assert compiled.kind == "json_schema" and compiler.compile("json_schema", json.dumps(schema)) is compiled
    done = 0
    for seed in range(6):
        m = compiled.matcher()
        text, _, terminated = gen.random_generation(m, info, random.Random(seed), max_tokens=80, stop_bias=0.9)
        if terminated:
            value = json.loads(text)
            assert list(value) == ["name", "age"] and isinstance(value["age"], int) and len(value["name"]) <= 8
            done += 1
    assert done >= 2


def test_recursive_schema_compiles_through_lark(info, compiler):
    schema = {
        "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}, "additionalProperties": False}},
        "$ref": "#/$defs/node",
    }
    m = compiler.compile_json_schema(schema).matcher()
    assert m.accept_text('{"next":{"next":{}}}') and m.can_terminate()


def test_invalid_schema_text_is_a_grammar_error(compiler):
    with pytest.raises(GrammarError, match="not valid JSON"):
        compiler.compile_json_schema("{not json")


@pytest.mark.parametrize("name", sorted(TYPED))
def test_typed_regexes_generate_parseable_values(info, gen, compiler, name):
    regex, parse = TYPED[name]
    compiled = compiler.compile_regex(regex)
    for seed in range(5):
        m = compiled.matcher()
        text, _, terminated = gen.random_generation(m, info, random.Random(seed), max_tokens=20, stop_bias=0.4)
        if terminated:
            parse(text.decode("utf-8"))


def test_typed_regex_choices():
    assert re.fullmatch(INT_REGEX, "-12") and not re.fullmatch(INT_REGEX, "012")
    assert re.fullmatch(FLOAT_REGEX, "-0.5e10") and not re.fullmatch(FLOAT_REGEX, ".5")
    assert re.fullmatch(BOOL_REGEX, "true") and not re.fullmatch(BOOL_REGEX, "True")
    text = json.dumps('say "hi"\n\tok \u00e9')
    assert re.fullmatch(STRING_REGEX, text) and TYPED["string"][1](text) == 'say "hi"\n\tok \u00e9'


def test_bitmask_helpers():
    buf = allocate_bitmask(2, 70)
    assert buf.shape == (2, 3) and buf.dtype == np.int32 and (buf == -1).all()
    buf[1] = 0
    buf[1, 2] = 1 << 5  # token 69
    bits = bitmask_to_bool(buf, 1, 70)
    assert bits.shape == (70,) and bits[69] and bits.sum() == 1
    with pytest.raises(ValueError, match="int32"):
        bitmask_to_bool(np.zeros((1, 3), dtype=np.int64), 0, 70)
    with pytest.raises(ValueError, match="backend"):
        allocate_bitmask(1, 10, backend="jax")
