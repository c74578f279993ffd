"""Errors inside programs surface from run() / state[...] with their traceback, and never hang."""

import traceback

import pytest

import lmlang as ll

pytestmark = pytest.mark.timeout(60)


class Boom(Exception):
    pass


def _frames(error: BaseException) -> list:
    return [frame.name for frame in traceback.extract_tb(error.__traceback__)]


def test_exception_in_the_program_body_surfaces_from_run(backend):
    @ll.function
    def failing(s):
        s += "Hello" + ll.gen("x", max_tokens=4)
        forks = s.fork(2)
        forks += ll.gen("y", max_tokens=4)
        raise Boom("in the body")

    with pytest.raises(Boom, match="in the body") as info:
        failing.run(backend=backend)
    assert "failing" in _frames(info.value)


def test_exception_while_executing_surfaces_from_run_and_from_reads(backend):
    @ll.function
    def bad_params(s):
        s += "Count:" + ll.gen("n", min_tokens=20)

    with pytest.raises(ValueError, match="min_tokens") as info:
        bad_params.run(backend=backend, max_tokens=10)
    assert "visit_Gen" in _frames(info.value)  # the original traceback, from where it was raised

    state = bad_params.run(backend=backend, max_tokens=10, stream=True)
    with pytest.raises(ValueError, match="min_tokens"):
        state["n"]
    with pytest.raises(ValueError, match="min_tokens"):
        state.text()
    with pytest.raises(ValueError, match="min_tokens"):
        list(state.text_iter("n"))


def test_exception_read_inside_the_program(backend):
    @ll.function
    def reads_failed(s):
        s += "A:" + ll.gen("a", min_tokens=5, max_tokens=2)
        s += "B:" + s["a"]

    with pytest.raises(ValueError, match="min_tokens"):
        reads_failed.run(backend=backend)


def test_failing_branch_surfaces_at_join_and_run(backend):
    @ll.function
    def branchy(s):
        s += "Go:"
        forks = s.fork(3)
        forks += lambda i: ll.gen("z", max_tokens=3, min_tokens=9 if i == 1 else None)
        forks.join()
        s += ll.gen("after", max_tokens=3)

    with pytest.raises(ValueError, match="min_tokens"):
        branchy.run(backend=backend)
    with pytest.raises(ValueError, match="min_tokens"):
        branchy.compile().run(backend=backend)


def test_missing_variable_is_a_key_error_not_a_wait(backend):
    @ll.function
    def simple(s):
        s += "Hi" + ll.gen("x", max_tokens=2)

    state = simple.run(backend=backend)
    with pytest.raises(KeyError, match="'nope' was not set"):
        state["nope"]

    @ll.function
    def reads_missing(s):
        s += "Hi"
        s += s["never"]

    with pytest.raises(KeyError, match="never"):
        reads_missing.run(backend=backend)


def test_compiled_program_with_missing_argument(backend):
    @ll.function
    def needs(s, topic):
        s += "T:" + topic + ll.gen("x", max_tokens=2)

    program = needs.trace()
    with pytest.raises(ValueError, match="missing \\['topic'\\]"):
        backend.run_program(program, {}, {}, False)


def test_no_backend_and_bad_backend():
    @ll.function
    def p(s):
        s += "x"

    with pytest.raises(TypeError, match="lmlang backend"):
        p.run(backend="http://localhost:1")
    with pytest.raises(TypeError, match="lmlang backend"):
        ll.set_default_backend(object())
