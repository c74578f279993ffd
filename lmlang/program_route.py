"""`POST /program`: run a traced program on the server's engine with the program executor.

`lmlang serve` calls `mount_program_route(app, engine)`; the runtime never imports the
language (DESIGN §1). The request body is

    {"program": <Program.to_dict() or its JSON string>,
     "arguments": {name: value, ...},            # the program's placeholders
     "sampling_params": {field: value, ...}}     # run defaults, SamplingParams field names

and the answer is the root stream's final state (`lmlang.remote_state.state_to_dict`). A bad
program or request is a 400 naming the problem; a program that fails while running is a 400
too (its error is the program's), unless the engine itself failed (500/503).
"""

# no `from __future__ import annotations`: FastAPI reads the handler's `Request` annotation
# at definition time, and `Request` is imported lazily inside `mount_program_route`.
import json
from typing import Any

from lmlang.program import Program
from lmlang.sampling import check_overrides


def parse_program_request(body: Any) -> tuple:
    """`(program, arguments, sampling overrides)` from a request body; `ValueError` if malformed."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object with 'program', 'arguments', 'sampling_params'")
    unknown = sorted(set(body) - {"program", "arguments", "sampling_params"})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    if "program" not in body:
        raise ValueError("missing field 'program'")
    raw = body["program"]
    program = Program.from_json(raw) if isinstance(raw, str) else Program.from_dict(raw)
    arguments = body.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise ValueError("'arguments' must be an object")
    overrides = body.get("sampling_params") or {}
    if not isinstance(overrides, dict):
        raise ValueError("'sampling_params' must be an object")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    check_overrides(overrides)
    return program, arguments, overrides


def mount_program_route(app: Any, engine: Any) -> None:
    """Adds `POST /program` to FastAPI `app`, running programs on runtime `engine`."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    from lmlang.backends.engine import Engine
    from lmlang.executor import start_program
    from lmlang.remote_state import state_to_dict

    backend = Engine.from_runtime(engine)

    def error(status: int, message: str) -> JSONResponse:
        kind = {400: "BadRequestError", 500: "InternalServerError", 503: "ServiceUnavailableError"}[status]
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status_code=status)

    async def run_program(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
            program, arguments, overrides = parse_program_request(body)
            run = await start_program(program, backend, arguments, overrides)
        except (ValueError, TypeError) as e:
            return error(400, f"bad program request: {e}")
        try:
            await run.finish()
        except Exception as e:  # noqa: BLE001 - answered to the client, the server serves on
            if any(c.__name__ == "EngineDeadError" for c in type(e).__mro__):
                return error(503, str(e))
            if isinstance(e, (ValueError, TypeError, KeyError)):
                return error(400, f"the program failed: {type(e).__name__}: {e}")
            return error(500, f"the program failed: {type(e).__name__}: {e}")
        return state_to_dict(run.streams[program.root.id].state)

    app.add_api_route("/program", run_program, methods=["POST"], summary="Run a traced lmlang program")
