"""Validation of generated outputs with a time limit, for benchmarks/grammar_soundness.py.

Outputs are checked with the jsonschema package's validator for the schema's draft (default
Draft 2020-12) with its format checker. A `pattern` is matched with Python's `re`, which can
backtrack for hours on some pattern/string pairs and cannot be interrupted, so validation runs in
a worker process: an output not judged within `timeout_s` seconds is reported as None (not
judged) and the worker is replaced.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import threading
from typing import Any

MAX_VALIDATORS = 64  # schemas whose validators the worker keeps (engine mode interleaves a few)


def make_validator(schema: Any) -> Any:
    """The jsonschema validator for the schema's `$schema` draft (2020-12 if none), formats asserted."""
    import jsonschema
    from jsonschema.validators import validator_for

    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def is_valid(validator: Any, text: str) -> bool:
    """Whether `text` is one JSON value that `validator` accepts."""
    try:
        return validator.is_valid(json.loads(text))
    except (ValueError, RecursionError):
        return False


def _serve(conn: Any) -> None:
    """Worker loop: ("schema", key, schema) registers a schema; ("text", key, text) answers
    True / False, "unknown" (schema not registered here) or "error: ..." (the validator failed)."""
    validators: collections.OrderedDict = collections.OrderedDict()
    while True:
        job = conn.recv()
        if job is None:
            return
        if job[0] == "schema":
            _, key, schema = job
            try:
                validators[key] = make_validator(schema)
            except Exception as e:  # noqa: BLE001 (reported with the first text)
                validators[key] = f"error: {type(e).__name__}: {str(e)[:100]}"
            while len(validators) > MAX_VALIDATORS:
                validators.popitem(last=False)
            continue
        _, key, text = job
        validator = validators.get(key)
        if validator is None or isinstance(validator, str):
            conn.send(validator or "unknown")
            continue
        try:
            conn.send(is_valid(validator, text))
        except Exception as e:  # noqa: BLE001 (e.g. an unresolvable remote $ref)
            conn.send(f"error: {type(e).__name__}: {str(e)[:100]}")


class ValidatorPool:
    """One validation worker shared by the benchmark's threads (calls are serialized)."""

    def __init__(self, timeout_s: float = 10.0):
        self.timeout_s = timeout_s
        self.ctx = multiprocessing.get_context("spawn")  # safe to restart while threads run
        self.lock = threading.Lock()
        self.proc = None
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.registered: set = set()

    def validate(self, key: Any, schema: Any, text: str) -> bool | str | None:
        """True / False; None if not judged within the time limit; "error: ..." if the
        validator itself failed. `key` names the schema (registered with the worker once)."""
        with self.lock:
            for _ in range(2):
                if key not in self.registered:
                    self.conn.send(("schema", key, schema))
                    self.registered.add(key)
                self.conn.send(("text", key, text))
                if not self.conn.poll(self.timeout_s):
                    self._restart()
                    return None
                answer = self.conn.recv()
                if answer != "unknown":
                    return answer
                self.registered.discard(key)
            return "error: the validation worker lost the schema"

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
