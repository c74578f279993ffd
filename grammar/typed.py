"""Regexes (and their converters) behind the language's typed gens: gen_int, gen_float, ...

Choices (JSON conventions throughout, so the same text is valid inside JSON output too):
- INT_REGEX: an optionally negative decimal integer without leading zeros ("0", "-12").
- FLOAT_REGEX: a JSON number: integer part, optional fraction, optional exponent ("-1.5e3").
- BOOL_REGEX: lowercase `true` or `false` (JSON's spelling, not Python's `True`/`False`).
- STRING_REGEX: a JSON double-quoted string (escapes `\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX`, no raw
  control characters); its value is the decoded string, without the quotes.
Every regex is whole-output (see grammar/compiler.py); `parse_*` turns the generated text into
the Python value.
"""

from __future__ import annotations

import json

INT_REGEX = r"-?(0|[1-9][0-9]*)"
FLOAT_REGEX = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
BOOL_REGEX = r"(true|false)"
STRING_REGEX = r'"([^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'


def parse_int(text: str) -> int:
    return int(text)


def parse_float(text: str) -> float:
    return float(text)


def parse_bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"not a boolean: {text!r}")
    return text == "true"


def parse_string(text: str) -> str:
    value = json.loads(text)
    if not isinstance(value, str):
        raise ValueError(f"not a JSON string: {text!r}")
    return value


TYPED = {
    "int": (INT_REGEX, parse_int),
    "float": (FLOAT_REGEX, parse_float),
    "bool": (BOOL_REGEX, parse_bool),
    "string": (STRING_REGEX, parse_string),
}
