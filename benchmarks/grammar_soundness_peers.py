"""Peer grammar engines for benchmarks/grammar_soundness.py (`--mode peer --engine NAME`).

Each peer compiles a JSON schema with its own converter and produces its own token masks on the
benchmark's tokenizer; generations sample from random logits (temperature 1) under those masks,
exactly as lmlang's core mode does, until eos. The peers are configured as in
benchmarks/grammar_bench.py: XGrammar `any_whitespace=True, strict_mode=False`, llguidance and
outlines-core with their defaults.

A schema runs in a worker process (spawned; the parent never imports a peer) with a time budget: a
native compile or mask computation cannot be interrupted in-process, so past the budget the
worker is killed, the schema counts as "timeout", and a fresh worker serves the next one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from typing import Any

import numpy as np

for _var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sample_token(rng: np.random.Generator, allowed: np.ndarray) -> int:
    """One token among `allowed` (ids) from standard-normal logits at temperature 1."""
    logits = rng.standard_normal(len(allowed))
    probs = np.exp(logits - logits.max())
    return int(rng.choice(allowed, p=probs / probs.sum()))


def bits_to_ids(words: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token ids whose bit is set in an int32 bitmask row (bit i of word i // 32)."""
    return np.flatnonzero(np.unpackbits(np.ascontiguousarray(words).view(np.uint8), bitorder="little")[:vocab_size])


class Peer:
    """One peer engine on one tokenizer.

    Invariants: `compile` raises on a schema the peer refuses; `matcher` returns a fresh matcher
    at the start of the language; `allowed` lists the token ids the peer's mask allows now (eos
    included where the peer lets the output end); `advance` returns False if the peer rejects
    the token; `finished` is true once the peer has accepted eos."""

    name = ""

    def __init__(self, hf_tokenizer: Any, eos: int):
        self.vocab_size = len(hf_tokenizer)
        self.eos = eos

    def compile(self, schema: Any) -> Any:
        raise NotImplementedError

    def matcher(self, compiled: Any) -> Any:
        raise NotImplementedError

    def allowed(self, m: Any) -> np.ndarray:
        raise NotImplementedError

    def advance(self, m: Any, token: int) -> bool:
        raise NotImplementedError

    def finished(self, m: Any) -> bool:
        raise NotImplementedError


class XGrammarPeer(Peer):
    name = "xgrammar"

    def __init__(self, hf_tokenizer: Any, eos: int):
        super().__init__(hf_tokenizer, eos)
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=self.vocab_size, stop_token_ids=[eos])
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.buf = xgr.allocate_token_bitmask(1, self.vocab_size)

    def compile(self, schema: Any) -> Any:
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=True, strict_mode=False)

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def allowed(self, m: Any) -> np.ndarray:
        m.fill_next_token_bitmask(self.buf, 0)
        return bits_to_ids(self.buf[0].numpy(), self.vocab_size)

    def advance(self, m: Any, token: int) -> bool:
        return m.accept_token(token)

    def finished(self, m: Any) -> bool:
        return m.is_terminated()


class LLGuidancePeer(Peer):
    name = "llguidance"

    def __init__(self, hf_tokenizer: Any, eos: int):
        super().__init__(hf_tokenizer, eos)
        import llguidance
        import llguidance.hf
        import llguidance.numpy

        self.ll = llguidance
        self.fill = llguidance.numpy.fill_next_token_bitmask
        self.tok = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=self.vocab_size, eos_token=eos)
        self.buf = llguidance.numpy.allocate_token_bitmask(1, self.vocab_size)

    def compile(self, schema: Any) -> Any:
        grammar = self.ll.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        m = self.ll.LLMatcher(self.tok, grammar)
        if m.is_error():
            raise ValueError(m.get_error())
        return grammar

    def matcher(self, compiled: Any) -> Any:
        return self.ll.LLMatcher(self.tok, compiled)

    def allowed(self, m: Any) -> np.ndarray:
        self.fill(m, self.buf, 0)
        if m.is_error():
            raise RuntimeError(m.get_error())
        return bits_to_ids(self.buf[0], self.vocab_size)

    def advance(self, m: Any, token: int) -> bool:
        return m.consume_token(token) and not m.is_error()

    def finished(self, m: Any) -> bool:
        return m.is_stopped()


