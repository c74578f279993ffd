"""Lark-grammar constraints: `CompiledCFG` (shared caches) and `CFGMatcher` (per request).

Matcher state: (Earley node, its lexer, lexer state). A token's bytes are consumed byte by byte:
a byte extends the current lexeme if the lexer can take it (greedy); otherwise, if the lexeme so
far completes some terminals, those go to the parser (a new Earley node, whose expected terminals
pick the next lexer) and the byte starts the next lexeme; otherwise the token is rejected.

Masks. Walking the token trie through the lexer from state s gives (independent of the parse,
cached per (forest, lexer, s) with s taken in the lexer's horizon view, see ByteDFA): the tokens
that stay inside the current lexeme, and for each terminal group g that can end the lexeme
inside a token, the forest of trie subtrees that continue after that boundary. The mask is then
    mask(node, forest, s) = inside ∪ ⋃_g mask(node.advance(g), forest_g, 0)
where only `advance` (an Earley step, memoized on the node) depends on the parse. Results are
memoized per node, so while a lexeme is open (most tokens) the mask is a cached array.

Semantics: the language is that of the grammar under greedy contextual lexing; a token is
allowed iff its bytes can be consumed as above. For grammars whose terminals never need a lexeme
to stop before a byte that could extend it (true for JSON-like and most real grammars), every
accepted prefix can be completed to a sentence.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from .cfg import CFG
from .earley import EarleyNode, EarleyTables
from .lexer import GroupTable, Lexer, build_lexer
from .matcher import CompiledGrammar, HistoryMatcher
from .regex_matcher import MAX_FORCED_BYTES, complete_utf8_prefix
from .tokenizer_info import TokenizerInfo

if TYPE_CHECKING:
    from .compiler import CompileOptions

_MISSING = object()
FULL_FOREST = 0


class CompiledCFG(CompiledGrammar):
    """A CFG for one tokenizer with its parse-independent caches (lexers, trie walks)."""

    def __init__(
        self,
        cfg: CFG,
        tokenizer_info: TokenizerInfo,
        kind: str = "grammar",
        source: str = "",
        options: "CompileOptions | None" = None,
    ):
        from .compiler import CompileOptions

        self.cfg = cfg
        self.kind = kind
        self.source = source
        self.options = options or CompileOptions()
        self.tables = EarleyTables(cfg)
        self.groups = GroupTable(cfg.ignore)
        self._info = tokenizer_info
        self._lexers: dict[frozenset[int], Lexer] = {}
        self._forest_ids: dict[bytes, int] = {b"": FULL_FOREST}
        self._forest_roots: list[np.ndarray | None] = [None]
        self._walks: dict[tuple, tuple[np.ndarray, tuple[tuple[int, int], ...]]] = {}
        self._lock = threading.Lock()

    @property
    def tokenizer_info(self) -> TokenizerInfo:
        return self._info

    def matcher(self) -> "CFGMatcher":
        root = EarleyNode.initial(self.tables)
        return CFGMatcher(self, root, self.lexer_for(root), 0)

    # ---- parse-independent caches -------------------------------------------------------

    def lexer_for(self, node: EarleyNode) -> Lexer:
        """The lexer over the terminals `node` expects (plus the ignored ones)."""
        lexer = node.lexer
        if lexer is None:
            allowed = frozenset(node.by_term) | self.cfg.ignore
            lexer = self._lexers.get(allowed)
            if lexer is None:
                with self._lock:
                    lexer = self._lexers.get(allowed)
                    if lexer is None:
                        lexer = build_lexer(
                            len(self._lexers),
                            tuple(sorted(allowed)),
                            self.cfg.terminal_dfas,
                            self.groups,
                            self.options.max_dfa_states,
                        )
                        self._lexers[allowed] = lexer
            node.lexer = lexer
        return lexer

    def advance(self, node: EarleyNode, group: int) -> EarleyNode | None:
        """The node after a lexeme completing terminal group `group`; None if impossible."""
        child = node.children.get(group, _MISSING)
        if child is _MISSING:
            real = self.groups.real[group]
            child = node.scan(self.tables, real) if real else None
            if child is None and self.groups.ignorable[group]:
                child = node
            node.children[group] = child
        return child

    def mask_key(self, forest: int, lexer: Lexer, state: int) -> tuple:
        """Cache key of a walk: (forest, lexer, state of the lexer's horizon view), so that
        states alike for the longest token's length share it."""
        view = lexer.view(self._info.trie.max_depth)
        return (forest, lexer.lexer_id, lexer.to_view(state, view))

    def walk(self, forest: int, lexer: Lexer, state: int) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
        """(tokens inside the lexeme, ((group, forest after the boundary), ...)), cached."""
        key = self.mask_key(forest, lexer, state)
        hit = self._walks.get(key)
        if hit is not None:
            return hit
        trie = self._info.trie
        first = None if forest == FULL_FOREST else self._forest_roots[forest]
        result = trie.walk(first, lexer.view(trie.max_depth), key[2], boundaries=True)
        result.allowed.flags.writeable = False
        branches = []
        for group in np.unique(result.boundary_groups).tolist():
            roots = np.sort(result.boundary_nodes[result.boundary_groups == group])
            branches.append((group, self._forest_id(roots)))
        entry = (result.allowed, tuple(branches))
        self._walks[key] = entry
        return entry

    def _forest_id(self, roots: np.ndarray) -> int:
        key = roots.tobytes()
        fid = self._forest_ids.get(key)
        if fid is None:
            with self._lock:
                fid = self._forest_ids.get(key)
                if fid is None:
                    self._forest_roots.append(roots)
                    fid = self._forest_ids[key] = len(self._forest_roots) - 1
        return fid

    # ---- parse-dependent --------------------------------------------------------------

    def node_mask(self, node: EarleyNode, lexer: Lexer, state: int, forest: int = FULL_FOREST) -> np.ndarray:
        """int32 [num_words]: tokens (of `forest`) allowed at (node, lexer state). Read-only."""
        key = self.mask_key(forest, lexer, state)
        mask = node.memo.get(key)
        if mask is not None:
            return mask
        inside, branches = self.walk(forest, lexer, state)
        mask = inside
        for group, sub_forest in branches:
            child = self.advance(node, group)
            if child is None:
                continue
            sub = self.node_mask(child, self.lexer_for(child), 0, sub_forest)
            mask = mask | sub if mask is inside else np.bitwise_or(mask, sub, out=mask)
        node.memo[key] = mask
        return mask

    def step_bytes(self, node: EarleyNode, lexer: Lexer, state: int, data: bytes):
        """(node, lexer, state) after `data`, or None if `data` is not allowed."""
        for byte in data:
            nxt = lexer.step(state, byte)
            if nxt >= 0:
                state = nxt
                continue
            group = int(lexer.accept_group[state])
            if group < 0:
                return None
            node = self.advance(node, group)
            if node is None:
                return None
            lexer = self.lexer_for(node)
            state = lexer.step(0, byte)
            if state < 0:
                return None
        return node, lexer, state

    def can_end(self, node: EarleyNode, lexer: Lexer, state: int) -> bool:
        if state == 0:
            return node.accepting
        group = int(lexer.accept_group[state])
        if group < 0:
            return False
        child = self.advance(node, group)
        return child is not None and child.accepting

    def next_bytes(self, node: EarleyNode, lexer: Lexer, state: int) -> np.ndarray:
        """The bytes that can come next (sorted, unique)."""
        live = lexer.live_bytes(state)
        group = int(lexer.accept_group[state])
        if group >= 0:
            child = self.advance(node, group)
            if child is not None:
                live = np.union1d(live, self.lexer_for(child).live_bytes(0))
        return live


class CFGMatcher(HistoryMatcher):
    """Matcher state: (Earley node, lexer, lexer state), a terminated flag and the history."""

    def __init__(self, compiled: CompiledCFG, node: EarleyNode, lexer: Lexer, state: int, terminated=False, history=None):
        self._compiled = compiled
        self._node = node
        self._lexer = lexer
        self._state = state
        self._terminated = terminated
        self._history: list[tuple] = history if history is not None else []

    def _current_mask(self) -> Any:
        return self._compiled.node_mask(self._node, self._lexer, self._state)

    def accept_bytes(self, data: bytes) -> bool:
        if self._terminated:
            return False
        nxt = self._compiled.step_bytes(self._node, self._lexer, self._state, data)
        if nxt is None:
            return False
        self._push()
        self._node, self._lexer, self._state = nxt
        return True

    def _push(self) -> None:
        self._history.append((self._node, self._lexer, self._state, self._terminated))

    def rollback(self, num_steps: int = 1) -> None:
        if not 0 <= num_steps <= len(self._history):
            raise ValueError(f"cannot roll back {num_steps} steps; {len(self._history)} in history")
        if num_steps:
            self._node, self._lexer, self._state, self._terminated = self._history[-num_steps]
            del self._history[-num_steps:]

    def fork(self) -> "CFGMatcher":
        return CFGMatcher(self._compiled, self._node, self._lexer, self._state, self._terminated, list(self._history))

    def can_terminate(self) -> bool:
        return not self._terminated and self._compiled.can_end(self._node, self._lexer, self._state)

    def is_done(self) -> bool:
        if self._terminated:
            return True
        return self._compiled.next_bytes(self._node, self._lexer, self._state).shape[0] == 0

    def forced_text(self) -> str:
        if self._terminated:
            return ""
        compiled = self._compiled
        node, lexer, state = self._node, self._lexer, self._state
        out = bytearray()
        while len(out) < MAX_FORCED_BYTES and not compiled.can_end(node, lexer, state):
            live = compiled.next_bytes(node, lexer, state)
            if live.shape[0] != 1:
                break
            byte = int(live[0])
            out.append(byte)
            node, lexer, state = compiled.step_bytes(node, lexer, state, bytes([byte]))
        return complete_utf8_prefix(bytes(out))
