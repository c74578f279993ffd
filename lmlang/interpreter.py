"""The interpreter: what each node does when it runs, and eager execution of a Python program.

`StreamInterpreter` is the node semantics shared by eager runs and by the program executor
(`lmlang.executor`), which is why the two give identical text: at every gen or select the
prompt is the whole text of the stream so far, handed to the backend as text (the backend
tokenizes it canonically; its prefix cache recovers what earlier work shares).

`run_function` runs a decorated function eagerly: the function's Python code appends nodes
from the caller's thread while the streams execute them on the background loop; `s["x"]`
waits for `x`.
"""

from __future__ import annotations

from typing import Any, Callable

from lmlang.backends.base import GenRequest, SelectRequest
from lmlang.choices import CHOICE_METHODS
from lmlang.ir import Fork, Join
from lmlang.loop import get_loop, submit
from lmlang.sampling import merge
from lmlang.stream import RunContext, RuntimeStream, StreamReader, StreamState
from lmlang.visitor import NodeVisitor, ShapeChecker, StreamShape


class StreamInterpreter(NodeVisitor):
    """Executes the nodes of one stream against the run's backend (all methods run on the loop)."""

    def __init__(self, run: RunContext, stream: RuntimeStream) -> None:
        self.run = run
        self.stream = stream
        self.state = stream.state
        self.checker = ShapeChecker(self.state.shape, run.child_shape)

    async def execute(self, node: Any) -> None:
        """Checks the node against the stream's shape, then runs it (a Join checks after it
        has gathered, because it defines what its children set)."""
        if isinstance(node, Join):
            await self.visit(node)
            self.checker.visit(node)
        else:
            self.checker.visit(node)
            await self.visit(node)

    async def visit_Text(self, node) -> None:
        self.state.append(node.value)

    async def visit_Argument(self, node) -> None:
        if node.name not in self.run.arguments:
            raise ValueError(f"the program needs argument {node.name!r}, which was not given")
        self.state.append(str(self.run.arguments[node.name]))

    async def visit_VarRef(self, node) -> None:
        if node.stream is None or node.stream == self.stream.sid:
            value = self.state.variables[node.name]
        else:
            other = self.run.streams[node.stream]
            await other.wait_finished()
            if other.error is not None:
                raise other.error
            if node.name not in other.state.variables:
                raise KeyError(f"stream {node.stream} did not set variable {node.name!r}")
            value = other.state.variables[node.name]
        self.state.append(str(value))

    async def visit_Gen(self, node) -> None:
        params = merge(self.run.backend.default_params, self.run.defaults, node.overrides)
        streamed = []

        def on_text(piece: str) -> None:
            streamed.append(piece)
            self.state.append(piece, "gen", node.name)
            self.stream.notify()

        request = GenRequest(
            text=self.state.text,
            messages=self.state.open_messages(),
            params=params,
            return_logprob=bool(node.return_logprob) or bool(node.top_logprobs_num),
            top_logprobs_num=node.top_logprobs_num or 0,
            on_text=on_text if self.run.stream else None,
        )
        result = await self.run.backend.generate(request)
        finish = result.meta_info.get("finish_reason") or {}
        if isinstance(finish, dict) and finish.get("type") == "abort":
            raise RuntimeError(f"gen {node.name!r} was aborted by the backend: {finish.get('message') or 'no reason given'}")
        already = "".join(streamed)
        if not result.text.startswith(already):
            raise RuntimeError(f"the backend streamed {already!r} but returned {result.text!r}")
        self.state.append(result.text[len(already) :], "gen", node.name)
        self.state.set_var(node.name, convert(node.dtype, result.text, node.name), result.meta_info)

    async def visit_Select(self, node) -> None:
        request = SelectRequest(
            text=self.state.text,
            messages=self.state.open_messages(),
            choices=node.choices,
            method=CHOICE_METHODS[node.method],
        )
        result = await self.run.backend.select(request)
        choice = node.choices[result.index]
        self.state.append(choice, "select", node.name)
        self.state.set_var(node.name, choice, result.meta_info)

    async def visit_RoleBegin(self, node) -> None:
        template = self.run.backend.chat_template()
        self.state.append(template.begin(node.role, first=not self.state.shape.roles_seen), "marker", role=node.role)
        self.state.role_start = len(self.state.text)

    async def visit_RoleEnd(self, node) -> None:
        template = self.run.backend.chat_template()
        self.state.messages.append({"role": node.role, "content": self.state.text[self.state.role_start :]})
        self.state.append(template.end(node.role), "marker", role=node.role)

    async def visit_VarScopeBegin(self, node) -> None:
        self.state.scope_starts[node.name] = len(self.state.text)

    async def visit_VarScopeEnd(self, node) -> None:
        start = self.state.scope_starts.pop(node.name)
        self.state.set_var(node.name, self.state.text[start:])

    async def visit_Fork(self, node) -> None:
        children = [self.run.streams[sid] for sid in node.children]
        if len(children) > 1 and self.state.text:
            # hold the shared prefix in the backend's cache while the branches run
            handle = await self.run.backend.pin(self.state.text)
            if handle is not None:
                self.run.pins[node.children] = handle
        for child in children:
            child.start(self.state.forked())

    async def visit_Join(self, node) -> None:
        children = [self.run.streams[sid] for sid in node.children]
        for child in children:
            await child.wait_finished()
        for child in children:
            if child.error is not None:
                raise child.error
        names: list = []
        for child in children:
            names.extend(n for n in child.state.shape.own if n not in names)
        for name in names:
            self.state.variables[name] = [child.state.variables.get(name) for child in children]
            self.state.meta_info[name] = [child.state.meta_info.get(name) for child in children]
        handle = self.run.pins.pop(node.children, None)
        if handle is not None:
            await self.run.backend.unpin(handle)


