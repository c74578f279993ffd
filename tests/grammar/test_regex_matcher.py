"""Regex matchers: masks exact against a brute-force reference, generations match, API contracts."""

import random
import re

import numpy as np
import pytest
import regex as regex_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlang.grammar import GrammarCompiler, allocate_bitmask, bitmask_to_bool, compile_regex

# ASCII-only patterns (their classes treat every non-ASCII character alike; see _completable)
PATTERNS = [
    r"\d{1,6}",
    r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?",
    r'\{"name": "[a-z ]{1,12}", "age": \d{1,3}\}',
    r"(the|a) [a-z]+ (is|was) (good|bad)\.",
    r'"([^"\\]|\\.)*"',
    r"[^\n]{0,20}\n",
    r"(yes|no)",
    r'"[a-z ]{0,200}"',  # counted repetition: masks come from the DFA's horizon view
]


def _completable(pattern: str, data: bytes) -> bool:
    """Reference: can `data` be extended to a full match? (regex partial matching on text; a
    trailing incomplete UTF-8 sequence is completed with a representative character)"""
    candidates = [data]
    for cut in range(1, 4):
        lead = data[-cut] if len(data) >= cut else 0
        if lead >= 0xC0:
            need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            if need > cut:
                candidates = [data + bytes([c]) * (need - cut) for c in (0x80, 0x90, 0xA0, 0xBF)]
            break
    for cand in candidates:
        try:
            text = cand.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if regex_module.fullmatch(pattern, text, flags=regex_module.ASCII, partial=True):
            return True
    return False


@pytest.mark.parametrize("pattern", PATTERNS)
def test_mask_is_exact_at_random_reachable_states(info, gen, pattern):
    compiled = compile_regex(pattern, info)
    rng = random.Random(pattern)
    for _ in range(3):
        m = compiled.matcher()
        prefix = b""
        for _ in range(rng.randint(0, 12)):
            allowed = gen.allowed_tokens(m, info.vocab_size)
            for t in range(info.vocab_size):
                data = info.token_bytes[t]
                if t in info.eos_token_ids:
                    expected = bool(regex_module.fullmatch(pattern, prefix.decode("utf-8", "replace"), flags=regex_module.ASCII))
                else:
                    expected = data is not None and _completable(pattern, prefix + data)
                assert allowed[t] == expected, (pattern, prefix, t, data)
            choices = [t for t in np.nonzero(allowed)[0].tolist() if t not in info.eos_token_ids]
            if not choices:
                break
            t = rng.choice(choices)
            assert m.accept(t)
            prefix += info.token_bytes[t]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pattern=st.sampled_from(PATTERNS + [r"[a-c]+(x|yy)?[0-9]{2}", r"(ab|cd)*e", r"é[ü-ÿ]{1,3}!"]), seed=st.integers(0, 2**16))
def test_generations_fullmatch_the_pattern(info, gen, pattern, seed):
    m = compile_regex(pattern, info).matcher()
    text, _, terminated = gen.random_generation(m, info, random.Random(seed), max_tokens=60)
    if terminated:
        assert re.fullmatch(pattern, text.decode("utf-8")), (pattern, text)
        assert m.is_done()


def test_eos_only_where_the_pattern_can_end(info, gen):
    m = compile_regex(r"ab(c|d)", info).matcher()
    eos = info.eos_token_ids[0]
    assert not m.can_terminate() and not gen.allowed_tokens(m, info.vocab_size)[eos]
    assert not m.accept(eos)
    assert m.accept_text("abd")
    assert m.can_terminate() and m.is_done()  # nothing can follow "abd"
    allowed = gen.allowed_tokens(m, info.vocab_size)
    assert allowed[eos] and allowed.sum() == 1
    assert m.accept(eos) and m.is_done() and not m.can_terminate()
    assert not m.accept(eos) and not m.accept_text("x")


def test_rejected_token_leaves_state_unchanged(info, raw_tokenizer):
    m = compile_regex(r"[0-9]+", info).matcher()
    letter = raw_tokenizer.token_to_id("a")
    assert not m.accept(letter)
    assert m.num_steps == 0
    assert not m.accept(info.vocab_size - 1)  # padding column beyond the tokenizer
    assert not m.accept(0)  # special token
    assert m.accept(raw_tokenizer.token_to_id("1")) and m.num_steps == 1


