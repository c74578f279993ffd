"""Constrained decoding through the engine: valid outputs, jump-forward, clear errors."""

import json
import re

import jsonschema
import pytest

from lmlang.runtime import Engine

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}

ARITH = r"""
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"""


@pytest.fixture(scope="module")
def engine(tiny_ckpt, kv_accounting):
    with Engine(tiny_ckpt("llama")) as e:
        yield e
        kv_accounting(e)


def test_regex_outputs_fullmatch(engine):
    pattern = r"(yes|no), [0-9]{2,4}-[a-z]{3}"
    outs = engine.generate(["Q1:", "Q2:", "Q3:", "Q4:"], {"regex": pattern, "temperature": 1.0, "max_new_tokens": 40})
    for o in outs:
        assert re.fullmatch(pattern, o["text"]), o["text"]
        assert o["meta_info"]["finish_reason"]["type"] == "stop"


def test_json_schema_outputs_validate_and_jump_forward_saves_passes(engine):
    before = engine.stats()
    outs = engine.generate(["A:", "B:", "C:"], {"json_schema": json.dumps(SCHEMA), "temperature": 1.0,
                                                "max_new_tokens": 200, "seed": 3})
    after = engine.stats()
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    for o in outs:
        jsonschema.validate(json.loads(o["text"]), SCHEMA)
    # the fixed keys are inserted by jump-forward, without a forward pass per token
    assert after["forward_passes"] - before["forward_passes"] < tokens


def test_lark_grammar_outputs_parse(engine):
    lark = pytest.importorskip("lark")
    parser = lark.Lark(ARITH)
    outs = engine.generate(["x", "y"], {"grammar": ARITH, "temperature": 1.0, "max_new_tokens": 64, "seed": 1})
    for o in outs:
        if o["meta_info"]["finish_reason"]["type"] == "stop":
            parser.parse(o["text"])


@pytest.mark.parametrize("params,word", [
    ({"regex": "(a"}, "regex"),
    ({"regex": r"(a)\1"}, "backreference"),
    ({"json_schema": json.dumps({"type": "object", "minProperties": 2})}, "minProperties"),
    ({"json_schema": "{not json"}, "JSON"),
    ({"grammar": "start: (("}, "grammar"),
    ({"regex": "a", "json_schema": "{}"}, "only one"),
])
def test_bad_constraints_are_value_errors_and_engine_keeps_serving(engine, params, word):
    with pytest.raises(ValueError, match=re.compile(word, re.I)):
        engine.generate("x", {**params, "max_new_tokens": 4})
    assert engine.generate("x", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] >= 1


def test_max_new_tokens_cuts_constrained_output(engine):
    out = engine.generate("x", {"regex": "[a-z]{50}", "max_new_tokens": 5, "temperature": 1.0})
    assert out["meta_info"]["finish_reason"]["type"] == "length"
    assert re.fullmatch("[a-z]*", out["text"])
