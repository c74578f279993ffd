"""The tracer: runs a program function once with placeholders and records a `Program`.

Arguments not given to `trace()` are `TracedArgument` placeholders; `s["x"]` returns a
`TracedVar`. Both can be appended (`s += "Q: " + question`) but not used as Python values:
control flow, comparisons, `str()`, f-strings and method calls on them raise `TraceError`
naming the file and line, because the DAG would depend on something only known at run time.
Loops with a fixed count simply unroll.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NoReturn

from lmlang.errors import ArgumentUsedError, TraceError
from lmlang.ir import Argument, Fork, Join, Seq, VarRef, as_nodes
from lmlang.program import Program, StreamSpec
from lmlang.visitor import ShapeChecker, StreamShape


class _Traced:
    """A value known only when the program runs; appendable, not usable as a Python value."""

    __slots__ = ("_node",)
    _error: type = TraceError

    def __init__(self, node: Any) -> None:
        object.__setattr__(self, "_node", node)

    def __lmlang_node__(self) -> Any:
        return self._node

    def __add__(self, other: Any) -> Seq:
        return Seq(as_nodes(self) + as_nodes(other))

    def __radd__(self, other: Any) -> Seq:
        return Seq(as_nodes(other) + as_nodes(self))

    def _label(self) -> str:
        raise NotImplementedError

    def _used(self, how: str) -> NoReturn:
        raise self._error(
            f"{self._label()} is used {how} while tracing; its value is only known when the program runs. "
            f"Append it instead (s += 'text ' + x), or run the function eagerly with .run()."
        )

    def __format__(self, spec: str) -> NoReturn:
        raise self._error(
            f"{self._label()} is used in an f-string or str.format() while tracing; the text would be "
            f"fixed at trace time. Append the pieces instead: s += 'Q: ' + x + '\\n'."
        )

    def __str__(self) -> NoReturn:
        self._used("as a str (str(), print, %-format)")

    def __repr__(self) -> str:
        return f"<{self._label()} (traced)>"

    def __bool__(self) -> NoReturn:
        self._used("in a condition (if / while / and / or)")

    def __eq__(self, other: Any) -> NoReturn:
        self._used("in a comparison")

    __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __eq__

    def __hash__(self) -> NoReturn:
        self._used("as a dict key or set member")

    def __len__(self) -> NoReturn:
        self._used("with len()")

    def __iter__(self) -> NoReturn:
        self._used("as an iterable")

    def __contains__(self, item: Any) -> NoReturn:
        self._used("with `in`")

    def __getitem__(self, key: Any) -> NoReturn:
        self._used("with [] indexing")

    def __int__(self) -> NoReturn:
        self._used("as a number")

    __float__ = __index__ = __int__

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("_"):  # protocol probes (copy, pickle, IPython) must see a plain miss
            raise AttributeError(name)
        self._used(f"through its attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        self._used(f"by setting attribute {name!r}")


class TracedArgument(_Traced):
    __slots__ = ()
    _error = ArgumentUsedError

    def _label(self) -> str:
        return f"traced argument {self._node.name!r}"


class TracedVar(_Traced):
    __slots__ = ()

    def _label(self) -> str:
        return f"generated variable s[{self._node.name!r}]"


class Tracer:
    """Collects the streams of one trace."""

    def __init__(self) -> None:
        self.specs: dict = {}  # sid -> [parent, list of nodes]
        self.handles: dict = {}

    def new_handle(self, parent: Any, shape: StreamShape) -> "TraceHandle":
        sid = f"s{len(self.specs)}"
        self.specs[sid] = [parent, []]
        handle = TraceHandle(self, sid, shape)
        self.handles[sid] = handle
        return handle

    def program(self, name: str, arguments: tuple) -> Program:
        streams = tuple(StreamSpec(sid, parent, tuple(nodes)) for sid, (parent, nodes) in self.specs.items())
        return Program(name, arguments, streams).validate()


class TraceHandle:
    """The tracing side of `ProgramState`: records nodes, hands out placeholders."""

    tracing = True

    def __init__(self, tracer: Tracer, sid: str, shape: StreamShape) -> None:
        self.tracer = tracer
        self.sid = sid
        self.shape = shape
        self.checker = ShapeChecker(shape, lambda s: tracer.handles[s].shape)

    def append(self, nodes: tuple) -> None:
        for node in nodes:
            if isinstance(node, VarRef) and node.stream == self.sid:
                node = VarRef(node.name)
            self.checker.visit(node)
            self.tracer.specs[self.sid][1].append(node)

    def get(self, name: str) -> TracedVar:
        if name not in self.shape.defined:
            raise TraceError(f"variable {name!r} is read before any gen, select or var_scope sets it")
        return TracedVar(VarRef(name, self.sid))

    def meta_info(self, name: str) -> NoReturn:
        raise TraceError(f"get_meta_info({name!r}) has no value while tracing")

    def fork(self, n: int) -> list:
        children = [self.tracer.new_handle(self.sid, self.shape.forked()) for _ in range(n)]
        self.append((Fork(tuple(c.sid for c in children)),))
        return children

    def join(self, children: list) -> None:
        self.append((Join(tuple(c.sid for c in children)),))

    def state(self) -> NoReturn:
        raise TraceError("the state's text, messages and variables have no value while tracing")

    def pieces(self, until_var: Any) -> NoReturn:
        raise TraceError("text_iter has no value while tracing")


def trace_function(fn: Callable[..., Any], name: str, bound: dict, placeholders: tuple) -> Program:
    """Traces `fn(state, **bound, **{p: placeholder})` into a `Program` needing `placeholders`."""
    from lmlang.state import ProgramState

    tracer = Tracer()
    state = ProgramState(tracer.new_handle(None, StreamShape()))
    arguments = dict(bound)
    arguments.update({p: TracedArgument(Argument(p)) for p in placeholders})
    fn(state, **arguments)
    return tracer.program(name, placeholders)


def signature_arguments(fn: Callable[..., Any]) -> list:
    """The names of a program function's parameters after the state."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"{fn.__name__} must take the program state as its first parameter")
    return [p.name for p in params[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