_PARSERS = {"int": "parse_int", "float": "parse_float", "bool": "parse_bool", "string": "parse_string"}


def convert(dtype: str, text: str, name: Any) -> Any:
    """The Python value of a typed gen's text (the grammar package's parsers, which match its regexes)."""
    if dtype == "str":
        return text
    from lmlang.grammar import typed

    try:
        return getattr(typed, _PARSERS[dtype])(text)
    except (ValueError, KeyError) as e:
        raise ValueError(f"gen {name!r} produced {text!r}, which is not a {dtype} ({e}); was it cut by max_tokens?") from None


class InterpreterHandle(StreamReader):
    """The program-facing side of one stream in an eager run (used by `ProgramState`).

    It checks each node against its own copy of the stream's shape before queueing it, so a
    structural mistake raises at the line of the program that made it.
    """

    def __init__(self, run: RunContext, stream: RuntimeStream, shape: StreamShape, handles: dict) -> None:
        super().__init__(stream)
        self.run = run
        self.shape = shape
        self.handles = handles
        handles[stream.sid] = self
        self.checker = ShapeChecker(shape, lambda sid: handles[sid].shape)

    def append(self, nodes: tuple) -> None:
        for node in nodes:
            self.checker.visit(node)
        self.stream.submit(nodes)

    def fork(self, n: int) -> list:
        children = [self.run.new_stream(self.stream) for _ in range(n)]
        handles = [InterpreterHandle(self.run, c, self.shape.forked(), self.handles) for c in children]
        self.append((Fork(tuple(c.sid for c in children)),))
        return handles

    def join(self, children: list) -> None:
        for child in children:
            child.stream.end()
        self.append((Join(tuple(c.stream.sid for c in children)),))


def run_function(fn: Callable[..., Any], arguments: dict, backend: Any, defaults: dict, stream: bool) -> Any:
    """Runs `fn(state, **arguments)` eagerly; returns its `ProgramState` (see `LMFunction.run`)."""
    from lmlang.state import ProgramState

    loop = get_loop()
    run = RunContext(loop, backend, defaults, arguments, stream, StreamInterpreter)
    root = run.new_stream(None)
    run.call_soon(lambda: root.start(StreamState()))
    state = ProgramState(InterpreterHandle(run, root, StreamShape(), {}))
    try:
        fn(state, **arguments)
    except BaseException:
        run.cancel()
        submit(run.finish())  # releases pins once the cancelled streams have stopped
        raise
    for s in list(run.streams.values()):
        s.end()
    state._finished = submit(run.finish())
    if not stream:
        state._finished.result()
    return state
