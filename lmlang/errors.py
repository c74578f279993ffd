"""Exceptions of the language package, and where in the user's code they point."""

from __future__ import annotations

import os
import sys
from typing import Optional

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def user_frame() -> tuple[str, int]:
    """`(filename, line)` of the innermost stack frame outside the lmlang package."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIR + os.sep):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back
    return "<unknown>", 0


class TraceError(Exception):
    """A program that cannot be traced into a static DAG.

    Raised while tracing when Python code depends on a value only known at run time (a
    generated variable, or an argument used as a Python value). `filename` and `lineno` name
    the line of the user's program that did it; the message starts with them.
    """

    def __init__(self, message: str, filename: Optional[str] = None, lineno: Optional[int] = None) -> None:
        if filename is None:
            filename, lineno = user_frame()
        self.filename = filename
        self.lineno = lineno
        self.reason = message
        super().__init__(f"{filename}:{lineno}: {message}")


class ArgumentUsedError(TraceError):
    """A traced argument was used as a Python value (a loop bound, a format, a comparison).

    Compiled functions retrace with the concrete argument values when they meet this.
    """


class ProgramStructureError(ValueError):
    """A program whose structure is invalid: nested roles, unclosed scopes, unknown variables."""
