"""ASGI middleware: API-key check, request body size limit, per-path request counting.

Plain ASGI (not Starlette's `BaseHTTPMiddleware`) so that streaming responses and client
disconnects pass through untouched: the route's SSE generator is cancelled when the client goes
away, which is how a disconnected stream gets its request aborted.
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable, Optional

from lmlang.runtime.server.errors import error_bytes

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Paths anyone may reach without the API key (load balancers probe it).
_OPEN_PATHS = frozenset({"/health"})


async def _answer(send: Send, status: int, message: str, extra_headers: Optional[list] = None) -> None:
    body = error_bytes(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Rejects unauthorised (401) and oversized (413) requests before any route runs.

    With `api_key` set, every path but `/health` needs `Authorization: Bearer <key>`. Bodies are
    read here up to `max_body_bytes` and replayed to the app; one byte more is a 413. After the
    body, `receive` passes through, so the app still sees `http.disconnect`.
    """

    def __init__(self, app: ASGIApp, *, api_key: Optional[str], max_body_bytes: int,
                 on_request: Optional[Callable[[str], None]] = None) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.on_request is not None:
            self.on_request(scope["path"])
        if self.api_key is not None and scope["path"] not in _OPEN_PATHS and not self._authorised(scope):
            await _answer(send, 401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                          [(b"www-authenticate", b"Bearer")])
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _answer(send, 413, self._too_large(declared))
            return
        body, done_early = await self._read_body(receive)
        if body is None:
            await _answer(send, 413, self._too_large(None))
            return
        if done_early:  # the client went away while sending
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.api_key or "")
        return False

    def _too_large(self, declared: Optional[int]) -> str:
        got = f" ({declared} bytes)" if declared is not None else ""
        return f"request body too large{got}: the limit is {self.max_body_bytes} bytes"

    async def _read_body(self, receive: Receive) -> tuple:
        """(body bytes, client disconnected) — body is None when it exceeds the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False


def _content_length(scope: Scope) -> Optional[int]:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
