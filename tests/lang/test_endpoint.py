"""`ll.RuntimeEndpoint` and `POST /program` against a live lmlang server on a loopback port, and
`ll.OpenAI` against the same server's OpenAI-compatible API."""

import importlib.util

import pytest

import lmlang as ll

if importlib.util.find_spec("lmlang.runtime.server.launch") is None:  # pragma: no cover - until the server exists
    pytest.skip("the lmlang server (lmlang.runtime.server) is not available", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(backend):
    from lmlang.program_route import mount_program_route
    from lmlang.runtime.server.launch import BackgroundServer

    runtime_engine = backend.engine
    with BackgroundServer(runtime_engine, configure_app=lambda app: mount_program_route(app, runtime_engine)) as srv:
        yield srv


@pytest.fixture(scope="module")
def endpoint(server):
    return ll.RuntimeEndpoint(server.url)


@ll.function
def chat_and_pick(s, ticket):
    s += ll.system("You are a support triage assistant.")
    s += ll.user(ticket)
    s += ll.assistant(ll.select("kind", choices=["bug", "question", "feature"]))
    s += ll.user("Summarise it in one line.")
    s += ll.assistant(ll.gen("summary", max_tokens=12, stop="\n"))


@ll.function
def branches(s, topic):
    s += "Topic: " + topic + "\n"
    forks = s.fork(3)
    forks += lambda i: "Idea " + str(i) + ":" + ll.gen("idea", max_tokens=6, stop="\n")
    s += "First idea:" + forks[0]["idea"] + "\n"
    forks.join()
    s += "Verdict:" + ll.select("verdict", choices=["yes", "no"])


def test_interpreted_over_http_equals_in_process(backend, endpoint):
    remote = chat_and_pick.run(ticket="The app crashes on start", backend=endpoint, temperature=0)
    local = chat_and_pick.run(ticket="The app crashes on start", backend=backend, temperature=0)
    assert remote.text() == local.text()
    assert remote.variables() == local.variables()
    assert remote.messages() == local.messages()


def test_compiled_program_runs_as_one_post(backend, endpoint):
    remote = branches.compile().run(topic="caches", backend=endpoint, temperature=0)
    local = branches.compile().run(topic="caches", backend=backend, temperature=0)
    assert remote.text() == local.text()
    assert remote.variables() == local.variables()
    assert len(remote["idea"]) == 3
    assert remote.get_meta_info("verdict")["choices"] == ["yes", "no"]


def test_streaming_over_http(endpoint):
    @ll.function
    def story(s):
        s += "Once upon a time" + ll.gen("story", max_tokens=10)

    state = story.run(backend=endpoint, stream=True, temperature=0)
    pieces = list(state.text_iter("story"))
    assert "".join(pieces) == state["story"] and len(pieces) >= 2


def test_bad_program_is_a_400_naming_the_problem(server):
    import httpx

    program = branches.trace().to_dict()
    program["streams"][0]["nodes"].append({"op": "Shell", "cmd": "rm -rf /"})
    response = httpx.post(server.url + "/program", json={"program": program, "arguments": {"topic": "x"}})
    assert response.status_code == 400
    assert "unknown program node op 'Shell'" in response.json()["error"]["message"]
    missing = httpx.post(server.url + "/program", json={"program": branches.trace().to_dict()})
    assert missing.status_code == 400 and "missing ['topic']" in missing.json()["error"]["message"]


def test_endpoint_errors_fail_fast():
    with pytest.raises(ConnectionError, match="cannot reach the lmlang server at http://127.0.0.1:9"):
        ll.RuntimeEndpoint("http://127.0.0.1:9", api_key="k")


# ---- ll.OpenAI against the server's /v1 --------------------------------------------------------


@pytest.fixture(scope="module")
def openai_backend(server):
    pytest.importorskip("openai")
    name = server.app.state.ctx.served_model_name
    return ll.OpenAI(name, base_url=server.url + "/v1", api_key="unused")


def test_openai_chat_model_runs_a_chat_program(openai_backend, backend):
    @ll.function
    def chat(s, question):
        s += ll.system("You are brief.")
        s += ll.user(question)
        s += ll.assistant(ll.gen("answer", max_tokens=8))

    remote = chat.run(question="Hello!", backend=openai_backend, temperature=0)
    local = chat.run(question="Hello!", backend=backend, temperature=0)
    assert isinstance(remote["answer"], str)
    assert [m["role"] for m in remote.messages()] == ["system", "user", "assistant"]
    assert remote["answer"] == local["answer"]  # the server applies the same template


def test_openai_completion_model_continues_the_text(server, backend):
    completion = ll.OpenAI(server.app.state.ctx.served_model_name, base_url=server.url + "/v1", api_key="unused",
                           is_chat_model=False)

    @ll.function
    def cont(s):
        s += "Once upon a time" + ll.gen("rest", max_tokens=6, stop="\n")

    remote = cont.run(backend=completion, temperature=0)
    local = cont.run(backend=backend, temperature=0)
    assert remote["rest"] == local["rest"] and remote.text() == local.text()


def test_openai_says_what_it_cannot_do(openai_backend):
    @ll.function
    def picks(s):
        s += ll.user("Pick one")
        s += ll.assistant(ll.select("x", choices=["a", "b"]))

    with pytest.raises(NotImplementedError, match="select"):
        picks.run(backend=openai_backend)

    @ll.function
    def constrained(s):
        s += ll.user("A number")
        s += ll.assistant(ll.gen("n", regex="[0-9]+"))

    with pytest.raises(NotImplementedError, match="regex"):
        constrained.run(backend=openai_backend)

    @ll.function
    def plain(s):
        s += "Text outside any role" + ll.gen("t", max_tokens=4)

    with pytest.raises(NotImplementedError, match="assistant message"):
        plain.run(backend=openai_backend)
