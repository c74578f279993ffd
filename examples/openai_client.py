"""The official `openai` package talking to `lmlang serve`.

    lmlang serve --model PATH --port 30000                        # in one terminal
    python examples/openai_client.py --base-url http://127.0.0.1:30000/v1

With no --base-url, this script starts `lmlang serve` itself (on the embedded default model,
on a free port) and stops it at the end. lmlang extensions such as `regex` go in `extra_body`.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

from openai import OpenAI


@contextlib.contextmanager
def local_server() -> Iterator[str]:
    """Runs `lmlang serve` on a free loopback port; yields its OpenAI base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "lmlang", "serve", "--port", str(port), "--log-level", "warning"])
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("lmlang serve did not start") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish first
        server.wait(timeout=60)


def demo(base_url: str) -> None:
    client = OpenAI(base_url=base_url, api_key=os.environ.get("LMLANG_API_KEY", "none"))
    model = client.models.list().data[0].id
    print("model:", model)

    completion = client.completions.create(model=model, prompt="The three primary colors are", max_tokens=16,
                                           temperature=0)
    print("completion:", repr(completion.choices[0].text), completion.usage)

    print("chat (streamed): ", end="", flush=True)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Write a haiku about the sea."}], max_tokens=24,
        stream=True)
    for chunk in stream:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    structured = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Give a city and its population as JSON."}],
        max_tokens=64, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    print("json_schema:", json.loads(structured.choices[0].message.content))

    date = client.completions.create(model=model, prompt="Today's date:", max_tokens=12, temperature=0,
                                     extra_body={"regex": r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"})
    print("regex:", date.choices[0].text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Use lmlang serve through the openai package.")
    parser.add_argument("--base-url", help="the server's OpenAI base URL, e.g. http://127.0.0.1:30000/v1 "
                        "(default: start a local server)")
    args = parser.parse_args()
    if args.base_url:
        demo(args.base_url)
    else:
        with local_server() as url:
            demo(url)
