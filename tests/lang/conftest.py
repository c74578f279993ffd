"""Fixtures for the language tests: one tiny checkpoint per session, one engine per module."""

import importlib.util

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from lmlang.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("lang_tiny_llama"), "llama")


@pytest.fixture(scope="module")
def backend(tiny_model):
    """An in-process `ll.Engine` on the tiny model, shut down at the end of the module."""
    import lmlang as ll

    engine = ll.Engine(tiny_model)
    yield engine
    engine.shutdown()


@pytest.fixture
def constrained() -> None:
    """Skips the test unless the runtime can enforce regex constraints (its grammar backend)."""
    if importlib.util.find_spec("lmlang.runtime.grammar_backend") is None:
        pytest.skip("the runtime has no grammar backend yet (lmlang.runtime.grammar_backend), so regex gens are not enforced")
