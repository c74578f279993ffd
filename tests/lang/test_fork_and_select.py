"""Fork efficiency from the engine's own counters, and select's scores against transformers.

This module has its own engine so that the lifetime counters (`max_decode_batch_size`) start
from zero for the fork test, which runs first.
"""

import math

import pytest

import lmlang as ll

BRANCHES = 8
PREFIX_TOKENS = 500


def _common(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@ll.function
def fan_out(s, document):
    s += document
    forks = s.fork(BRANCHES)
    forks += lambda i: "\nBranch " + str(i) + ":"
    forks += ll.gen("out", max_tokens=32, ignore_eos=True)
    forks.join()


def _document(tokenizer) -> str:
    words = "the quick brown fox jumps over a lazy dog while every model reads each token of the cache".split()
    ids = tokenizer.encode(" ".join(words[i % len(words)] for i in range(2 * PREFIX_TOKENS)))[:PREFIX_TOKENS]
    text = tokenizer.decode(ids)
    assert tokenizer.encode(text) == ids
    return text


def _delta(engine, run) -> tuple:
    before = engine.stats()
    state = run()
    after = engine.stats()
    keys = ("prefill_tokens_computed", "cached_tokens_hit", "forward_passes")
    return state, {k: after[k] - before[k] for k in keys} | {"max_decode_batch_size": after["max_decode_batch_size"]}


def test_compiled_fork_prefills_the_prefix_once_and_decodes_together(backend):
    tok = backend.tokenizer
    document = _document(tok)
    prefix = tok.encode(document)
    suffixes = 0
    for i in range(BRANCHES):
        branch = tok.encode(document + f"\nBranch {i}:")
        suffixes += len(branch) - _common(prefix, branch)
    assert backend.stats()["max_decode_batch_size"] == 0  # a fresh engine

    compiled, c = _delta(backend, lambda: fan_out.compile().run(document=document, backend=backend, temperature=0))
    assert c["prefill_tokens_computed"] == PREFIX_TOKENS + suffixes
    assert c["max_decode_batch_size"] >= BRANCHES
    assert len(compiled["out"]) == BRANCHES

    backend.flush_cache()
    eager, e = _delta(backend, lambda: fan_out.run(document=document, backend=backend, temperature=0))
    print(f"\nfork({BRANCHES}) over a {PREFIX_TOKENS}-token prefix, 32-token branches: "
          f"compiled {c}; interpreted {e}; branch suffixes {suffixes} tokens")
    assert eager["out"] == compiled["out"]


# ---- select -----------------------------------------------------------------------------------

PROMPT = "Q: What is the weather like today?\nA: It is "  # ends in a space that merges with a choice
CHOICES = ["sunny", "rainy", "cold and windy"]


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.eval()
    return model


def _hf_token_logprobs(model, ids: list, first: int) -> list:
    """log P(ids[t] | ids[:t]) for t >= first, from transformers."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[t - 1, ids[t]].item() for t in range(first, len(ids))]


def _reference(model, tokenizer, method: str) -> tuple:
    prefix = tokenizer.encode(PROMPT)
    conditional, unconditional = [], []
    for choice in CHOICES:
        full = tokenizer.encode(PROMPT + choice)
        k = _common(prefix, full)
        conditional.append(_hf_token_logprobs(model, full, k))
        bare = [tokenizer.bos_token_id] + full[k:]
        unconditional.append(_hf_token_logprobs(model, bare, 1))
    means = [sum(lp) / len(lp) for lp in conditional]
    if method == "token_length_normalized":
        scores = means
        index = max(range(len(CHOICES)), key=lambda i: (scores[i], -i))
    elif method == "greedy_token_selection":
        scores = means
        remaining = list(range(len(CHOICES)))
        for j in range(max(len(lp) for lp in conditional)):
            at = {i: conditional[i][j] if j < len(conditional[i]) else means[i] for i in remaining}
            best = max(at.values())
            remaining = [i for i in remaining if at[i] == best]
            if len(remaining) == 1:
                break
        index = remaining[0]
    else:
        scores = [sum(c - u for c, u in zip(cl, ul)) / len(cl) for cl, ul in zip(conditional, unconditional)]
        index = max(range(len(CHOICES)), key=lambda i: (scores[i], -i))
    return index, scores, conditional


@pytest.mark.parametrize("method", [ll.token_length_normalized, ll.greedy_token_selection,
                                    ll.unconditional_likelihood_normalized], ids=lambda m: m.name)
def test_select_matches_a_transformers_reference(backend, hf_model, method):
    @ll.function
    def pick(s):
        s += PROMPT
        s += ll.select("weather", choices=CHOICES, method=method)

    index, scores, conditional = _reference(hf_model, backend.tokenizer, method.name)
    state = pick.run(backend=backend)
    meta = state.get_meta_info("weather")
    assert meta["method"] == method.name
    got = [[lp for lp, _ in entries] for entries in meta["input_token_logprobs"]]
    for mine, ref in zip(got, conditional):
        assert mine == pytest.approx(ref, abs=1e-4)
    assert meta["scores"] == pytest.approx(scores, abs=1e-4)
    ranked = sorted(scores, reverse=True)
    if not math.isclose(ranked[0], ranked[1], abs_tol=1e-4):
        assert state["weather"] == CHOICES[index]
    assert state.text() == PROMPT + state["weather"]


def test_select_scores_all_choices_in_one_submission_over_the_cached_prefix(backend, monkeypatch):
    calls = []
    real = backend.engine.async_generate

    async def counting(*args, **kwargs):
        calls.append(kwargs)
        return await real(*args, **kwargs)

    monkeypatch.setattr(backend.engine, "async_generate", counting)

    @ll.function
    def gen_then_select(s):
        s += PROMPT
        s += ll.gen("said", max_tokens=4)
        s += "\nSo: "
        s += ll.select("weather", choices=CHOICES)

    state = gen_then_select.run(backend=backend, temperature=0)
    select_calls = [c for c in calls if c["sampling_params"][0].get("max_new_tokens") == 0]
    assert len(select_calls) == 1 and len(select_calls[0]["input_ids"]) == len(CHOICES)
    meta = state.get_meta_info("weather")
    tok = backend.tokenizer
    before_select = state.text()[: -len(state["weather"])]
    shared = _common(tok.encode(PROMPT), tok.encode(before_select))  # what the gen's prompt left cached
    assert shared > 0 and all(cached >= shared for cached in meta["cached_tokens"])
