"""Errors the HTTP server answers with, in OpenAI's error shape.

Every error body is `{"error": {"message", "type", "param", "code"}}` so that the official
`openai` client (and SGLang-style clients, which read `message`) surface the text. A request a
user got wrong is a 4xx naming the problem; a dead engine core is a 503; nothing a client sends
stops the server from serving the next request.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "RequestTooLarge",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error answered to the client with `status` and `message` (raised by route code)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_body(status: int, message: str, param: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "Error"), "param": param, "code": status}}


def error_response(status: int, message: str, param: Optional[str] = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status)


def error_bytes(status: int, message: str) -> bytes:
    """The JSON body of an error, for code that answers below FastAPI (ASGI middleware, SSE)."""
    return json.dumps(error_body(status, message)).encode()


def is_engine_dead(exc: BaseException) -> bool:
    """Whether `exc` says the engine core process is gone (the engine's `EngineDeadError`)."""
    return any(cls.__name__ == "EngineDeadError" for cls in type(exc).__mro__)


def describe_errors(errors: Any) -> str:
    """One readable sentence per pydantic error, e.g. `max_tokens: Input should be a valid integer`."""
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            parts.append(f"unknown field '{'.'.join(loc)}'")
        elif kind == "missing":
            parts.append(f"missing required field '{'.'.join(loc)}'")
        elif not loc:
            parts.append(_short_msg(err))
        else:
            parts.append(f"{'.'.join(loc)}: {_short_msg(err)}")
    return "; ".join(parts) or "invalid request"


def _short_msg(err: dict) -> str:
    msg = str(err.get("msg", "invalid value"))
    # pydantic prefixes errors raised by our validators with "Value error, "
    return msg.removeprefix("Value error, ")


def install_error_handlers(app: FastAPI) -> None:
    """Maps validation errors, `ValueError` and dead-engine errors to clear JSON answers."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, describe_errors(exc.errors()))

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, exc: ValueError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception) -> JSONResponse:
        if is_engine_dead(exc):
            return error_response(503, f"the engine is not running: {exc}")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def map_exception(exc: BaseException) -> APIError:
    """The `APIError` a generation failure becomes (used where a response already started)."""
    if isinstance(exc, APIError):
        return exc
    if is_engine_dead(exc):
        return APIError(503, f"the engine is not running: {exc}")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc))
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}")


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
