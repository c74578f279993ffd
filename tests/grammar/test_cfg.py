"""Lark CFG constraints: generations parse with lark, masks agree with byte stepping, no dead
ends, recursion, %ignore, forced text, rollback/fork, clear errors."""

import random

import numpy as np
import pytest
from lark import Lark

from lmlang.grammar import GrammarError, compile_grammar, validate_grammar

ARITHMETIC = r"""
?start: expr
?expr: expr "+" term | expr "-" term | term
?term: term "*" factor | term "/" factor | factor
?factor: NUMBER | "(" expr ")" | "-" factor
NUMBER: /[0-9]+(\.[0-9]+)?/
%ignore " "
"""

SQL = r"""
start: "SELECT"i select_list "FROM"i NAME where? order? limit? ";"
select_list: "*" | column ("," column)*
column: NAME | NAME "." NAME | FUNC "(" (NAME | "*") ")"
FUNC.2: "COUNT"i | "SUM"i | "MAX"i
where: "WHERE"i condition (("AND"i | "OR"i) condition)*
condition: column OP value
OP: "=" | "!=" | "<" | ">" | "<=" | ">="
value: NUMBER | STRING | NAME
order: "ORDER"i "BY"i column ("ASC"i | "DESC"i)?
limit: "LIMIT"i NUMBER
NAME: /[a-z_][a-z0-9_]*/
NUMBER: /[0-9]+/
STRING: /'[^']*'/
%ignore " "
"""

JSON = r"""
?start: value
?value: object | array | ESCAPED_STRING | SIGNED_NUMBER | "true" | "false" | "null"
array: "[" [value ("," value)*] "]"
object: "{" [pair ("," pair)*] "}"
pair: ESCAPED_STRING ":" value
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
"""

BOUNDED = r"""
start: "[" item ("," item)* "]"
item: /"[a-z ]{0,60}"/ | /[0-9]{1,40}/
"""

GRAMMARS = {"arithmetic": ARITHMETIC, "sql": SQL, "json": JSON, "bounded": BOUNDED}


@pytest.fixture(scope="module")
def compiled(info):
    return {name: compile_grammar(src, info) for name, src in GRAMMARS.items()}


@pytest.mark.parametrize("name", list(GRAMMARS))
def test_generations_parse_with_lark(info, gen, compiled, name):
    parser = Lark(GRAMMARS[name], parser="earley", lexer="dynamic")
    finished = 0
    for seed in range(12):
        m = compiled[name].matcher()
        text, _, terminated = gen.random_generation(m, info, random.Random(seed), max_tokens=150, stop_bias=0.5)
        if terminated:
            parser.parse(text.decode("utf-8"))
            finished += 1
    assert finished >= 3


@pytest.mark.parametrize("name", list(GRAMMARS))
def test_mask_agrees_with_stepping_and_has_no_dead_ends(info, gen, compiled, name):
    cg = compiled[name]
    rng = random.Random(name)
    for _ in range(3):
        m = cg.matcher()
        for _ in range(rng.randint(1, 15)):
            allowed = gen.allowed_tokens(m, info.vocab_size)
            state = (m._node, m._lexer, m._state)
            for t in range(info.vocab_size):
                data = info.token_bytes[t]
                if t in info.eos_token_ids:
                    assert allowed[t] == m.can_terminate()
                    continue
                nxt = cg.step_bytes(*state, data) if data is not None else None
                assert allowed[t] == (nxt is not None), (name, t, data)
                if nxt is not None and rng.random() < 0.05:  # a sampled allowed token is no dead end
                    f = m.fork()
                    assert f.accept(t)
                    assert f.can_terminate() or gen.allowed_tokens(f, info.vocab_size).any()
            choices = [t for t in np.nonzero(allowed)[0].tolist() if t not in info.eos_token_ids]
            if not choices:
                break
            assert m.accept(rng.choice(choices))


