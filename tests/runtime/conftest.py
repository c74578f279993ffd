"""Shared fixtures for engine tests: tiny checkpoints (made once per session) and engine checks."""

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """`tiny_ckpt(arch)` -> path of a tiny checkpoint, made once per session and arch."""
    from lmlang.testing import make_tiny_checkpoint

    made: dict = {}

    def get(arch: str = "llama") -> str:
        if arch not in made:
            made[arch] = make_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny_{arch}"), arch)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def kv_accounting():
    """`kv_accounting(engine)` asserts the KV accounting invariant from the core's own counts."""

    def check(engine) -> dict:
        s = engine.stats()
        assert s["kv_free"] + s["kv_cached"] + s["kv_in_use"] == s["kv_total"]
        assert s["kv_in_use"] == s["kv_protected"] + s["kv_request_owned"], s
        return s

    return check


@pytest.fixture(scope="session")
def greedy_parity(tiny_ckpt, kv_accounting):
    """`greedy_parity(arch)` asserts that the engine's greedy tokens (float32, chunked prefill of
    16, so prompts of 1 to 7 chunks) equal transformers' on the tiny checkpoint of `arch`, and that
    no KV stays in use afterwards."""
    from lmlang.runtime import Engine
    from lmlang.testing.parity import hf_greedy_tokens, parity_prompts

    new_tokens = 32
    prompt_lengths = (1, 5, 16, 17, 33, 50, 64, 100)

    def check(arch: str) -> None:
        path = tiny_ckpt(arch)
        prompts = parity_prompts(512, prompt_lengths)
        reference = hf_greedy_tokens(path, prompts, new_tokens)
        with Engine(path, dtype="float32", chunked_prefill_size=16) as engine:
            results = engine.generate(
                input_ids=prompts,
                sampling_params={"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True},
            )
            for res, ref, prompt in zip(results, reference, prompts):
                assert res["output_ids"] == ref, f"{arch}: prompt of {len(prompt)} tokens diverged"
            assert kv_accounting(engine)["kv_in_use"] == 0

    return check
