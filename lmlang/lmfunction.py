"""`@lmlang.function` and its compiled form: how programs are run, batched, traced and compiled."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
from typing import Any, Callable, Optional, Sequence, Union

from lmlang.errors import ArgumentUsedError
from lmlang.sampling import RUN_DEFAULT_KEYWORDS, overrides_from_keywords


class LMFunction:
    """A program: a Python function whose first parameter is the `ProgramState`.

    `run(*args, backend=None, stream=False, **kwargs)`: keyword arguments that name the
    function's parameters are its arguments; the others are sampling defaults for every gen in
    the run, by `gen`'s names (`temperature=0`, `max_tokens=64`, ...).
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        from lmlang.tracer import signature_arguments

        self.fn = fn
        self.signature = inspect.signature(fn)
        self.arg_names = signature_arguments(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, s: Any, *args: Any, **kwargs: Any) -> Any:
        """Calls the body on an existing state (a program calling another program)."""
        return self.fn(s, *args, **kwargs)

    def split(self, args: tuple, kwargs: dict) -> tuple:
        """`(arguments, sampling overrides)` from a call's positional and keyword arguments."""
        sampling = {k: v for k, v in kwargs.items() if k not in self.arg_names and k in RUN_DEFAULT_KEYWORDS}
        rest = {k: v for k, v in kwargs.items() if k not in sampling}
        try:
            bound = self.signature.bind(None, *args, **rest)
        except TypeError as e:
            raise TypeError(
                f"{self.fn.__name__}: {e} (sampling defaults a run accepts: {', '.join(RUN_DEFAULT_KEYWORDS)})"
            ) from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(self.signature.parameters)))
        for p in self.signature.parameters.values():
            if p.kind == p.VAR_KEYWORD and p.name in arguments:
                arguments.update(arguments.pop(p.name))
            elif p.kind == p.VAR_POSITIONAL and p.name in arguments:
                raise TypeError(f"{self.fn.__name__}: lmlang programs cannot take *{p.name}")
        return arguments, overrides_from_keywords(sampling)

    def run(self, *args: Any, backend: Any = None, stream: bool = False, **kwargs: Any) -> Any:
        """Runs the program eagerly and returns its `ProgramState` (after it finished, unless
        `stream=True`: then at once, with reads waiting and `text_iter` streaming)."""
        from lmlang.backends import resolve_backend
        from lmlang.interpreter import run_function

        arguments, defaults = self.split(args, kwargs)
        return run_function(self.fn, arguments, resolve_backend(backend), defaults, stream)

    def run_batch(self, batch_kwargs: Sequence[dict], *, backend: Any = None, num_threads: Union[int, str] = "auto",
                  progress_bar: bool = False, **sampling: Any) -> list:
        """Runs the program once per dict of arguments, concurrently; states in input order."""
        return _run_many(lambda kw: self.run(backend=backend, **kw, **sampling), batch_kwargs, num_threads, progress_bar)

    async def arun(self, *args: Any, **kwargs: Any) -> Any:
        """`run` for async code (runs in a worker thread; the caller's loop keeps going)."""
        return await asyncio.to_thread(functools.partial(self.run, *args, **kwargs))

    def trace(self, **kwargs: Any) -> Any:
        """The program as a `Program` DAG. Arguments given here are baked in as constants; the
        others become placeholders bound when the program runs."""
        from lmlang.tracer import trace_function

        unknown = sorted(set(kwargs) - set(self.arg_names))
        if unknown:
            raise TypeError(f"{self.fn.__name__}() has no argument(s) {unknown}")
        placeholders = tuple(a for a in self.arg_names if a not in kwargs)
        return trace_function(self.fn, self.fn.__name__, kwargs, placeholders)

    def compile(self) -> "CompiledFunction":
        """A compiled form whose `run` submits the whole traced DAG to the backend at once."""
        return CompiledFunction(self)

    def __repr__(self) -> str:
        return f"<lmlang function {self.fn.__name__}{self.signature}>"


class CompiledFunction:
    """A program run as a traced DAG (`LMFunction.compile()`).

    The program is traced once with its arguments as placeholders; a program that uses an
    argument as a Python value (a loop count, say) is traced again for each call with the
    concrete values. Control flow on generated values cannot be compiled (`TraceError`).
    """

    def __init__(self, function: LMFunction) -> None:
        self.function = function
        self._program: Any = None
        self._per_call = False

    def program_for(self, arguments: dict) -> tuple:
        """`(program, arguments it still needs)` for one call."""
        if not self._per_call:
            if self._program is None:
                try:
                    self._program = self.function.trace()
                except ArgumentUsedError:
                    self._per_call = True
            if self._program is not None:
                return self._program, {a: arguments[a] for a in self._program.arguments}
        return self.function.trace(**arguments), {}

    def run(self, *args: Any, backend: Any = None, stream: bool = False, **kwargs: Any) -> Any:
        from lmlang.backends import resolve_backend

        arguments, defaults = self.function.split(args, kwargs)
        program, needed = self.program_for(arguments)
        return resolve_backend(backend).run_program(program, needed, defaults, stream)

    def run_batch(self, batch_kwargs: Sequence[dict], *, backend: Any = None, num_threads: Union[int, str] = "auto",
                  progress_bar: bool = False, **sampling: Any) -> list:
        return _run_many(lambda kw: self.run(backend=backend, **kw, **sampling), batch_kwargs, num_threads, progress_bar)

    async def arun(self, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(functools.partial(self.run, *args, **kwargs))

    def trace(self, **kwargs: Any) -> Any:
        return self.function.trace(**kwargs)

    def __repr__(self) -> str:
        return f"<compiled lmlang function {self.function.fn.__name__}>"


def function(fn: Optional[Callable[..., Any]] = None) -> Any:
    """Decorator making `fn(s, ...)` an lmlang program (`@function` or `@function()`)."""
    if fn is None:
        return function
    return LMFunction(fn)


def _run_many(run_one: Callable[[dict], Any], batch: Sequence[dict], num_threads: Union[int, str], progress_bar: bool) -> list:
    batch = list(batch)
    for i, kw in enumerate(batch):
        if not isinstance(kw, dict):
            raise TypeError(f"run_batch takes a list of dicts of arguments; item {i} is a {type(kw).__name__}")
    if not batch:
        return []
    if num_threads == "auto":
        workers = min(len(batch), 64)
    elif isinstance(num_threads, int) and num_threads >= 1:
        workers = min(len(batch), num_threads)
    else:
        raise ValueError(f"num_threads must be 'auto' or an int >= 1, got {num_threads!r}")
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batch))
    try:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="lmlang-batch") as pool:
            futures = [pool.submit(run_one, kw) for kw in batch]
            if bar is not None:
                for _ in concurrent.futures.as_completed(futures):
                    bar.update(1)
            return [f.result() for f in futures]
    finally:
        if bar is not None:
            bar.close()
