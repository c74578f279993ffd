"""A loopback server on the embedded default model, shared by the CLI and example tests.

One per test process: the embedded engine is a process-wide singleton, and the server (with
`/program` mounted, as `lmlang serve` does) runs in a daemon thread until the process exits.
"""

import functools

SERVED_NAME = "default"


@functools.lru_cache(maxsize=None)
def embedded_server():
    """The started `BackgroundServer` (`.url`) serving the embedded default engine."""
    from lmlang.cli import program_route_mounter
    from lmlang.default_backend import get_embedded_default_engine
    from lmlang.runtime.server.launch import BackgroundServer

    runtime_engine = get_embedded_default_engine().engine
    server = BackgroundServer(runtime_engine, served_model_name=SERVED_NAME,
                              configure_app=program_route_mounter(runtime_engine))
    return server.start()
