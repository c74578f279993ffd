"""An Earley recognizer over terminals, as persistent nodes (one per lexeme boundary).

A node is one closed Earley set: its items are (dotted rule, origin node). Nodes never change
once built; `advance(group)` makes the next node for a completed lexeme and memoizes it on the
node, so a mask computation and the following `accept` share the work, rollback is keeping an old
node, and fork is sharing nodes. Nullable nonterminals are handled as Aycock & Horspool do (a
predicted nullable nonterminal is also stepped over at once), so completions of empty spans
within one set need no second pass.
"""

from __future__ import annotations

from .cfg import CFG


class EarleyTables:
    """Dotted-rule tables of a CFG. Item i is a rule with a dot; item_next[i] is the symbol after
    the dot (None when complete), and i + 1 is the item with the dot one step further."""

    def __init__(self, cfg: CFG):
        self.cfg = cfg
        self.start = cfg.start
        item_next: list[int | None] = []
        item_lhs: list[int] = []
        start_items: dict[int, list[int]] = {}
        for lhs, rhs in cfg.rules:
            start_items.setdefault(lhs, []).append(len(item_next))
            for sym in rhs:
                item_next.append(sym)
                item_lhs.append(lhs)
            item_next.append(None)
            item_lhs.append(lhs)
        self.item_next = item_next
        self.item_lhs = item_lhs
        num_nt = len(cfg.nonterminal_names)
        self.start_items = [tuple(start_items.get(n, ())) for n in range(num_nt)]
        self.nullable = _nullable(cfg, num_nt)


def _nullable(cfg: CFG, num_nt: int) -> list[bool]:
    nullable = [False] * num_nt
    changed = True
    while changed:
        changed = False
        for lhs, rhs in cfg.rules:
            if not nullable[lhs] and all(s >= 0 and nullable[s] for s in rhs):
                nullable[lhs] = True
                changed = True
    return nullable


class EarleyNode:
    """One closed Earley set.

    by_term: terminal -> items waiting for it (what a lexeme may be); by_nt: nonterminal ->
    items waiting for it (used when a later set completes it); accepting: the input so far is a
    sentence. `children` and `memo` are caches filled by the matcher (a node's own items never
    change).
    """

    __slots__ = ("by_term", "by_nt", "accepting", "children", "memo", "lexer", "is_root")

    def __init__(self) -> None:
        self.by_term: dict[int, list[tuple[int, "EarleyNode"]]] = {}
        self.by_nt: dict[int, list[tuple[int, "EarleyNode"]]] = {}
        self.accepting = False
        self.children: dict[int, "EarleyNode | None"] = {}
        self.memo: dict = {}
        self.lexer = None
        self.is_root = False

    @classmethod
    def initial(cls, tables: EarleyTables) -> "EarleyNode":
        node = cls()
        node.is_root = True
        _close(tables, node, [(i, node) for i in tables.start_items[tables.start]])
        return node

    def scan(self, tables: EarleyTables, terminals) -> "EarleyNode | None":
        """The node after a lexeme that is any of `terminals`; None if none is expected here."""
        kernel = [(item + 1, origin) for t in terminals for item, origin in self.by_term.get(t, ())]
        if not kernel:
            return None
        return _close(tables, EarleyNode(), kernel)


def _close(tables: EarleyTables, node: EarleyNode, kernel: list) -> EarleyNode:
    """Fill `node` with the closure (predict + complete) of `kernel`."""
    item_next = tables.item_next
    item_lhs = tables.item_lhs
    start_items = tables.start_items
    nullable = tables.nullable
    start = tables.start
    by_term = node.by_term
    by_nt = node.by_nt
    seen: set = set()
    stack = list(kernel)
    while stack:
        entry = stack.pop()
        if entry in seen:
            continue
        seen.add(entry)
        item, origin = entry
        sym = item_next[item]
        if sym is None:
            lhs = item_lhs[item]
            if lhs == start and origin.is_root:
                node.accepting = True
            if origin is node:
                continue  # empty span: waiters already stepped over the nullable symbol
            waiting = origin.by_nt.get(lhs)
            if waiting:
                stack.extend([(i + 1, o) for i, o in waiting])
        elif sym < 0:
            lst = by_term.get(~sym)
            if lst is None:
                by_term[~sym] = [entry]
            else:
                lst.append(entry)
        else:
            lst = by_nt.get(sym)
            if lst is None:
                by_nt[sym] = [entry]
                stack.extend([(i, node) for i in start_items[sym]])
            else:
                lst.append(entry)
            if nullable[sym]:
                stack.append((item + 1, origin))
    return node
