"""A finished stream's state as JSON, and back (the `POST /program` response).

`{"text", "variables", "meta_info", "messages", "pieces": [[text, kind, name, role], ...]}`.
"""

from __future__ import annotations

from typing import Any

from lmlang.stream import Piece, StreamState


def state_to_dict(state: StreamState) -> dict:
    return {
        "text": state.text,
        "variables": state.variables,
        "meta_info": state.meta_info,
        "messages": state.messages,
        "pieces": [[p.text, p.kind, p.name, p.role] for p in state.pieces],
    }


def state_from_dict(d: dict) -> StreamState:
    try:
        state = StreamState()
        state.text = d["text"]
        state.variables = dict(d["variables"])
        state.meta_info = dict(d["meta_info"])
        state.messages = list(d["messages"])
        state.pieces = [Piece(*p) for p in d.get("pieces", [[d["text"], "text", None, None]])]
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed program result: {e!r}") from None
    return state


class FinishedHandle:
    """The `ProgramState` handle of a run that finished elsewhere (a server): read-only, complete."""

    tracing = False

    def __init__(self, state: StreamState) -> None:
        self._state = state

    def append(self, nodes: tuple) -> None:
        raise RuntimeError("the state of a finished remote run is read-only")

    def fork(self, n: int) -> list:
        raise RuntimeError("the state of a finished remote run is read-only")

    def join(self, children: list) -> None:
        raise RuntimeError("the state of a finished remote run is read-only")

    def get(self, name: str) -> Any:
        if name not in self._state.variables:
            raise KeyError(f"variable {name!r} was not set (set: {sorted(self._state.variables)})")
        return self._state.variables[name]

    def meta_info(self, name: str) -> Any:
        if name not in self._state.meta_info:
            raise KeyError(f"no meta info for {name!r}")
        return self._state.meta_info[name]

    def state(self) -> StreamState:
        return self._state

    def pieces(self, until_var: Any):
        return iter(self._state.pieces)

    def snapshot(self) -> str:
        return self._state.text
