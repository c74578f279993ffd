"""One engine on a tiny Llama and one loopback server on it, shared by the server tests."""

import time

import httpx
import pytest

MAX_BODY_BYTES = 64 * 1024
API_KEY = "test-key"


@pytest.fixture(scope="session")
def server_engine(tiny_ckpt):
    from lmlang.runtime import Engine

    engine = Engine(tiny_ckpt("llama"), max_total_tokens=8192, seed=0)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def server(server_engine):
    """An open server (no API key) on a free loopback port; `.url`, `.app`."""
    from lmlang.runtime.server.launch import BackgroundServer

    with BackgroundServer(server_engine, served_model_name="tiny") as srv:
        yield srv


@pytest.fixture(scope="session")
def guarded_server(server_engine):
    """A second app on the same engine with an API key and a small body limit."""
    from lmlang.runtime.server.launch import BackgroundServer

    with BackgroundServer(server_engine, served_model_name="tiny", api_key=API_KEY,
                          max_body_bytes=MAX_BODY_BYTES) as srv:
        yield srv


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def wait_idle(client: httpx.Client, timeout: float = 20.0) -> dict:
    """Polls /stats until nothing runs, waits or holds KV slots; returns the last stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = client.get("/stats").json()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["kv_in_use"] == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"engine not idle after {timeout}s: {stats}")
        time.sleep(0.05)
