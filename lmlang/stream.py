"""Streams at run time: the state a stream builds, its node queue and worker, and one run's streams.

A `RuntimeStream` executes its nodes in order on an event loop (one asyncio task), with the
node semantics of `lmlang.interpreter.StreamInterpreter`. Nodes arrive from the program's
Python code (the interpreter: any thread, as the code runs) or all at once from a `Program`
(the executor). Readers in other threads (`state["x"]`, `text()`) wait on a condition that the
worker signals after every node, so a read returns as soon as its answer exists and never hangs:
it ends with the value, with the stream's error, or with a `KeyError` once the stream is idle.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from lmlang.ir import Gen, Join, Select, VarScopeEnd
from lmlang.visitor import StreamShape


@dataclass(frozen=True)
class Piece:
    """One appended piece of text: `kind` is "text", "marker" (chat template), "gen" or "select";
    `name` the variable it belongs to; `role` the role open when it was appended."""

    text: str
    kind: str
    name: Optional[str]
    role: Optional[str]


class StreamState:
    """What a stream has produced: its text (the source of truth), messages, variables, meta info."""

    def __init__(self) -> None:
        self.text = ""
        self.pieces: list = []
        self.messages: list = []
        self.role_start = 0  # where the open role's content starts in `text`
        self.scope_starts: dict = {}
        self.variables: dict = {}
        self.meta_info: dict = {}
        self.shape = StreamShape()

    def append(self, text: str, kind: str = "text", name: Optional[str] = None, role: Optional[str] = None) -> None:
        if text:
            self.text += text
            self.pieces.append(Piece(text, kind, name, role if role is not None else self.shape.role))

    def set_var(self, name: Optional[str], value: Any, meta_info: Optional[dict] = None) -> None:
        if name is None:
            return
        self.variables[name] = value
        if meta_info is not None:
            self.meta_info[name] = meta_info

    def open_messages(self) -> list:
        """The messages so far, with the open role's partial content as the last one."""
        out = [dict(m) for m in self.messages]
        if self.shape.role is not None:
            out.append({"role": self.shape.role, "content": self.text[self.role_start :]})
        return out

    def forked(self) -> "StreamState":
        child = StreamState()
        child.text = self.text
        child.pieces = list(self.pieces)
        child.messages = copy.deepcopy(self.messages)
        child.role_start = self.role_start
        child.scope_starts = dict(self.scope_starts)
        child.variables = dict(self.variables)
        child.meta_info = dict(self.meta_info)
        child.shape = self.shape.forked()
        return child


class RunAborted(Exception):
    """A stream that never ran because the stream that would have started it failed."""


class RuntimeStream:
    """One stream's queue of nodes and the task that executes them."""

    def __init__(self, run: "RunContext", sid: str, parent: Optional["RuntimeStream"]) -> None:
        self.run = run
        self.sid = sid
        self.parent = parent
        self.children: list = []
        self.state: Optional[StreamState] = None
        self.error: Optional[BaseException] = None
        self._nodes: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._submitted = 0
        self._executed = 0
        # name -> the executed count after which the last submitted setter of `name` has run
        self._setters: dict = {}
        self._join_at = 0
        self._ended = False
        self._done = False
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._task: Optional[asyncio.Task] = None

    # ---- producer side (any thread) -------------------------------------------------------
    def submit(self, nodes: tuple) -> None:
        with self._cond:
            if self.error is not None:
                raise self.error
            if self._ended:
                raise RuntimeError(f"stream {self.sid} has ended (a fork branch takes no appends after join)")
            for node in nodes:
                self._submitted += 1
                for name in _names_set_by(node):
                    self._setters[name] = self._submitted
                if isinstance(node, Join):
                    self._join_at = self._submitted
            self._nodes.extend(nodes)
        self.run.call_soon(self._wake.set)

    def end(self) -> None:
        with self._cond:
            self._ended = True
        self.run.call_soon(self._wake.set)

    # ---- worker side (the run's loop) ----------------------------------------------------
    def start(self, state: StreamState) -> None:
        """Begins executing with `state` (call on the loop)."""
        self.state = state
        self._task = asyncio.get_running_loop().create_task(self._work())
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        # a task cancelled before its first step never runs `_work`'s cleanup
        if task.cancelled() and not self._done:
            self._fail(RunAborted(f"stream {self.sid} was cancelled"))
            self._finish()

    async def _work(self) -> None:
        interpreter = self.run.interpreter_for(self)
        try:
            while True:
                with self._cond:
                    node = self._nodes.popleft() if self._nodes else None
                    ended = self._ended
                if node is None:
                    if ended:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await interpreter.execute(node)
                with self._cond:
                    self._executed += 1
                    self._cond.notify_all()
        except asyncio.CancelledError:
            self._fail(RunAborted(f"stream {self.sid} was cancelled"))
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is kept and re-raised to readers
            self._fail(e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._finish()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = error
            self._nodes.clear()
            self._cond.notify_all()
        for child in self.children:
            if child.state is None:
                child._fail(RunAborted(f"stream {child.sid} did not start: stream {self.sid} failed: {error!r}"))
                child._finish()

    def _finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self.run.call_soon(self._finished.set)
        self.run.call_soon(self.run.stream_finished)

    def cancel(self) -> None:
        """Stops the stream (any thread): queued nodes are dropped, the running one cancelled."""
        with self._cond:
            self._ended = True
            self._nodes.clear()
        self.run.call_soon(self._cancel_on_loop)

    def _cancel_on_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        elif not self._done:
            self._fail(RunAborted(f"stream {self.sid} was cancelled"))
            self._finish()

    def notify(self) -> None:
        """Wakes readers after the state changed mid-node (a streamed piece)."""
        with self._cond:
            self._cond.notify_all()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def finished_cleanly(self) -> bool:
        return self._done and self.error is None

    # ---- readers (any thread but the loop's) ---------------------------------------------
    def _idle(self) -> bool:
        return self._done or (self.state is not None and self._executed == self._submitted)

    def wait_idle(self) -> StreamState:
        """Waits until every node submitted so far has run; raises the stream's error."""
        with self._cond:
            self._cond.wait_for(lambda: self.error is not None or self._idle())
            if self.error is not None:
                raise self.error
            return self.state

    def wait_done(self) -> StreamState:
        with self._cond:
            self._cond.wait_for(lambda: self._done)
            if self.error is not None:
                raise self.error
            return self.state

    def _ready(self, name: str, read: Callable[[StreamState], dict]) -> bool:
        """`name` is set and no setter of it submitted so far is still pending."""
        return (
            self.state is not None
            and name in read(self.state)
            and self._executed >= max(self._setters.get(name, 0), self._join_at)
        )

    def get(self, name: str, read: Callable[[StreamState], dict]) -> Any:
        """`read(state)[name]` once every node submitted to set it has run; `KeyError` if the
        stream goes idle without it."""
        with self._cond:
            self._cond.wait_for(lambda: self._ready(name, read) or self.error is not None or self._idle())
            if self._ready(name, read):
                return read(self.state)[name]
            if self.error is not None:
                raise self.error
        known = sorted(read(self.state)) if self.state is not None else []
        raise KeyError(f"variable {name!r} was not set (set so far: {known})")

    def pieces(self, until_var: Optional[str]) -> Iterator[Piece]:
        """Appended pieces as they come; ends when `until_var` is set, or at the stream's end."""
        index = 0
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self.error is not None
                    or (self.state is not None and len(self.state.pieces) > index)
                    or self._done
                    or (until_var is not None and self._ready(until_var, _variables))
                    or (until_var is not None and self._idle())
                )
                new = list(self.state.pieces[index:]) if self.state is not None else []
                finished = (
                    self._done
                    or (until_var is not None and self._ready(until_var, _variables))
                    or (until_var is not None and self._idle())
                )
                error = self.error
            index += len(new)
            yield from new
            if error is not None:
                raise error
            if finished:
                return


