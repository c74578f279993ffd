"""Launching a Triton kernel on its tensors' device: compiled on CUDA, interpreted on CPU.

Why this exists: triton reads `TRITON_INTERPRET` at two moments, not one. `@triton.jit` reads it
when a kernel is *decorated* (module import) and returns either a compiled `JITFunction` or an
`InterpretedFunction`; and the standard library (`tl.sum`, `tl.max`, `tl.sigmoid`, `tl.cdiv`, ...,
themselves `@triton.jit` functions in `triton.language.standard`) is decorated once, when
`triton` is first imported. If anything imported triton before the variable was set, a
`JITFunction` kernel run by the interpreter fails with "Cannot call @triton.jit'd outside of the
scope of a kernel" at its first `tl.sum`.

`launch` removes the dependence on import order: for CPU tensors it runs the kernel's Python
function through triton's interpreter and, for the duration of the call, swaps every `JITFunction`
in `triton.language`, `triton.language.standard` and the kernel's own module for an interpreted
twin (`triton.experimental.gluon` is imported up front because its import asserts that the
standard library holds compiled functions, and triton imports it lazily inside a launch). CUDA
tensors take the ordinary compiled path. The CPU path exists for tests and development
(it is slow: every program instance runs in numpy); production code on CPU uses the `ref_*`
functions. Swapping module attributes is not thread-safe against a concurrent GPU compile in the
same process, which is why nothing but tests should launch on CPU while a GPU is in use.

Programmatic dependent launch (PDL, Hopper and later): a kernel launched with it may start while
the kernel before it in the stream is still finishing, so its launch latency and its reads of
constant data (weights) overlap the predecessor's tail. Such a kernel declares a
`USE_PDL: tl.constexpr` parameter and calls `pdl_wait(USE_PDL)` before it reads anything an
earlier kernel wrote and before it writes anything (its output buffer may still be read by the
predecessor); `pdl_launch_dependents(USE_PDL)` lets the next kernel start early. `launch(...,
pdl=True)` passes `USE_PDL` and the launch attribute when `pdl_enabled` says the device supports
it; `$LMLANG_PDL=0` turns it off everywhere, and `without_pdl()` within a block. The model runner
runs its eager (not graph-replayed) forwards without it: there the host, not the GPU, sets the
pace (tens of microseconds per launch against a few on the GPU), so PDL has nothing to hide, and
an eager DeepSeek-V2-Lite decode step took 50-56 ms with it against 41 ms without (H200,
2026-11-26).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Any, Callable, Iterator, Sequence, Union

import torch
import triton
import triton.experimental.gluon  # noqa: F401  (imported lazily by triton otherwise; see below)
import triton.language as tl
import triton.language.standard as tl_standard
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

Grid = Union[Sequence[int], Callable[[dict], Sequence[int]]]

_interpreted: dict[Callable, InterpretedFunction] = {}


def _as_interpreted(fn: JITFunction | InterpretedFunction) -> InterpretedFunction:
    if isinstance(fn, InterpretedFunction):
        return fn
    if fn.fn not in _interpreted:
        _interpreted[fn.fn] = InterpretedFunction(fn.fn)
    return _interpreted[fn.fn]


@contextlib.contextmanager
def _interpreted_namespaces(namespaces: list[dict[str, Any]]) -> Iterator[None]:
    """Temporarily replaces compiled `JITFunction`s in these namespaces with interpreted ones."""
    saved: list[tuple[dict[str, Any], str, JITFunction]] = []
    try:
        for ns in namespaces:
            for name, value in list(ns.items()):
                if isinstance(value, JITFunction):
                    saved.append((ns, name, value))
                    ns[name] = _as_interpreted(value)
        yield
    finally:
        for ns, name, value in reversed(saved):
            ns[name] = value


def _device_of(args: tuple, kwargs: dict) -> torch.device:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device
    raise ValueError("a kernel launch needs at least one tensor argument")


PDL_ENV = "LMLANG_PDL"
_pdl_off = contextvars.ContextVar("lmlang_pdl_off", default=False)


@functools.lru_cache(maxsize=None)
def _pdl_capable(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with programmatic dependent launch (see the module doc):
    a CUDA device of compute capability 9.0 or later, unless `$LMLANG_PDL` is "0" or the caller
    is inside `without_pdl()`."""
    if device.type != "cuda" or _pdl_off.get() or os.environ.get(PDL_ENV, "1") == "0":
        return False
    return _pdl_capable(device.index if device.index is not None else torch.cuda.current_device())


@contextlib.contextmanager
def without_pdl() -> Iterator[None]:
    """Within the block (this thread or task), launches go without PDL: for eager forwards."""
    token = _pdl_off.set(True)
    try:
        yield
    finally:
        _pdl_off.reset(token)


@contextlib.contextmanager
def pdl_forced(on: bool) -> Iterator[None]:
    """Within the block, launches (and so CUDA-graph captures) use PDL or not, whatever
    `$LMLANG_PDL` says outside it (for benchmarks and tests comparing the two)."""
    saved = os.environ.get(PDL_ENV)
    os.environ[PDL_ENV] = "1" if on else "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[PDL_ENV]
        else:
            os.environ[PDL_ENV] = saved


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Waits until the previous kernel in the stream has finished and its writes are visible."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_launch_dependents(USE_PDL: tl.constexpr):
    """Lets the next kernel in the stream launch before this one finishes (a hint)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()


def launch(
    kernel: JITFunction | InterpretedFunction, grid: Grid, *args: Any, pdl: bool = False, **kwargs: Any
) -> None:
    """Runs `kernel[grid](*args, **kwargs)` on the device of the first tensor argument.

    On CPU the launch goes through triton's interpreter whatever `TRITON_INTERPRET` was when
    triton or the kernel's module was imported; launch options such as `num_warps` are accepted
    and ignored there. `pdl=True` is for kernels with a `USE_PDL` constexpr (see the module doc):
    it sets `USE_PDL` and the launch attribute where `pdl_enabled`, else `USE_PDL=False`.
    """
    device = _device_of(args, kwargs)
    if pdl:
        kwargs["USE_PDL"] = use = pdl_enabled(device)
        if use:
            kwargs["launch_pdl"] = True
    if device.type != "cpu":
        kernel[grid](*args, **kwargs)
        return
    interpreted = _as_interpreted(kernel)
    namespaces = [vars(tl), vars(tl_standard), interpreted.fn.__globals__]
    with _interpreted_namespaces(namespaces):
        interpreted[grid](*args, **kwargs)


def dot_needs_fp32(t: torch.Tensor) -> bool:
    """True when a kernel must widen `t`'s tiles to float32 before `tl.dot`: the triton 3.9
    interpreter multiplies bf16 operands as their raw uint16 bit patterns (numpy has no bf16)."""
    return t.device.type == "cpu" and t.dtype == torch.bfloat16


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (>= 1)."""
    return triton.next_power_of_2(max(1, n))
