"""The one visitor over IR nodes, and the structural rules every consumer enforces with it.

`NodeVisitor.visit(node)` calls `visit_<NodeType>(node)`. The tracer, the interpreter and the
program executor all subclass it; a subclass must handle every node type in `NODE_TYPES`
(checked when the class is created), so adding a node type cannot be forgotten anywhere.

`ShapeChecker` is the visitor that enforces the rules that make a stream well formed (roles
do not nest and end as they began, variable references name variables already set, scopes
close). It runs while tracing (fail at the line that broke the rule), in the interpreter before
a node is queued, and in the executor before a node from a deserialised program runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lmlang.errors import ProgramStructureError
from lmlang.ir import NODE_TYPES, Node


class NodeVisitor:
    """Dispatch on node type. Subclasses define `visit_<Type>` for every type in `NODE_TYPES`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [name for name in NODE_TYPES if not callable(getattr(cls, f"visit_{name}", None))]
        if missing:
            raise TypeError(f"{cls.__name__} does not handle node type(s): {', '.join(missing)}")

    def visit(self, node: Node) -> Any:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise TypeError(f"not a program node: {node!r}")
        return method(node)


@dataclass
class StreamShape:
    """The structural state of one stream: open role and scopes, variables set so far."""

    role: Optional[str] = None
    roles_seen: bool = False
    scopes: list = field(default_factory=list)
    defined: set = field(default_factory=set)
    own: list = field(default_factory=list)  # variables set since this stream forked, in order

    def forked(self) -> "StreamShape":
        child = copy.deepcopy(self)
        child.own = []
        return child

    def define(self, name: Optional[str]) -> None:
        if name is None:
            return
        self.defined.add(name)
        if name not in self.own:
            self.own.append(name)


class ShapeChecker(NodeVisitor):
    """Updates a `StreamShape` with each node; raises `ProgramStructureError` on a broken rule.

    `child_shape(stream_id)` gives the shape of a child stream when a Join gathers its variables.
    """

    def __init__(self, shape: StreamShape, child_shape: Optional[Callable[[str], StreamShape]] = None) -> None:
        self.shape = shape
        self.child_shape = child_shape

    def visit_Text(self, node) -> None:
        pass

    def visit_Argument(self, node) -> None:
        pass

    def visit_VarRef(self, node) -> None:
        if node.stream is None and node.name not in self.shape.defined:
            raise ProgramStructureError(f"variable {node.name!r} is used before it is set")

    def visit_Gen(self, node) -> None:
        self.shape.define(node.name)

    def visit_Select(self, node) -> None:
        self.shape.define(node.name)

    def visit_RoleBegin(self, node) -> None:
        if self.shape.role is not None:
            raise ProgramStructureError(f"roles cannot nest: {node.role!r} begins inside the open {self.shape.role!r} role")
        self.shape.role = node.role

    def visit_RoleEnd(self, node) -> None:
        if self.shape.role != node.role:
            raise ProgramStructureError(f"role {node.role!r} ends but the open role is {self.shape.role!r}")
        self.shape.role = None
        self.shape.roles_seen = True

    def visit_VarScopeBegin(self, node) -> None:
        if node.name in self.shape.scopes:
            raise ProgramStructureError(f"var_scope {node.name!r} is already open")
        self.shape.scopes.append(node.name)

    def visit_VarScopeEnd(self, node) -> None:
        if node.name not in self.shape.scopes:
            raise ProgramStructureError(f"var_scope {node.name!r} ends but is not open")
        self.shape.scopes.remove(node.name)
        self.shape.define(node.name)

    def visit_Fork(self, node) -> None:
        pass

    def visit_Join(self, node) -> None:
        if self.child_shape is None:
            return
        for child in node.children:
            for name in self.child_shape(child).own:
                self.shape.define(name)