class StreamReader:
    """The read side of a `ProgramState` over a runtime stream (a compiled run's root is only
    this; the interpreter's handle adds appending)."""

    tracing = False

    def __init__(self, stream: RuntimeStream) -> None:
        self.stream = stream

    def append(self, nodes: tuple) -> None:
        raise RuntimeError("this state is read-only (the program that made it has finished)")

    def fork(self, n: int) -> list:
        raise RuntimeError("this state is read-only (the program that made it has finished)")

    def join(self, children: list) -> None:
        raise RuntimeError("this state is read-only (the program that made it has finished)")

    def get(self, name: str) -> Any:
        return self.stream.get(name, _variables)

    def meta_info(self, name: str) -> Any:
        return self.stream.get(name, lambda st: st.meta_info)

    def state(self) -> StreamState:
        return self.stream.wait_idle()

    def pieces(self, until_var: Optional[str]) -> Iterator[Piece]:
        return self.stream.pieces(until_var)

    def snapshot(self) -> Optional[str]:
        """The text so far, without waiting (None before the stream started)."""
        state = self.stream.state
        return None if state is None else state.text


def _variables(state: StreamState) -> dict:
    return state.variables


def _names_set_by(node: Any) -> tuple:
    if isinstance(node, (Gen, Select)) and node.name is not None:
        return (node.name,)
    if isinstance(node, VarScopeEnd):
        return (node.name,)
    return ()


class RunContext:
    """One run of a program: its backend, defaults and arguments, and every stream it created.

    `interpreter_factory(run, stream)` gives the node semantics for a stream (the interpreter).
    `stream_finished` keeps `all_finished` up to date; `pins` holds prefix pins to release.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, backend: Any, defaults: dict, arguments: dict,
                 stream: bool, interpreter_factory: Callable[["RunContext", RuntimeStream], Any]) -> None:
        self.loop = loop
        self.backend = backend
        self.defaults = defaults
        self.arguments = arguments
        self.stream = stream
        self.streams: dict = {}
        self.pins: dict = {}
        self._interpreter_factory = interpreter_factory
        self._all_finished = asyncio.Event()

    def call_soon(self, fn: Callable[[], Any]) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(fn)

    def new_stream(self, parent: Optional[RuntimeStream], sid: Optional[str] = None) -> RuntimeStream:
        sid = sid if sid is not None else f"s{len(self.streams)}"
        if sid in self.streams:
            raise ValueError(f"duplicate stream id {sid!r}")
        stream = RuntimeStream(self, sid, parent)
        self.streams[sid] = stream
        if parent is not None:
            parent.children.append(stream)
        return stream

    def interpreter_for(self, stream: RuntimeStream) -> Any:
        return self._interpreter_factory(self, stream)

    def child_shape(self, sid: str) -> StreamShape:
        return self.streams[sid].state.shape

    def stream_finished(self) -> None:
        if all(s._done for s in list(self.streams.values())):
            self._all_finished.set()

    async def finish(self) -> None:
        """Waits for every stream, releases pins, then raises the first error (the root's first)."""
        while not all(s._done for s in list(self.streams.values())):
            self._all_finished.clear()
            self.stream_finished()
            await self._all_finished.wait()
        for handle in list(self.pins.values()):
            await self.backend.unpin(handle)
        self.pins.clear()
        errors = [s.error for s in self.streams.values() if s.error is not None]
        if errors:
            raise errors[0]

    def cancel(self) -> None:
        for stream in list(self.streams.values()):
            stream.cancel()
