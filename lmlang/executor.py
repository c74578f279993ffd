"""The program executor: runs a whole traced `Program` against a backend.

It is the interpreter's whole-program twin: the same `StreamInterpreter` executes every node,
so text, variables and meta info match an eager run. The difference is that all streams are
known up front: a stream's nodes are queued at once, a Fork starts its branches in one step
(they reach their first gens together and the backend submits those as one batch over the
parent's pinned prefix), and nothing waits on the program's Python code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lmlang.interpreter import StreamInterpreter
from lmlang.loop import submit
from lmlang.program import Program
from lmlang.stream import RunContext, StreamReader, StreamState


async def start_program(program: Program, backend: Any, arguments: dict, defaults: dict, stream: bool = False) -> RunContext:
    """Queues every stream of `program` and starts its root on the running loop.

    Await `run.finish()` on the result for completion (it raises the program's first error).
    """
    missing = [a for a in program.arguments if a not in arguments]
    extra = sorted(set(arguments) - set(program.arguments))
    if missing or extra:
        raise ValueError(
            f"program {program.name!r} takes arguments {list(program.arguments)}; "
            + (f"missing {missing}" if missing else "") + (" " if missing and extra else "") + (f"unexpected {extra}" if extra else "")
        )
    run = RunContext(asyncio.get_running_loop(), backend, defaults, arguments, stream, StreamInterpreter)
    for spec in program.streams:
        parent = run.streams[spec.parent] if spec.parent is not None else None
        rs = run.new_stream(parent, spec.id)
        rs.submit(spec.nodes)
        rs.end()
    run.streams[program.root.id].start(StreamState())
    return run


def execute_program(program: Program, backend: Any, arguments: dict, defaults: dict, stream: bool = False) -> Any:
    """Runs `program` on the background loop; returns the root's `ProgramState` (after the whole
    run unless `stream`, in which case it returns at once and reads wait)."""
    from lmlang.state import ProgramState

    run = submit(start_program(program, backend, arguments, defaults, stream)).result()
    state = ProgramState(StreamReader(run.streams[program.root.id]))
    state._finished = submit(run.finish())
    if not stream:
        state._finished.result()
    return state