def test_rollback_and_fork(info, gen, raw_tokenizer):
    compiled = compile_regex(r"(abc|abd)e", info)
    m = compiled.matcher()
    ids = [raw_tokenizer.token_to_id(c) for c in "abd"]
    for t in ids:
        assert m.accept(t)
    before = gen.allowed_tokens(m, info.vocab_size)
    f = m.fork()
    assert f.accept(raw_tokenizer.token_to_id("e")) and f.can_terminate()
    assert not m.can_terminate() and (gen.allowed_tokens(m, info.vocab_size) == before).all()
    m.rollback(2)
    assert m.num_steps == 1 and m.accept(raw_tokenizer.token_to_id("b")) and m.accept(raw_tokenizer.token_to_id("c"))
    assert f.accept(info.eos_token_ids[0])
    f.rollback(1)
    assert f.can_terminate() and f.num_steps == 4 and f.accept(info.eos_token_ids[0])
    with pytest.raises(ValueError, match="cannot roll back 9"):
        m.rollback(9)


def test_forced_text(info):
    m = compile_regex(r'\{"name": "[a-z]+", "id": (1|2)\}', info).matcher()
    assert m.forced_text() == '{"name": "'
    assert m.accept_text('{"name": "bo')
    assert m.forced_text() == ""
    assert m.accept_text('b"')
    assert m.forced_text() == ', "id": '
    assert compile_regex(r"\d*", info).matcher().forced_text() == ""
    assert compile_regex("é!", info).matcher().forced_text() == "é!"


def test_fill_bitmask_into_torch_rows_and_padding(info):
    torch = pytest.importorskip("torch")
    buf = allocate_bitmask(3, info.vocab_size, backend="torch")
    assert buf.dtype == torch.int32 and tuple(buf.shape) == (3, info.num_words) and (buf == -1).all()
    m = compile_regex(r"[a-z ]+", info).matcher()
    m.fill_bitmask(buf, 1)
    allowed = bitmask_to_bool(buf, 1, info.vocab_size)
    assert not allowed[1024:].any()  # logits columns beyond the tokenizer are never allowed
    assert (buf[0] == -1).all() and (buf[2] == -1).all()
    np_buf = allocate_bitmask(1, info.vocab_size)
    m.fill_bitmask(np_buf, 0)
    assert (np_buf[0] == buf[1].numpy()).all()


def test_compiler_caches_and_evicts(info):
    compiler = GrammarCompiler(info, cache_size=2)
    a = compiler.compile_regex(r"\d+")
    assert compiler.compile("regex", r"\d+") is a
    compiler.compile_regex("x")
    compiler.compile_regex("y")
    assert compiler.compile_regex(r"\d+") is not a
    with pytest.raises(ValueError, match="unknown constraint kind"):
        compiler.compile("ebnf", "x")


def test_steady_state_mask_is_cached(info, gen):
    compiled = compile_regex(r'"[^"]*"', info)
    m = compiled.matcher()
    m.accept_text('"ab')
    first = gen.allowed_tokens(m, info.vocab_size)
    cached = compiled.num_cached_states
    m.accept_text("cd")
    assert (gen.allowed_tokens(m, info.vocab_size) == first).all()
    assert compiled.num_cached_states == cached


def test_tokens_with_identical_bytes_and_special_tokens():
    from lmlang.grammar import TokenizerInfo

    info = TokenizerInfo([b"a", b"ab", b"a", None, b"b", b"ba"], eos_token_ids=[3], vocab_size=40)
    m = compile_regex("ab?", info).matcher()
    buf = allocate_bitmask(1, info.vocab_size)
    m.fill_bitmask(buf, 0)
    assert np.nonzero(bitmask_to_bool(buf, 0, info.vocab_size))[0].tolist() == [0, 1, 2]
    assert m.accept(2)
    m.fill_bitmask(buf, 0)
    assert np.nonzero(bitmask_to_bool(buf, 0, info.vocab_size))[0].tolist() == [3, 4]
