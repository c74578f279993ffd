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
