"""`Program`: a traced program as data — a DAG of streams of IR nodes, linked by fork/join edges.

The root stream comes first; every other stream names its parent and starts at the parent's
`Fork` node listing it; a `Join` in the parent waits for listed children. `Program.validate()`
checks all of that and the per-stream structure (with the same `ShapeChecker` the interpreter
uses), so a program read from JSON is safe to hand to the executor.

JSON format (`to_json`): `{"format": "lmlang.program", "version": 1, "name", "arguments",
"streams": [{"id", "parent", "nodes": [{"op": ..., <fields>}]}]}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

from lmlang.errors import ProgramStructureError
from lmlang.ir import Fork, Gen, Join, Node, Select, VarRef, node_from_dict, node_to_dict
from lmlang.sampling import GEN_TO_SAMPLING
from lmlang.visitor import ShapeChecker, StreamShape

FORMAT = "lmlang.program"


@dataclass(frozen=True)
class StreamSpec:
    """One stream of a program: its id, the stream that forks it (None for the root), its nodes."""

    id: str
    parent: Optional[str]
    nodes: tuple


@dataclass(frozen=True)
class Edge:
    """A fork edge (parent -> child at the parent's Fork node) or a join edge (child -> parent)."""

    kind: str
    source: str
    target: str
    index: int  # the Fork / Join node's position in the parent stream


@dataclass(frozen=True)
class Program:
    """A traced program. `arguments` are the placeholders it needs bound when it runs."""

    name: str
    arguments: tuple
    streams: tuple
    VERSION: ClassVar[int] = 1

    @property
    def root(self) -> StreamSpec:
        return self.streams[0]

    def stream(self, sid: str) -> StreamSpec:
        for s in self.streams:
            if s.id == sid:
                return s
        raise KeyError(f"no stream {sid!r} in program {self.name!r}")

    @property
    def edges(self) -> list:
        out = []
        for s in self.streams:
            for i, node in enumerate(s.nodes):
                if isinstance(node, Fork):
                    out.extend(Edge("fork", s.id, c, i) for c in node.children)
                elif isinstance(node, Join):
                    out.extend(Edge("join", c, s.id, i) for c in node.children)
        return out

    def nodes_of_type(self, *types: type) -> list:
        """`(stream id, node)` for every node of the given types, streams in order."""
        return [(s.id, n) for s in self.streams for n in s.nodes if isinstance(n, types)]

    @property
    def gen_nodes(self) -> list:
        return self.nodes_of_type(Gen, Select)

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> "Program":
        """Raises `ProgramStructureError` unless the program is a well-formed DAG."""
        if not self.streams:
            raise ProgramStructureError("a program needs a root stream")
        ids = [s.id for s in self.streams]
        if len(set(ids)) != len(ids):
            raise ProgramStructureError(f"duplicate stream ids in {ids}")
        if self.streams[0].parent is not None:
            raise ProgramStructureError("the first stream must be the root (no parent)")
        index = {sid: i for i, sid in enumerate(ids)}
        forked_at: dict = {}
        for s in self.streams:
            if s is not self.streams[0] and (s.parent is None or index.get(s.parent, len(ids)) >= index[s.id]):
                raise ProgramStructureError(f"stream {s.id!r} must name a parent listed before it, got {s.parent!r}")
            for i, node in enumerate(s.nodes):
                if not isinstance(node, Node):
                    raise ProgramStructureError(f"stream {s.id!r} holds a non-node {node!r}")
                if isinstance(node, Fork):
                    for c in node.children:
                        if c not in index or self.streams[index[c]].parent != s.id or c in forked_at:
                            raise ProgramStructureError(f"Fork in {s.id!r} lists {c!r}, which is not its own unforked child")
                        forked_at[c] = (s.id, i)
                elif isinstance(node, Join):
                    for c in node.children:
                        if forked_at.get(c, (None,))[0] != s.id:
                            raise ProgramStructureError(f"Join in {s.id!r} lists {c!r}, which it has not forked")
                elif isinstance(node, VarRef) and node.stream not in (None, s.id):
                    if node.stream not in forked_at or forked_at[node.stream][0] != s.id:
                        raise ProgramStructureError(f"{s.id!r} reads {node.name!r} from {node.stream!r}, which it has not forked")
        for s in self.streams[1:]:
            if s.id not in forked_at:
                raise ProgramStructureError(f"stream {s.id!r} is never forked")
        self._check_shapes()
        return self

    def _check_shapes(self) -> None:
        shapes: dict = {}

        def run(spec: StreamSpec, shape: StreamShape) -> None:
            shapes[spec.id] = shape
            checker = ShapeChecker(shape, lambda sid: shapes[sid])
            for node in spec.nodes:
                if isinstance(node, Fork):
                    for c in node.children:
                        run(self.stream(c), shape.forked())
                checker.visit(node)

        run(self.root, StreamShape())

    # ---- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.VERSION,
            "name": self.name,
            "arguments": list(self.arguments),
            "streams": [{"id": s.id, "parent": s.parent, "nodes": [node_to_dict(n) for n in s.nodes]} for s in self.streams],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> "Program":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not an lmlang program (expected format {FORMAT!r})")
        if d.get("version") != cls.VERSION:
            raise ValueError(f"unsupported program version {d.get('version')!r}; this lmlang reads version {cls.VERSION}")
        try:
            streams = tuple(
                StreamSpec(_str(s["id"]), None if s["parent"] is None else _str(s["parent"]), tuple(node_from_dict(n) for n in s["nodes"]))
                for s in d["streams"]
            )
            program = cls(_str(d["name"]), tuple(_str(a) for a in d["arguments"]), streams)
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed program JSON: {e!r}") from None
        return program.validate()

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "Program":
        """Reads `to_json()` output; raises `ValueError` for anything else (unknown node types,
        bad fields, a broken DAG), so a server can accept programs from clients."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"program JSON does not parse: {e}") from None
        return cls.from_dict(d)

    # ---- display -------------------------------------------------------------------------
    def __str__(self) -> str:
        args = ", ".join(self.arguments)
        lines = [f"program {self.name}({args}): {len(self.streams)} stream(s), {len(self.gen_nodes)} gen/select node(s)"]
        for s in self.streams:
            origin = f" (forked from {s.parent})" if s.parent is not None else " (root)"
            lines.append(f"stream {s.id}{origin}:")
            lines.extend(f"  {i:3d}  {_describe(n)}" for i, n in enumerate(s.nodes))
        return "\n".join(lines)


_GEN_NAMES = {field: keyword for keyword, field in GEN_TO_SAMPLING.items()}


def _describe(node: Node) -> str:
    name = type(node).__name__
    if name == "Text":
        text = node.value if len(node.value) <= 60 else node.value[:57] + "..."
        return f"Text {text!r}"
    if isinstance(node, Gen):
        params = " ".join(f"{_GEN_NAMES.get(k, k)}={v!r}" for k, v in node.params)
        dtype = f" -> {node.dtype}" if node.dtype != "str" else ""
        return f"Gen {node.name!r}{dtype} {params}".rstrip()
    if isinstance(node, Select):
        return f"Select {node.name!r} {list(node.choices)!r} by {node.method}"
    if isinstance(node, (Fork, Join)):
        return f"{name} -> {', '.join(node.children)}" if name == "Fork" else f"{name} <- {', '.join(node.children)}"
    if isinstance(node, VarRef):
        return f"VarRef {node.name!r}" + (f" of {node.stream}" if node.stream else "")
    fields = ", ".join(repr(v) for v in vars(node).values())
    return f"{name} {fields}"


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected a string, got {x!r}")
    return x
