"""Request bodies: JSON parsed whatever the Content-Type says, then validated by a pydantic model.

Clients (curl's `-d`, hand-written scripts) often omit `Content-Type: application/json`; the
body is read as JSON anyway. Any problem is a 400 naming it: malformed JSON with its position,
an unknown field by name, a mistyped field with what was expected.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from lmlang.runtime.server.errors import APIError, describe_errors

M = TypeVar("M", bound=BaseModel)


def json_body(model: type[M]) -> Any:
    """A FastAPI dependency that yields the request body as a validated `model`."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        if not raw.strip():
            raise APIError(400, "the request body is empty; send a JSON object")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"malformed JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise APIError(400, describe_errors(exc.errors())) from None

    parse.__name__ = f"parse_{model.__name__}"
    return Depends(parse)

