"""Regex -> byte DFA: agreement with Python's `re`, UTF-8, clear errors, bounded compile time."""

import random
import re
import time

import pytest
import regex as regex_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlang.grammar import CompileOptions, GrammarError, validate_regex
from lmlang.grammar.regex_dfa import regex_to_dfa
from lmlang.grammar.utf8 import utf8_sequences

PATTERNS = [
    r"\d+",
    r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?",
    r"[a-z]{2,4}(-[a-z]+)?",
    r"(?i)hello|wörld",
    r'"([^"\\]|\\.)*"',
    r"(ab|a)(bc|c)*",
    r"[^\n]*\n",
    r"(?s).{2,3}",
    r"\w+@\w+\.(com|org)",
    r"[\u00e0-\u00ff\u4e00-\u4e10]+",
    r"x{0}y?",
    r"^abc$",
    r"[a-c ]{1,12}",  # counted repetitions above the unroll limit keep a counter
    r"(ab|c){2,12}d",
    r"(x{2,10}y){3,15}",
    r"(a?){0,50}b",
    r"(ab){10,}",
]
ALPHABET = "abcdefhlorwxyz019-+.eE@\"\\\n àéöÖ你好"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dfa_agrees_with_re_fullmatch(pattern):
    dfa = regex_to_dfa(pattern)
    compiled = re.compile(pattern.strip("^$"), re.ASCII)  # \d \w \s are ASCII classes here
    rng = random.Random(pattern)
    samples = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8))) for _ in range(1500)]
    samples += ["ab" * 10, "ab" * 40, "abc" * 4, "x" * 10 + "y", ("xxy") * 15 + "d", "a" * 49 + "b"]
    samples += ["123", "-0.5e+3", "ab-cd", "HELLO", "wörld", '"a\\"b"', "abcc", "x\n", "a\nb", "a@b.com", "éà你", "y", "abc"]
    for s in samples:
        assert dfa.matches(s.encode()) == bool(compiled.fullmatch(s)), (pattern, s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_dfa_accepts_strings_generated_from_the_regex(data):
    pattern = data.draw(st.sampled_from(PATTERNS[:9]))
    text = data.draw(st.from_regex(re.compile(pattern.strip("^$"), re.ASCII), fullmatch=True))
    assert regex_to_dfa(pattern).matches(text.encode("utf-8"))


def test_utf8_sequences_cover_exactly_the_range():
    rng = random.Random(0)
    for _ in range(200):
        lo = rng.randint(0, 0x10FFFF)
        hi = min(0x10FFFF, lo + rng.choice([1, 100, 5000, 300000]))
        seqs = utf8_sequences(lo, hi)
        for _ in range(30):
            cp = rng.randint(max(0, lo - 50), min(0x10FFFF, hi + 50))
            if 0xD800 <= cp <= 0xDFFF:
                continue
            enc = chr(cp).encode()
            hit = any(len(s) == len(enc) and all(a <= b <= c for (a, c), b in zip(s, enc)) for s in seqs)
            assert hit == (lo <= cp <= hi)


def test_multibyte_characters_split_across_bytes():
    dfa = regex_to_dfa("é+")
    first, second = "é".encode()
    s = dfa.run(bytes([first]))
    assert s >= 0 and not dfa.accept[s]
    assert set(dfa.live_bytes(s).tolist()) == {second}
    assert dfa.run(b"e") == -1


@pytest.mark.parametrize(
    "pattern, message",
    [
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        (r"a(?=b)", "lookahead"),
        (r"a(?!b)", "lookahead"),
        (r"(?<=a)b", "lookbehind"),
        (r"\bword", r"word boundary \\b"),
        (r"a\Z", r"\\Z"),
        (r"a^b", "anchor"),
        (r"a$b", "anchor"),
        (r"(unclosed", "invalid regex"),
        (r"\p{L}", "invalid regex"),
        (r"[^\x00-\U0010ffff]", "matches no string"),
    ],
)
def test_unsupported_constructs_raise_clear_errors(pattern, message):
    with pytest.raises(GrammarError, match=message):
        validate_regex(pattern)
    assert issubclass(GrammarError, ValueError)


@pytest.mark.parametrize("pattern", [r"(a|b)*a(a|b){24}", r"(.*a){3}.{30}", r"[^\"]{0,2000}"])
def test_pathological_regexes_compile_fast_because_dfas_are_lazy(pattern):
    start = time.monotonic()
    dfa = regex_to_dfa(pattern, CompileOptions(timeout_s=5.0))
    assert time.monotonic() - start < 5.0 and dfa.num_states < 10
    rng = random.Random(0)
    for _ in range(50):
        s = "".join(rng.choice("ab\"") for _ in range(rng.randint(0, 60)))
        assert dfa.matches(s.encode()) == bool(re.fullmatch(pattern, s, re.DOTALL if "(.*" not in pattern else 0))


def test_state_budget_is_a_clear_error():
    dfa = regex_to_dfa(r"(a|b)*a(a|b){14}", CompileOptions(max_dfa_states=200))
    rng = random.Random(1)
    with pytest.raises(GrammarError, match="exceeds 200 states"):
        dfa.run(bytes(rng.choice(b"ab") for _ in range(400)))


def test_nfa_budget_and_timeout_are_enforced(monkeypatch):
    from lmlang.grammar import regex_dfa

    monkeypatch.setattr(regex_dfa, "MAX_NFA_STATES", 1000)
    start = time.monotonic()
    with pytest.raises(GrammarError, match="too large"):
        regex_to_dfa(r"(((y{8}){8}){8}){4}", CompileOptions(timeout_s=2.0))
    with pytest.raises(GrammarError, match="time budget"):
        regex_to_dfa(r"[^\"]{0,4500}z", CompileOptions(timeout_s=0.0))
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize("pattern", [r"[a-c]{0,300}x", r"(ab|c){20,40}", r"((a|bc){3,30}x){12,14}", r"[ab]{50,}"])
def test_horizon_views_agree_with_the_dfa_for_short_inputs(pattern):
    dfa = regex_to_dfa(pattern)
    view = dfa.view(6)
    assert view is not dfa
    rng = random.Random(pattern)
    for _ in range(300):
        prefix = "".join(rng.choice("abcx") for _ in range(rng.randint(0, 400)))
        state = dfa.run(prefix.encode())
        if state < 0:
            continue
        v = dfa.to_view(state, view)
        for _ in range(10):
            suffix = "".join(rng.choice("abcx") for _ in range(rng.randint(0, 6))).encode()
            exact, seen = dfa.run(suffix, state), view.run(suffix, v)
            assert (exact >= 0) == (seen >= 0), (prefix, suffix)
            assert exact < 0 or dfa.accept[exact] == view.accept[seen], (prefix, suffix)
    assert view.num_states < 200  # far-from-bounds positions share view states


def _random_regexes():
    atoms = st.sampled_from(["a", "b", "c", "é", "[ab]", "[^a]", ".", "\\d", "(?:)"])

    def extend(children):
        pair = st.tuples(children, children)
        return st.one_of(
            pair.map(lambda p: p[0] + p[1]),
            pair.map(lambda p: f"(?:{p[0]}|{p[1]})"),
            children.map(lambda r: f"(?:{r})*"),
            children.map(lambda r: f"(?:{r})+"),
            children.map(lambda r: f"(?:{r})?"),
            st.tuples(children, st.integers(0, 12), st.integers(0, 12)).map(
                lambda t: f"(?:{t[0]}){{{min(t[1], t[2])},{max(t[1], t[2])}}}"
            ),
        )

    return st.recursive(atoms, extend, max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=_random_regexes(), seed=st.integers(0, 2**16))
def test_random_regexes_agree_with_re(pattern, seed):
    dfa = regex_to_dfa(pattern)
    # `regex` (re-compatible in V0 mode) because it takes a timeout: the backtracking reference
    # is exponential on some nested quantifiers, e.g. (?:(?:[^a]{0,5})+)* on "bbbbbbbbbbbba"
    compiled = regex_module.compile(pattern, regex_module.ASCII | regex_module.V0)
    rng = random.Random(seed)
    for _ in range(200):
        s = "".join(rng.choice("abcé1\n") for _ in range(rng.randint(0, 14)))
        try:
            expected = bool(compiled.fullmatch(s, timeout=0.5))
        except TimeoutError:
            continue
        assert dfa.matches(s.encode()) == expected, (pattern, s)
