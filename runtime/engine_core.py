"""The engine core process: receives requests over ZMQ, runs the scheduler, sends tokens back.

Wire format: every message is a msgpack list of `protocol.to_wire` dicts. The core sends
`ControlOut(cid=0)` once it is ready (result: model facts) or failed to start (error: the
traceback), then `TokenOut`s and `ControlOut`s as work completes.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import traceback
from typing import Any

import msgpack
import zmq

from lmlang.runtime.config import EngineConfig
from lmlang.runtime.protocol import AbortReq, ControlOut, ControlReq, GenerateReq, from_wire, to_wire

logger = logging.getLogger("lmlang.engine_core")

IDLE_POLL_MS = 20


def pack(messages: list) -> bytes:
    return msgpack.packb([to_wire(m) for m in messages], use_bin_type=True)


def unpack(data: bytes) -> list:
    return [from_wire(m) for m in msgpack.unpackb(data, raw=False, strict_map_key=False)]


class EngineCore:
    """Scheduler + model runner behind a message loop."""

    def __init__(self, cfg: EngineConfig) -> None:
        import torch

        from lmlang.runtime.model_runner import ModelRunner
        from lmlang.runtime.model_info import load_model_info
        from lmlang.runtime.scheduler import Scheduler
        from lmlang.runtime.stop import StopChecker
        from lmlang.runtime.tokenizer import load_tokenizer

        torch.manual_seed(cfg.seed)
        if cfg.device == "cpu":
            torch.set_num_threads(cfg.num_cpu_threads)
        self.cfg = cfg
        self.info = load_model_info(cfg)
        tokenizer = load_tokenizer(cfg.tokenizer)
        self.runner = ModelRunner(cfg)
        grammar_backend = None
        try:
            from lmlang.runtime.grammar_backend import GrammarBackend

            grammar_backend = GrammarBackend(tokenizer, self.info.vocab_size)
        except ImportError as e:
            logger.info("constrained decoding unavailable: %s", e)
        self.scheduler = Scheduler(
            cfg,
            self.runner,
            StopChecker(tokenizer, self.info.eos_token_ids),
            self.info.vocab_size,
            self.info.context_length,
            grammar_backend,
        )

    def handle(self, msg: Any) -> list:
        s = self.scheduler
        if isinstance(msg, GenerateReq):
            out = s.add_request(msg)
            return [out] if out is not None else []
        if isinstance(msg, AbortReq):
            out = s.abort(msg.rid)
            return [out] if out is not None else []
        if isinstance(msg, ControlReq):
            try:
                return [ControlOut(cid=msg.cid, result=self.control(msg.op, msg.args))]
            except Exception as e:  # a bad control call must not take the core down
                return [ControlOut(cid=msg.cid, error=f"{type(e).__name__}: {e}")]
        raise TypeError(f"unexpected message {type(msg).__name__}")

    def control(self, op: str, args: dict) -> Any:
        s = self.scheduler
        if op == "stats":
            return s.stats()
        if op == "reset_stats":
            return s.reset_stats()
        if op == "flush_cache":
            return s.flush_cache()
        if op == "pin":
            return s.pin(list(args["input_ids"]))
        if op == "unpin":
            return s.unpin(int(args["handle"]))
        if op == "ping":
            return True
        raise ValueError(f"unknown control op {op!r}")


def run_engine_core(cfg: EngineConfig, in_addr: str, out_addr: str) -> None:
    """Process entry point. Exits when it receives ControlReq(op="shutdown")."""
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.WARNING))
    # Ctrl-C reaches the whole process group; the front end decides when the core stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(in_addr)
    push = ctx.socket(zmq.PUSH)
    push.connect(out_addr)
    try:
        core = EngineCore(cfg)
    except BaseException:
        push.send(pack([ControlOut(cid=0, error=traceback.format_exc())]))
        push.close(linger=2000)
        return
    # long-lived start-up objects (model, tokenizer, caches) leave the GC's scans: no pauses mid-decode
    gc.collect()
    gc.freeze()
    push.send(pack([ControlOut(cid=0, result=core.info.to_dict() | {"kv_total": core.scheduler.allocator.total})]))
    try:
        _loop(core, pull, push)
    except BaseException:
        logger.error("engine core crashed:\n%s", traceback.format_exc())
        push.send(pack([ControlOut(cid=-1, error=traceback.format_exc())]))
        push.close(linger=2000)
        raise


def _loop(core: EngineCore, pull: Any, push: Any) -> None:
    scheduler = core.scheduler
    parent = os.getppid()
    while True:
        if os.getppid() != parent:  # the front end died without a shutdown: do not linger
            return
        outputs: list = []
        timeout = 0 if scheduler.has_work() else IDLE_POLL_MS
        while pull.poll(timeout):
            timeout = 0
            for msg in unpack(pull.recv()):
                if isinstance(msg, ControlReq) and msg.op == "shutdown":
                    push.send(pack([ControlOut(cid=msg.cid, result=True)]))
                    return
                outputs.extend(core.handle(msg))
        if scheduler.has_work():
            outputs.extend(scheduler.step())
        if outputs:
            push.send(pack(outputs))


def main() -> None:
    """`python -m lmlang.runtime.engine_core CONFIG_JSON IN_ADDR OUT_ADDR` (started by `Engine`)."""
    import json
    import sys

    cfg = EngineConfig(**json.loads(sys.argv[1]))
    run_engine_core(cfg, sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