class OutlinesCorePeer(Peer):
    name = "outlines-core"

    def __init__(self, hf_tokenizer: Any, eos: int):
        super().__init__(hf_tokenizer, eos)
        import outlines_core as oc
        from lmlang.grammar import TokenizerInfo

        self.oc = oc
        tokens: dict[bytes, list[int]] = {}
        for i, b in enumerate(TokenizerInfo.from_huggingface(hf_tokenizer).token_bytes):
            if b:
                tokens.setdefault(b, []).append(i)
        self.vocab = oc.Vocabulary(eos, tokens)
        self.buf = np.zeros((self.vocab_size + 31) // 32, dtype=np.int32)

    def compile(self, schema: Any) -> Any:
        return self.oc.Index(self.oc.json_schema.build_regex_from_schema(json.dumps(schema)), self.vocab)

    def matcher(self, compiled: Any) -> Any:
        return [self.oc.Guide(compiled), False]

    def allowed(self, m: Any) -> np.ndarray:
        self.buf[:] = 0
        m[0].write_mask_into(self.buf.ctypes.data, self.buf.size, 4)
        return bits_to_ids(self.buf, self.vocab_size)

    def advance(self, m: Any, token: int) -> bool:
        if token == self.eos:  # the index has no state after eos: the output ends here
            m[1] = True
            return True
        try:
            m[0].advance(token, return_tokens=False)
            return True
        except Exception:  # noqa: BLE001 (outlines-core raises a bare ValueError-like error)
            return False

    def finished(self, m: Any) -> bool:
        return m[1]


PEERS = {cls.name: cls for cls in (XGrammarPeer, LLGuidancePeer, OutlinesCorePeer)}


def generate(peer: Peer, compiled: Any, rng: np.random.Generator, max_tokens: int) -> tuple[list[int], str]:
    """One generation: (token ids without eos, "done" | "cut" | "stuck: ...")."""
    m, tokens = peer.matcher(compiled), []
    while not peer.finished(m):
        if len(tokens) >= max_tokens:
            return tokens, "cut"
        allowed = peer.allowed(m)
        if len(allowed) == 0:
            return tokens, "stuck: empty mask before the output could end"
        token = sample_token(rng, allowed)
        if not peer.advance(m, token):
            return tokens, f"stuck: rejected token {token} that its mask allowed"
        if token != peer.eos:
            tokens.append(token)
    return tokens, "done"


def accepts(peer: Peer, compiled: Any, token_ids: list[int]) -> bool:
    """Whether the peer accepts exactly these tokens followed by eos."""
    m = peer.matcher(compiled)
    for token in [*token_ids, peer.eos]:
        if token not in set(peer.allowed(m).tolist()) or not peer.advance(m, token):
            return False
    return peer.finished(m)


def _serve(conn: Any, name: str, tokenizer_dir: str, eos: int) -> None:
    """Worker loop: (schema, samples, max_tokens, seed, instance texts) -> a result tuple."""
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    peer = PEERS[name](hf_tokenizer, eos)
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        schema, samples, max_tokens, seed, texts = job
        try:
            compiled = peer.compile(schema)
        except Exception as e:  # noqa: BLE001 (any compile failure is the peer refusing the schema)
            conn.send(("refused", f"{type(e).__name__}: {e}"))
            continue
        try:
            answers = [accepts(peer, compiled, hf_tokenizer.encode(t, add_special_tokens=False)) for t in texts]
            rng = np.random.default_rng(seed)
            conn.send(("ok", answers, [generate(peer, compiled, rng, max_tokens) for _ in range(samples)]))
        except Exception as e:  # noqa: BLE001 (a crash inside the peer is a finding, reported)
            conn.send(("error", f"{type(e).__name__}: {str(e)[:200]}"))


class PeerPool:
    """A worker process running one peer; `run` gives each schema at most `timeout_s` seconds."""

    def __init__(self, name: str, tokenizer_dir: str, eos: int, timeout_s: float):
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; choose one of {sorted(PEERS)}")
        self.args = (name, tokenizer_dir, eos)
        self.timeout_s = timeout_s
        self.ctx = multiprocessing.get_context("spawn")  # safe to restart while threads run
        self.proc = None
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_serve, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        if self.conn.recv() != "ready":
            raise RuntimeError(f"peer {self.args[0]} failed to start")

    def run(self, schema: Any, samples: int, max_tokens: int, seed: int, texts: list[str]) -> tuple:
        """("ok", instance answers, [(token ids, status)]) | ("refused", why) | ("error", why)
        | ("timeout", why)."""
        self.conn.send((schema, samples, max_tokens, seed, texts))
        if self.conn.poll(self.timeout_s):
            try:
                return self.conn.recv()
            except EOFError:
                reason = f"worker died (exit code {self.proc.exitcode})"
                self._restart()
                return ("error", reason)
        self._restart()
        return ("timeout", f"over {self.timeout_s:.0f}s")

    def _restart(self) -> None:
        self.proc.kill()
        self.proc.join()
        self._start()

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
