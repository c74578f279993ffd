"""`ProgramState`: what a program function appends to, and what a run returns.

The same class serves eager runs, compiled runs and tracing; the difference lives in its
handle (`lmlang.interpreter.InterpreterHandle`, `lmlang.executor.ExecutedHandle`,
`lmlang.tracer.TraceHandle`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Iterator, Optional

from lmlang.ir import Expr, RoleBegin, RoleEnd, VarScopeBegin, VarScopeEnd, as_nodes


class ProgramState:
    """A stream of a program: `s += text_or_primitive`, `s["var"]`, roles, forks, scopes.

    `s["name"]` waits until the variable is set (or raises the program's error, or `KeyError`
    once the stream has run everything it was given without setting it). `text()` and
    `messages()` wait until everything appended so far has run.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._finished: Any = None  # a concurrent future for the whole run, when there is one

    # ---- building -------------------------------------------------------------------
    def __iadd__(self, other: Any) -> "ProgramState":
        self._handle.append(as_nodes(other))
        return self

    def fork(self, n: int) -> "ForkGroup":
        """`n` branches, each continuing from a copy of this stream's state."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"fork needs a positive int, got {n!r}")
        return ForkGroup(self, [ProgramState(h) for h in self._handle.fork(n)])

    @contextlib.contextmanager
    def _role(self, role: str) -> Iterator["ProgramState"]:
        self._handle.append((RoleBegin(role),))
        yield self
        self._handle.append((RoleEnd(role),))

    def system(self) -> contextlib.AbstractContextManager:
        """`with s.system(): s += ...` appends a system message."""
        return self._role("system")

    def user(self) -> contextlib.AbstractContextManager:
        """`with s.user(): s += ...` appends a user message."""
        return self._role("user")

    def assistant(self) -> contextlib.AbstractContextManager:
        """`with s.assistant(): s += ll.gen(...)` appends an assistant message."""
        return self._role("assistant")

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator["ProgramState"]:
        """Captures the text appended inside the block into variable `name`."""
        self._handle.append((VarScopeBegin(name),))
        yield self
        self._handle.append((VarScopeEnd(name),))

    # ---- reading ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self._handle.get(name)

    def get_var(self, name: str) -> Any:
        return self._handle.get(name)

    def get_meta_info(self, name: Optional[str] = None) -> Any:
        """The backend's meta info for gen `name` (prompt/completion/cached tokens, finish
        reason, logprobs when asked); for a select, the per-choice scores; after a join, a list.
        Without a name: every variable's meta info, as a dict."""
        if name is None:
            return dict(self._handle.state().meta_info)
        return self._handle.meta_info(name)

    def text(self) -> str:
        return self._handle.state().text

    def messages(self) -> list:
        """The conversation so far as OpenAI-format messages (closed roles only)."""
        return [dict(m) for m in self._handle.state().messages]

    def variables(self) -> dict:
        return dict(self._handle.state().variables)

    def sync(self) -> "ProgramState":
        """Waits for the whole run (every fork included); raises its first error."""
        if self._finished is not None:
            self._finished.result()
        else:
            self._handle.state()
        return self

    def text_iter(self, name: Optional[str] = None) -> Iterator[str]:
        """The text as it is appended (with `run(stream=True)`, token by token); with `name`,
        only the pieces of that variable, ending when it is complete."""
        for piece in self._handle.pieces(name):
            if name is None or piece.name == name:
                yield piece.text

    async def text_async_iter(self, name: Optional[str] = None) -> AsyncIterator[str]:
        """`text_iter` for `async for`; waits in a worker thread so the caller's loop runs on."""
        iterator = self.text_iter(name)
        done = object()
        while True:
            piece = await asyncio.to_thread(next, iterator, done)
            if piece is done:
                return
            yield piece

    def _repr_html_(self) -> str:
        from lmlang.html import render_html

        return render_html(self._handle.state().pieces)

    def __repr__(self) -> str:
        """Never waits: shows the text produced so far."""
        if getattr(self._handle, "tracing", False):
            return "<ProgramState (tracing)>"
        text = self._handle.snapshot()
        return "<ProgramState (not started)>" if text is None else f"<ProgramState {text[-200:]!r}>"


class ForkGroup:
    """The branches of `s.fork(n)`: `forks[i] += ...`, `forks += lambda i: ...`, `forks.join()`."""

    def __init__(self, parent: ProgramState, states: list) -> None:
        self._parent = parent
        self._states = states
        self._joined = False

    def __getitem__(self, i: int) -> ProgramState:
        return self._states[i]

    def __setitem__(self, i: int, state: ProgramState) -> None:
        # `forks[i] += x` appends in place, then assigns the same branch back
        if state is not self._states[i]:
            raise TypeError("fork branches cannot be replaced; append to them with forks[i] += ...")

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self._states)

    def __iadd__(self, other: Any) -> "ForkGroup":
        """Appends `other` to every branch; a callable is called with the branch index."""
        for i, state in enumerate(self._states):
            state += other(i) if callable(other) and not _is_expr(other) else other
        return self

    def join(self) -> None:
        """Waits for the branches (lazily) and gathers every variable they set into the parent as a
        list in branch order; the branches take no more appends."""
        if self._joined:
            raise RuntimeError("this fork group is already joined")
        self._joined = True
        self._parent._handle.join([s._handle for s in self._states])


def _is_expr(x: Any) -> bool:
    return isinstance(x, (str, Expr)) or hasattr(type(x), "__lmlang_node__")