def _token_id(raw_tokenizer, text: str) -> int:
    ids = raw_tokenizer.encode(text).ids
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_arithmetic_masks_by_hand(info, raw_tokenizer, gen, compiled):
    m = compiled["arithmetic"].matcher()

    def tid(text):
        return _token_id(raw_tokenizer, text)

    allowed = gen.allowed_tokens(m, info.vocab_size)
    assert allowed[tid("(")] and allowed[tid("7")] and allowed[tid("-")] and not allowed[tid(")")] and not allowed[tid("+")]
    assert m.accept_text("(1 +")
    allowed = gen.allowed_tokens(m, info.vocab_size)
    assert allowed[tid("2")] and allowed[tid(" ")] and not allowed[tid(")")] and not allowed[tid("*")]
    assert not m.can_terminate()
    assert m.accept_text(" 2)")
    assert m.can_terminate() and gen.allowed_tokens(m, info.vocab_size)[info.eos_token_ids[0]]


def test_deep_recursion(info, compiled):
    m = compiled["json"].matcher()
    assert m.accept_text("[" * 60 + '{"a": ' * 20)
    assert m.accept_text("1" + "}" * 20 + "]" * 60)
    assert m.can_terminate()
    assert not m.accept_text("]")


def test_forced_text_in_a_grammar(info):
    cg = compile_grammar(r'start: "SELECT " NAME " FROM users;"' + "\nNAME: /[a-z]+/", info)
    m = cg.matcher()
    assert m.forced_text() == "SELECT "
    assert m.accept_text("SELECT nam")
    assert m.forced_text() == ""
    assert m.accept_text("e ")
    assert m.forced_text() == "FROM users;"
    assert m.accept_text("FROM users;") and m.can_terminate() and m.is_done()


def test_keyword_and_name_ambiguity(info, compiled):
    m = compiled["sql"].matcher()
    assert m.accept_text("select count(*) from t where count = 3 and x.y >= 'q' order by name desc limit 5;")
    assert m.can_terminate()
    m2 = compiled["sql"].matcher()
    assert m2.accept_text("SELECT a FROM b WHERE c<=1 ;")
    assert m2.can_terminate()


def test_rollback_and_fork(info, raw_tokenizer, compiled):
    m = compiled["arithmetic"].matcher()

    def tid(text):
        return _token_id(raw_tokenizer, text)

    for piece in ["1", "+", "2"]:
        assert m.accept(tid(piece))
    f = m.fork()
    assert f.accept(tid("*")) and not f.can_terminate()
    assert m.can_terminate()
    m.rollback(2)
    assert not m.can_terminate() or m.num_steps == 1
    assert m.accept(tid("*")) and m.accept(tid("3")) and m.can_terminate()
    assert f.accept(tid("4")) and f.can_terminate()


@pytest.mark.parametrize(
    "source, message",
    [
        ("start: foo", "invalid lark grammar"),
        ('start "a"', "invalid lark grammar"),
        ("start: A\nA: /(a)\\1/", "backreference"),
        ("start: A\nA: /(?<=x)a/", "lookbehind"),
        ("start: a\na: a \"x\"", "derives no finite string"),
        ('other: "x"', "no rule for the start symbol"),
    ],
)
def test_bad_grammars_raise_clear_errors(source, message):
    with pytest.raises(GrammarError, match=message):
        validate_grammar(source)


def test_lazy_terminal_is_shortest_match(info):
    cg = compile_grammar(r'start: (COMMENT | WORD)+' + '\nCOMMENT: /\\/\\*(.|\\n)*?\\*\\//\nWORD: /[a-z]+/', info)
    m = cg.matcher()
    assert m.accept_text("/* a */b/* c */")
    assert m.can_terminate()


def test_terminal_matching_empty_string_becomes_optional(info):
    cg = compile_grammar('start: "[" WS ITEMS WS "]"\nWS: /[ ]*/\nITEMS: /(x,)*/', info)
    for text in ["[]", "[ ]", "[x,]", "[  x,x, ]"]:
        m = cg.matcher()
        assert m.accept_text(text) and m.can_terminate(), text
    assert not cg.matcher().accept_text("[x]")
