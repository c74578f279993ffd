"""Trie walks (single, batched, whole-subtree skipping, Python tail) against brute force; liveness
classes; masks precomputed at compile time equal to masks computed on demand."""

import random

import numpy as np
import pytest

from lmlang.grammar import CompileOptions, compile_regex
from lmlang.grammar.bitmask import pack_bool_mask
from lmlang.grammar.regex_dfa import regex_to_dfa
from lmlang.grammar.token_trie import TokenTrie

PATTERNS = [
    r'"([^"\\]|\\.)*"',  # a self-looping string body: subtrees taken whole
    r'\{"a": "[a-z ]{0,30}", "b": [0-9]{1,3}\}',  # counted repetition (horizon view)
    r"(ab|ba)*c?[é-ü]+",  # multi-byte characters: long chains for the Python tail
    r"x{3}y|[xy]{2,5}",
]


def _vocab(seed: int, size: int = 600) -> list[bytes | None]:
    """Random tokens over a small alphabet (some long, some duplicated, some special)."""
    rng = random.Random(seed)
    alphabet = [b"a", b"b", b"c", b"x", b"y", b" ", b'"', b"\\", b"{", b"}", b"1", "é".encode(), "ü".encode(), "é".encode()[:1]]
    vocab: list[bytes | None] = [None, None]
    while len(vocab) < size:
        length = rng.choice([1, 1, 2, 3, 4, 6, 9, 20, 60])
        vocab.append(b"".join(rng.choice(alphabet) for _ in range(length)))
    vocab += vocab[10:20]  # tokens with identical bytes share a node
    return vocab


def _brute_mask(vocab, dfa, state: int) -> np.ndarray:
    allowed = np.array([b is not None and dfa.run(b, state) >= 0 for b in vocab])
    return pack_bool_mask(allowed, (len(vocab) + 31) // 32)


def _states(dfa, rng: random.Random, vocab, count: int) -> list[int]:
    """DFA states reached by random walks from the start (through random token bytes)."""
    out = {0}
    for _ in range(count):
        state = 0
        for _ in range(rng.randint(1, 8)):
            data = rng.choice([b for b in vocab if b])
            nxt = dfa.run(data, state)
            if nxt >= 0:
                state = nxt
                out.add(state)
    return sorted(out)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_walks_equal_brute_force(pattern):
    vocab = _vocab(len(pattern))
    trie = TokenTrie(vocab)
    dfa = regex_to_dfa(pattern)
    states = _states(dfa, random.Random(pattern), vocab, 40)
    expected = np.stack([_brute_mask(vocab, dfa, s) for s in states])
    single = np.stack([trie.walk(None, dfa, s).allowed for s in states])
    batched = trie.walk_many(dfa, np.array(states, dtype=np.int32))
    assert (single == expected).all()
    assert (batched == expected).all()


def test_liveness_classes_share_masks():
    vocab = _vocab(7)
    trie = TokenTrie(vocab)
    dfa = regex_to_dfa(r'("[a-z]*"|[a-z]+)(, ("[a-z]*"|[a-z]+))*')
    dfa.build_reachable(float("inf"))
    classes = dfa.liveness_classes(trie.max_depth)
    assert classes is not None and classes.max() + 1 < dfa.num_states  # equivalent states exist
    masks = trie.walk_many(dfa, np.arange(dfa.num_states, dtype=np.int32))
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        assert (masks[members] == masks[members[0]]).all()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_precomputed_masks_equal_lazy_masks(info, gen, pattern):
    eager = compile_regex(pattern, info, CompileOptions(precompute_s=10.0))
    lazy = compile_regex(pattern, info, CompileOptions(precompute_s=0.0))
    assert eager.num_cached_states > 0 and lazy.num_cached_states == 0
    rng = random.Random(pattern)
    for _ in range(3):
        m_eager, m_lazy = eager.matcher(), lazy.matcher()
        for _ in range(12):
            allowed = gen.allowed_tokens(m_eager, info.vocab_size)
            assert (allowed == gen.allowed_tokens(m_lazy, info.vocab_size)).all()
            choices = [t for t in np.nonzero(allowed)[0].tolist() if t not in info.eos_token_ids]
            if not choices:
                break
            t = rng.choice(choices)
            assert m_eager.accept(t) and m_lazy.accept(t)


def test_precompute_stops_quietly_at_the_state_budget(info, gen):
    # the DFA of this pattern has ~2**15 states: the budget ends precomputation, not compilation
    compiled = compile_regex(r"(a|b)*a(a|b){14}", info, CompileOptions(max_dfa_states=200, precompute_s=10.0))
    assert 0 < compiled.num_cached_states <= 200
    assert gen.allowed_tokens(compiled.matcher(), info.vocab_size).any()
