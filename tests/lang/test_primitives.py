"""Primitives fail fast at construction; the one sampling table; choice methods; chat markers."""

import dataclasses
import inspect
import json

import pytest

import lmlang as ll
from lmlang.chat import ChatTemplate, render_with_jinja
from lmlang.choices import CHOICE_METHODS
from lmlang.ir import Gen, RoleBegin, RoleEnd, Select, Seq, Text, node_from_dict, node_to_dict
from lmlang.runtime.protocol import SamplingParams
from lmlang.sampling import GEN_TO_SAMPLING, merge


# ---- errors at construction ---------------------------------------------------------------


def test_unknown_keyword_to_gen_fails_at_construction():
    with pytest.raises(TypeError, match="max_token"):
        ll.gen("x", max_token=5)


def test_select_with_no_choices_fails():
    with pytest.raises(ValueError, match="non-empty list of choices"):
        ll.select("x", choices=[])
    with pytest.raises(ValueError, match="non-empty list of choices"):
        ll.select("x")
    with pytest.raises(ValueError, match="non-empty strings"):
        ll.select("x", choices=["a", ""])


def test_invalid_regex_fails():
    with pytest.raises(ValueError, match="invalid regex"):
        ll.gen("x", regex="[a-")


def test_bad_values_fail_naming_the_gen_keyword():
    with pytest.raises(ValueError, match="max_tokens must be an int >= 0"):
        ll.gen("x", max_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        ll.gen("x", temperature=-0.5)
    with pytest.raises(ValueError, match="only one of regex / json_schema / grammar"):
        ll.gen("x", regex="a+", grammar='start: "a"')
    with pytest.raises(ValueError, match="json_schema"):
        ll.gen("x", json_schema="{not json")
    with pytest.raises(ValueError, match="unknown choice method"):
        ll.select("x", choices=["a"], method="loudest")
    with pytest.raises(TypeError, match="takes no 'regex'"):
        ll.gen_int("x", regex="[0-9]")


def test_unknown_run_keyword_fails_before_running():
    @ll.function
    def prog(s, q):
        s += q

    with pytest.raises(TypeError, match="temprature"):
        prog.run(q="x", temprature=0)


# ---- the sampling table -----------------------------------------------------------------------


def test_gen_keywords_are_exactly_the_table_plus_request_options():
    params = set(inspect.signature(ll.gen).parameters)
    assert params == set(GEN_TO_SAMPLING) | {"name", "return_logprob", "top_logprobs_num", "choices"}
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    assert set(GEN_TO_SAMPLING.values()) <= fields


def test_none_inherits_and_later_layers_win():
    node = ll.gen("x", max_tokens=5, stop=["\n", "."])
    assert node.overrides == {"max_new_tokens": 5, "stop": ("\n", ".")}
    run_defaults = {"temperature": 0.0, "max_new_tokens": 64}
    params = merge(SamplingParams(), run_defaults, node.overrides)
    assert params.max_new_tokens == 5 and params.temperature == 0.0 and params.stop == ["\n", "."]
    assert params.top_p == SamplingParams().top_p
    assert merge(SamplingParams(), run_defaults, ll.gen("y").overrides).max_new_tokens == 64


def test_json_schema_accepts_dict_string_and_pydantic():
    import pydantic

    class Person(pydantic.BaseModel):
        name: str

    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    assert json.loads(ll.gen("a", json_schema=schema).overrides["json_schema"]) == schema
    assert json.loads(ll.gen("b", json_schema=json.dumps(schema)).overrides["json_schema"]) == schema
    assert json.loads(ll.gen("c", json_schema=Person).overrides["json_schema"])["properties"]["name"]["type"] == "string"


def test_gen_with_choices_is_a_select_and_roles_wrap():
    assert ll.gen("x", choices=["a", "b"]) == Select("x", ("a", "b"))
    expr = ll.user("Hi " + ll.gen("g"))
    assert isinstance(expr, Seq)
    assert expr.items == (RoleBegin("user"), Text("Hi "), Gen("g"), RoleEnd("user"))


def test_nodes_round_trip_through_dicts():
    for node in [Text("a"), ll.gen("x", max_tokens=3, stop=["\n"], regex="[a-z]+"), ll.gen_int("n"),
                 ll.select("s", choices=["a", "b"], method=ll.greedy_token_selection), RoleBegin("user")]:
        assert node_from_dict(json.loads(json.dumps(node_to_dict(node)))) == node


# ---- choice methods ---------------------------------------------------------------------------


def test_choice_methods_decide_as_documented():
    logprobs = [[-1.0, -5.0], [-2.0], [-1.0, -0.5]]
    assert CHOICE_METHODS["token_length_normalized"].decide(logprobs).index == 2  # means -3, -2, -0.75
    greedy = CHOICE_METHODS["greedy_token_selection"].decide(logprobs)
    assert greedy.index == 2  # first tokens tie at -1.0 (0 and 2); second token -5.0 vs -0.5
    unconditional = [[-1.0, -1.0], [-4.0], [-1.0, -0.1]]
    decision = CHOICE_METHODS["unconditional_likelihood_normalized"].decide(logprobs, unconditional)
    assert decision.scores == pytest.approx([-2.0, 2.0, -0.2]) and decision.index == 1


# ---- chat templates -----------------------------------------------------------------------------

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
)
LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
    " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
)
DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
)


@pytest.mark.parametrize("source", [CHATML, LLAMA3_LIKE, DEFAULT_SYSTEM], ids=["chatml", "llama3", "default-system"])
@pytest.mark.parametrize("with_system", [True, False])
def test_markers_rebuild_the_template_rendering(source, with_system):
    render = render_with_jinja(source, {"bos_token": "<s>", "eos_token": "</s>"})
    template = ChatTemplate(render)
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
    if with_system:
        messages.insert(0, {"role": "system", "content": "Be brief."})
    text = ""
    for i, m in enumerate(messages):
        text += template.begin(m["role"], first=i == 0) + m["content"] + template.end(m["role"])
    assert text == render(messages)
