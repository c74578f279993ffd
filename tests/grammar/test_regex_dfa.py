"""Regex -> byte DFA: agreement with Python's `re`, UTF-8, clear errors, bounded compile time."""

import random
import re
import time

import pytest
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
]
ALPHABET = "abcdefhlorwxyz019-+.eE@\"\\\n àéöÖ你好"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dfa_agrees_with_re_fullmatch(pattern):
    dfa = regex_to_dfa(pattern)
    compiled = re.compile(pattern.strip("^$"), re.ASCII)  # \d \w \s are ASCII classes here
    rng = random.Random(pattern)
    samples = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8))) for _ in range(1500)]
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


@pytest.mark.parametrize("pattern", [r"(a|b)*a(a|b){24}", r"(.*a){3}.{30}", r"(x{500}){500}"])
def test_pathological_regexes_fail_fast(pattern):
    start = time.monotonic()
    with pytest.raises(GrammarError, match="too (complex|large)"):
        regex_to_dfa(pattern, CompileOptions(max_dfa_states=5000, timeout_s=2.0))
    assert time.monotonic() - start < 4.0


def test_compile_timeout_is_enforced():
    start = time.monotonic()
    with pytest.raises(GrammarError, match="time budget"):
        regex_to_dfa(r"[^\"]{0,3000}z", CompileOptions(max_dfa_states=10**6, timeout_s=0.3))
    assert time.monotonic() - start < 3.0
