"""Faults: client disconnects free their requests, SIGTERM drains then exits 0, a dead engine core is a 503."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.runtime.server.conftest import wait_idle

LONG = {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0}


def _finished(metrics_text: str, reason: str) -> float:
    prefix = f'lmlang_requests_finished_total{{finish_reason="{reason}"}} '
    return sum(float(ln[len(prefix):]) for ln in metrics_text.splitlines() if ln.startswith(prefix))


def _first_event(lines) -> dict:
    """The first event from `lines` (one `iter_lines()` iterator: a second one would close the stream)."""
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line[len("data: "):])
    raise AssertionError("stream ended without an event")


def test_disconnect_mid_stream_aborts_and_frees_kv(http, server):
    wait_idle(http)
    aborted_before = _finished(http.get("/metrics").text, "abort")
    generated_before = http.get("/stats").json()["generated_tokens"]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/generate", json={"text": "go", "sampling_params": LONG, "stream": True}) as r:
            lines = r.iter_lines()
            assert _first_event(lines)["meta_info"]["finish_reason"] is None
            running = http.get("/stats").json()
            assert running["num_running"] == 1 and running["kv_in_use"] > 0, running
        # leaving the block closes the connection with the stream unfinished
    stats = wait_idle(http)
    assert stats["generated_tokens"] - generated_before < LONG["max_new_tokens"]
    assert _finished(http.get("/metrics").text, "abort") == aborted_before + 1


def test_openai_stream_closed_early_is_aborted(http, server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "go"}],
                                                max_tokens=1500, stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))
        stream.close()
    wait_idle(http)


def test_disconnect_while_waiting_for_a_full_answer_aborts(http, server):
    generated_before = http.get("/stats").json()["generated_tokens"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/generate", json={"text": "go", "sampling_params": LONG}, timeout=1.0)
    stats = wait_idle(http)
    assert stats["generated_tokens"] - generated_before < LONG["max_new_tokens"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(tiny_ckpt):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "lmlang", "serve", "--model", tiny_ckpt("llama"), "--port",
                             str(port), "--max-total-tokens", "4096", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_healthy(url, proc)
        events: list = []
        started = threading.Event()

        def stream() -> None:
            body = {"text": "drain", "stream": True,
                    "sampling_params": {"max_new_tokens": 120, "ignore_eos": True, "temperature": 0}}
            with httpx.stream("POST", url + "/generate", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: "):])
                        started.set()

        client = threading.Thread(target=stream)
        client.start()
        assert started.wait(60)
        proc.send_signal(signal.SIGTERM)
        client.join(120)
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["meta_info"]["finish_reason"] == {"type": "length"}
        assert last["meta_info"]["completion_tokens"] == 120
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dead_engine_core_gives_503_not_a_hang(tiny_ckpt):
    from lmlang.runtime import Engine
    from lmlang.runtime.server.launch import BackgroundServer

    engine = Engine(tiny_ckpt("llama"), max_total_tokens=4096)
    core = engine._proc  # the engine core's process handle: the test kills it
    try:
        with BackgroundServer(engine) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
            with http.stream("POST", "/generate", json={"text": "x", "sampling_params": LONG, "stream": True}) as r:
                lines = r.iter_lines()
                _first_event(lines)
                core.kill()
                tail = [ln for ln in lines if ln.startswith("data: ")]
            assert tail[-1] == "data: [DONE]"
            assert json.loads(tail[-2][len("data: "):])["error"]["code"] == 503
            health = http.get("/health")
            assert health.status_code == 503 and "engine" in health.json()["error"]["message"]
            start = time.monotonic()
            r = http.post("/generate", json={"text": "x"})
            assert r.status_code == 503 and "not running" in r.json()["error"]["message"]
            assert time.monotonic() - start < 5
            with openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0) as client:
                with pytest.raises(openai.InternalServerError) as err:
                    client.completions.create(model=engine.config.model_path, prompt="x", max_tokens=2)
            assert err.value.status_code == 503
            assert 'lmlang_engine_alive 0.0' in http.get("/metrics").text
    finally:
        engine.shutdown()


def test_abort_request_by_rid_ends_the_stream(http, server):
    body = {"text": "go", "sampling_params": LONG, "stream": True, "rid": "abort-me"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/generate", json=body) as r:
            lines = r.iter_lines()
            assert _first_event(lines)["meta_info"]["id"] == "abort-me"
            assert http.post("/abort_request", json={"rid": "abort-me"}).json() == {"rid": "abort-me"}
            events = [json.loads(ln[len("data: "):]) for ln in lines if ln.startswith("data: {")]
    assert events[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert events[-1]["meta_info"]["completion_tokens"] < LONG["max_new_tokens"]
    wait_idle(http)
