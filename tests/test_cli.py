"""The `lmlang` command: help, `run` with each backend kind, `trace`, and user errors."""

import json
import pathlib
import subprocess
import sys

import pytest

from lmlang.cli import main
from tests.embedded_server import embedded_server

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_help_explains_the_commands():
    out = subprocess.run(["lmlang", "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("run", "serve", "trace", "examples/quickstart.py", "--model", "--endpoint", "--openai"):
        assert word in out
    serve = subprocess.run([sys.executable, "-m", "lmlang", "serve", "--help"], capture_output=True, text=True,
                           check=True).stdout
    for word in ("--host", "127.0.0.1", "--port", "--api-key", "--max-running-requests", "--max-total-tokens"):
        assert word in serve


def test_run_quickstart_with_no_flags_uses_the_embedded_default():
    r = subprocess.run(["lmlang", "run", str(EXAMPLES / "quickstart.py")], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "answer:" in r.stdout and "confidence:" in r.stdout
    notes = [ln for ln in r.stderr.splitlines() if "embedded default model" in ln]
    assert len(notes) == 1 and "--model" in notes[0]  # said once, with how to use a real model


PROBE = """
import sys, json
import lmlang as ll
print(json.dumps({"name": __name__, "argv": sys.argv[1:], "backend": type(ll.get_default_backend()).__name__}))
"""


def test_run_sets_the_backend_and_passes_program_arguments(tmp_path, capsys):
    prog = tmp_path / "probe.py"
    prog.write_text(PROBE)
    url = embedded_server().url
    assert main(["run", str(prog), "--endpoint", url, "--", "x", "--flag", "1"]) == 0
    seen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen == {"name": "__main__", "argv": ["x", "--flag", "1"], "backend": "RuntimeEndpoint"}
    assert main(["run", str(prog), "--openai", "default", "--base-url", url + "/v1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["backend"] == "OpenAI"
    import lmlang as ll

    assert ll.get_default_backend() is None  # restored after the run


def test_run_with_a_model_path_loads_an_in_process_engine(tmp_path, capsys):
    from lmlang.default_backend import embedded_default_model_path

    prog = tmp_path / "probe.py"
    prog.write_text(PROBE)
    assert main(["run", str(prog), "--model", embedded_default_model_path(), "--max-total-tokens", "1024"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["backend"] == "Engine"
    assert "loading" in captured.err and "model ready" in captured.err


def test_trace_prints_the_dag(capsys):
    target = f"{EXAMPLES / 'tree_of_thought.py'}:tree_of_thought"
    assert main(["trace", target]) == 0
    text = capsys.readouterr().out
    assert "Fork" in text and "Join" in text
    assert main(["trace", target, "--json"]) == 0
    dumped = capsys.readouterr().out
    from lmlang import Program

    program = Program.from_json(dumped)
    assert "problem" in program.arguments


@pytest.mark.parametrize("argv, words", [
    (["run", "no_such_program.py"], ["no such program file"]),
    (["trace", "examples/quickstart.py"], ["FILE:FUNCTION"]),
    (["trace", "examples/quickstart.py:nope"], ["no 'nope'", "qa"]),
    (["serve", "--model", "/no/such/checkpoint"], ["no such model directory"]),
])
def test_user_errors_are_one_line_not_a_traceback(argv, words, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_conflicting_backends_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "x.py", "--model", "a", "--endpoint", "b"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_trace_with_baked_arguments_and_untraceable_programs(capsys):
    chat = f"{EXAMPLES / 'chat.py'}:conversation"
    assert main(["trace", chat]) == 2
    assert "--arg" in capsys.readouterr().err
    assert main(["trace", chat, "--arg", 'questions=["Hi", "Bye"]']) == 0
    assert capsys.readouterr().out.count("Gen 'reply_") == 2
    assert main(["trace", f"{EXAMPLES / 'react_agent.py'}:react"]) == 2
    assert "cannot trace react" in capsys.readouterr().err  # branches on generated values
