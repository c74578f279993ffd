"""The embedded default model (DESIGN §7): what programs run on when no backend is given.

A tiny Llama with random weights and a byte-level tokenizer with a chat template, made
deterministically (fixed seed) on first use and cached under `~/.cache/lmlang/` (or
`$LMLANG_CACHE_DIR`, or `$XDG_CACHE_HOME/lmlang`). Its text is not meaningful; constrained
outputs (select, regex, JSON schema) are still valid, so every program runs end to end. The
first use prints one line saying so and how to point at a real checkpoint.

    embedded_default_model_path() -> str      the checkpoint directory (built if missing)
    get_embedded_default_engine() -> backend  one shared in-process `lmlang.Engine` on it

torch and the runtime are imported only when a model has to be built or loaded.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

# Bump when the recipe below changes, so that old caches are not reused.
MODEL_VERSION = 1
MODEL_ARCH = "llama"
MODEL_SEED = 0
_READY_MARKER = "lmlang-default-model.ready"

_lock = threading.Lock()
_engine: Optional[Any] = None
_announced = False


def cache_dir() -> Path:
    """Where lmlang caches files: `$LMLANG_CACHE_DIR`, else `$XDG_CACHE_HOME/lmlang`, else `~/.cache/lmlang`."""
    explicit = os.environ.get("LMLANG_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lmlang"


def embedded_default_model_path() -> str:
    """The embedded default checkpoint's directory, built on first use (safe across processes:
    it is written to a temporary directory and renamed into place)."""
    target = cache_dir() / f"default-model-v{MODEL_VERSION}"
    if (target / _READY_MARKER).exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    from lmlang.testing import make_tiny_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix=".default-model-", dir=target.parent))
    try:
        make_tiny_checkpoint(tmp, MODEL_ARCH, seed=MODEL_SEED)
        (tmp / _READY_MARKER).write_text(f"lmlang embedded default model v{MODEL_VERSION}\n")
        if target.exists() and not (target / _READY_MARKER).exists():
            shutil.rmtree(target, ignore_errors=True)  # a half-written copy from an older failure
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _READY_MARKER).exists():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def describe(path: str) -> str:
    """The one line said when the embedded default is used."""
    return (f"lmlang: no model given, so using the embedded default model (a tiny random-weight {MODEL_ARCH}, "
            f"cached at {path}): its text is not meaningful, but constrained outputs are valid. "
            f"For a real model: `lmlang run prog.py --model PATH`, or "
            f"`ll.set_default_backend(ll.Engine(PATH))` in your program.")


def announce(path: str) -> None:
    """Prints `describe(path)` to stderr, once per process."""
    global _announced
    if not _announced:
        _announced = True
        print(describe(path), file=sys.stderr, flush=True)


def get_embedded_default_engine() -> Any:
    """The shared in-process backend (`lmlang.Engine`) on the embedded default model.

    Made on the first call (building the checkpoint if needed, and announcing it); later calls
    return the same object. It lives until the process exits.
    """
    global _engine
    with _lock:
        if _engine is None:
            path = embedded_default_model_path()
            announce(path)
            import lmlang

            _engine = lmlang.Engine(path)
            atexit.register(_engine.shutdown)
        return _engine
