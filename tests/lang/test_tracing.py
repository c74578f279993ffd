"""Tracing programs into `Program` DAGs: shape, JSON round trip, and what cannot be traced."""

import json

import pytest

import lmlang as ll
from lmlang.errors import ArgumentUsedError
from lmlang.ir import Fork, Gen, Join, Select, Text, VarRef


@ll.function
def tree_of_thought(s, question):
    s += "Question: " + question + "\n"
    forks = s.fork(3)
    forks += lambda i: "Approach " + str(i) + ":" + ll.gen("plan", max_tokens=16, stop="\n") + "\n"
    for branch in forks:
        steps = branch.fork(2)
        steps += lambda j: "Step " + str(j) + ":" + ll.gen("step", max_tokens=16)
        steps.join()
        branch += "Verdict: " + ll.select("verdict", choices=["good", "bad"])
    forks.join()
    s += "Best:" + ll.gen("best", max_tokens=8)


def test_tree_of_thought_traces_to_the_expected_dag():
    program = tree_of_thought.trace()
    assert program.arguments == ("question",)
    assert len(program.streams) == 1 + 3 + 3 * 2
    root = program.root
    branches = [s for s in program.streams if s.parent == root.id]
    leaves = [s for s in program.streams if s.parent in {b.id for b in branches}]
    assert len(branches) == 3 and len(leaves) == 6
    for b in branches:
        assert sum(1 for leaf in leaves if leaf.parent == b.id) == 2
        assert [n.name for n in b.nodes if isinstance(n, (Gen, Select))] == ["plan", "verdict"]
    for leaf in leaves:
        assert [n.name for n in leaf.nodes if isinstance(n, Gen)] == ["step"]
    assert [n.name for n in root.nodes if isinstance(n, Gen)] == ["best"]
    gens = program.nodes_of_type(Gen)
    assert len(gens) == 1 + 3 + 6 and len(program.nodes_of_type(Select)) == 3
    kinds = [e.kind for e in program.edges]
    assert kinds.count("fork") == 9 and kinds.count("join") == 9
    # the root forks the three branches and joins them before its own gen
    ops = [type(n).__name__ for n in root.nodes]
    assert ops.index("Fork") < ops.index("Join") < ops.index("Gen")
    text = str(program)
    assert "program tree_of_thought(question)" in text and "Gen 'plan'" in text and "Fork ->" in text


def test_json_round_trip_is_equal():
    program = tree_of_thought.trace()
    again = ll.Program.from_json(program.to_json())
    assert again == program
    data = json.loads(program.to_json())
    assert data["format"] == "lmlang.program" and data["version"] == ll.Program.VERSION


def test_json_rejects_bad_programs():
    data = json.loads(tree_of_thought.trace().to_json())
    with pytest.raises(ValueError, match="version"):
        ll.Program.from_json(json.dumps({**data, "version": 99}))
    bad_op = json.loads(json.dumps(data))
    bad_op["streams"][0]["nodes"][0] = {"op": "Exec", "code": "import os"}
    with pytest.raises(ValueError, match="unknown program node op 'Exec'"):
        ll.Program.from_json(json.dumps(bad_op))
    bad_param = json.loads(json.dumps(data))
    gen = next(n for n in bad_param["streams"][0]["nodes"] if n["op"] == "Gen")
    gen["params"]["max_new_tokens"] = -3
    with pytest.raises(ValueError, match="max_tokens"):
        ll.Program.from_json(json.dumps(bad_param))
    orphan = json.loads(json.dumps(data))
    orphan["streams"][0]["nodes"] = [n for n in orphan["streams"][0]["nodes"] if n["op"] != "Fork"]
    with pytest.raises(ValueError, match="not forked|never forked|has not forked"):
        ll.Program.from_json(json.dumps(orphan))


def test_branching_on_a_generated_value_names_file_and_line():
    @ll.function
    def branching(s):
        s += "Pick:" + ll.select("pick", choices=["a", "b"])
        if s["pick"] == "a":  # LINE-MARK
            s += "A"

    with pytest.raises(ll.TraceError) as info:
        branching.trace()
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if "# LINE-MARK" in text)
    assert info.value.filename == __file__ and info.value.lineno == line
    assert str(info.value).startswith(f"{__file__}:{line}:")
    assert "s['pick']" in str(info.value)


def test_traced_argument_in_an_fstring_is_a_clear_error():
    @ll.function
    def formatted(s, question):
        s += f"Q: {question}\n"

    with pytest.raises(ll.TraceError, match="f-string") as info:
        formatted.trace()
    assert info.value.filename == __file__
    # given a concrete value the program traces, with the text baked in
    program = formatted.trace(question="Why?")
    assert program.arguments == () and program.root.nodes == (Text("Q: Why?\n"),)


def test_arguments_are_placeholders_and_fixed_loops_unroll():
    @ll.function
    def loop(s, topic, n=3):
        s += "Topic: " + topic + "\n"
        for i in range(3):
            s += str(i) + ":" + ll.gen("item" + str(i), max_tokens=4) + "\n"
        s += "Again: " + s["item0"]

    program = loop.trace()
    assert program.arguments == ("topic", "n")
    assert [n.name for n in program.root.nodes if isinstance(n, Gen)] == ["item0", "item1", "item2"]
    assert program.root.nodes[-1] == VarRef("item0")

    @ll.function
    def counted(s, n):
        for _ in range(n):
            s += "x"

    with pytest.raises(ArgumentUsedError):
        counted.trace()
    assert counted.trace(n=2).root.nodes == (Text("x"), Text("x"))


def test_reading_a_branch_variable_becomes_a_var_ref():
    @ll.function
    def sot(s):
        forks = s.fork(2)
        forks += ll.gen("d", max_tokens=4)
        s += forks[0]["d"] + forks[1]["d"]
        forks.join()

    program = sot.trace()
    fork = next(n for n in program.root.nodes if isinstance(n, Fork))
    refs = [n for n in program.root.nodes if isinstance(n, VarRef)]
    assert [r.stream for r in refs] == list(fork.children)
    assert isinstance(program.root.nodes[-1], Join)


def test_state_reads_that_have_no_value_while_tracing():
    @ll.function
    def reads_text(s):
        s += "hi"
        s.text()

    with pytest.raises(ll.TraceError, match="no value while tracing"):
        reads_text.trace()

    @ll.function
    def unknown_var(s):
        s += s["nothing"]

    with pytest.raises(ll.TraceError, match="'nothing' is read before"):
        unknown_var.trace()


def test_structure_errors_raise_at_the_appending_line():
    @ll.function
    def nested(s):
        s += ll.user("a" + ll.assistant("b"))

    with pytest.raises(ll.ProgramStructureError, match="roles cannot nest"):
        nested.trace()
