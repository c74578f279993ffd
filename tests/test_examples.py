"""Every example runs: on the embedded default model, through a live server (`ll.RuntimeEndpoint`),
the chat examples through the server's OpenAI API (`ll.OpenAI`), and the notebook in a real kernel."""

import pathlib
import runpy

import pytest

import lmlang as ll
from lmlang.cli import main
from tests.embedded_server import SERVED_NAME, embedded_server

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
CHAT_EXAMPLES = ["chat.py"]  # only gens at the start of assistant turns: what a chat API can serve


def _program_args(name: str, url: str) -> list:
    if name == "openai_client.py":
        return ["--base-url", url + "/v1"]  # the live server, instead of starting one
    if name == "batch.py":
        return ["--limit", "4"]
    return []


def test_the_examples_are_all_here():
    expected = {"quickstart.py", "chat.py", "classify.py", "json_extract.py", "tree_of_thought.py",
                "react_agent.py", "batch.py", "openai_client.py"}
    assert expected <= set(SCRIPTS)
    assert (EXAMPLES / "notebook.ipynb").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_on_the_embedded_default(name):
    url = embedded_server().url
    assert main(["run", str(EXAMPLES / name), "--", *_program_args(name, url)]) == 0


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_through_a_live_server(name):
    url = embedded_server().url
    assert main(["run", str(EXAMPLES / name), "--endpoint", url, "--", *_program_args(name, url)]) == 0


def _request_counts(url: str) -> dict:
    import httpx

    counts: dict = {}
    prefix = "lmlang_http_requests_total{path="
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            path, value = line[len(prefix):].split("} ")
            counts[path.strip('"')] = float(value)
    return counts


def test_a_compiled_program_is_one_http_request():
    url = embedded_server().url
    namespace = runpy.run_path(str(EXAMPLES / "tree_of_thought.py"))
    compiled = namespace["tree_of_thought"].compile()
    endpoint = ll.RuntimeEndpoint(url)
    before = _request_counts(url)
    state = compiled.run(problem="Share 7 apples among 3 people.", backend=endpoint, temperature=0)
    after = _request_counts(url)
    grew = {path: after[path] - before.get(path, 0) for path in after if after[path] != before.get(path, 0)}
    grew.pop("/metrics", None)  # the counting itself
    assert grew == {"/program": 1}
    assert len(state["approach"]) == len(state["verdict"]) == namespace["NUM_BRANCHES"]


@pytest.mark.parametrize("name", CHAT_EXAMPLES)
def test_chat_examples_run_through_the_servers_openai_api(name):
    url = embedded_server().url
    assert main(["run", str(EXAMPLES / name), "--openai", SERVED_NAME, "--base-url", url + "/v1"]) == 0


@pytest.mark.parametrize("name, primitive", [("classify.py", "select"), ("quickstart.py", "regex")])
def test_the_openai_backend_names_what_it_cannot_serve(name, primitive):
    url = embedded_server().url
    with pytest.raises(NotImplementedError, match=primitive):
        main(["run", str(EXAMPLES / name), "--openai", SERVED_NAME, "--base-url", url + "/v1"])


def test_notebook_runs_headless_in_a_real_kernel():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the rendered state
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert printed.count("vegetarian=") == 6  # the batch
