"""Regexes for JSON numbers in a range: exact digit-range construction, no exponent forms.

Validators parse JSON numbers as Python does: a literal without `.`/exponent becomes an `int`
(compared exactly with the bound), any other literal becomes the nearest `float`. The range regex
therefore has two parts:

- integer literals (`-?(0|[1-9][0-9]*)`): exactly the integers n with lower <= n <= upper
  (strict for exclusive bounds), compared as exact rationals;
- fraction literals (`I.D+`, only for type "number"): decimal values v with T_lo <= v <= T_hi,
  where T_lo is the smallest double that satisfies the lower bound (the next double above it for
  `exclusiveMinimum`) written as its shortest decimal, T_hi likewise. Rounding to nearest is
  monotone, so every such v parses to a double inside the bounds, and every double inside the
  bounds has such a literal: exact over the values a validator can see.

Exponent forms are not generated when a bound is present (every value has a plain form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

INTEGER_REGEX = "(?:0|-?[1-9][0-9]*)"
NUMBER_REGEX = "-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?(?:[eE][+\\-]?[0-9]+)?"
_MAX_DOUBLE = Fraction(1.7976931348623157e308)


@dataclass(frozen=True)
class Bound:
    """One side of a numeric range: the exact bound and whether it is included."""

    value: Fraction
    inclusive: bool


def tighter_lower(a: Bound | None, b: Bound | None) -> Bound | None:
    if a is None or b is None:
        return a or b
    if a.value != b.value:
        return a if a.value > b.value else b
    return a if not a.inclusive else b


def tighter_upper(a: Bound | None, b: Bound | None) -> Bound | None:
    if a is None or b is None:
        return a or b
    if a.value != b.value:
        return a if a.value < b.value else b
    return a if not a.inclusive else b


def _digits(lo: str, hi: str) -> str:
    return lo if lo == hi else f"[{lo}-{hi}]"


def _any_digits(n: int) -> str:
    return "" if n == 0 else "[0-9]" if n == 1 else f"[0-9]{{{n}}}"


def _same_length(a: str, b: str) -> list[str]:
    """Alternatives matching the digit strings of len(a) == len(b) between a and b."""
    if a == b:
        return [a]
    i = 0
    while a[i] == b[i]:
        i += 1
    prefix, a, b = a[:i], a[i:], b[i:]
    n = len(a) - 1
    low_free = a[1:] == "0" * n
    high_free = b[1:] == "9" * n
    out = []
    if not low_free:
        out += [prefix + a[0] + rest for rest in _same_length(a[1:], "9" * n)]
    mid_lo = int(a[0]) + (0 if low_free else 1)
    mid_hi = int(b[0]) - (0 if high_free else 1)
    if mid_lo <= mid_hi:
        out.append(prefix + _digits(str(mid_lo), str(mid_hi)) + _any_digits(n))
    if not high_free:
        out += [prefix + b[0] + rest for rest in _same_length("0" * n, b[1:])]
    return out


def _natural_range(lo: int, hi: int | None) -> list[str]:
    """Alternatives for canonical decimal naturals in [lo, hi] (hi None: unbounded), lo >= 0."""
    if hi is not None and lo > hi:
        return []
    lo_len = len(str(lo))
    out = []
    for length in range(lo_len, (len(str(hi)) if hi is not None else lo_len) + 1):
        a = max(lo, 10 ** (length - 1) if length > 1 else 0)
        b = 10**length - 1 if hi is None else min(hi, 10**length - 1)
        if a <= b:
            out += _same_length(str(a), str(b))
    if hi is None:
        out.append(f"[1-9][0-9]{{{lo_len},}}")
    return out


def integer_range_regex(lo: int | None, hi: int | None) -> str | None:
    """Canonical integer literals n with lo <= n <= hi (None: unbounded); None if empty."""
    if lo is not None and hi is not None and lo > hi:
        return None
    out = []
    if hi is None or hi >= 0:
        out += _natural_range(max(lo, 0) if lo is not None else 0, hi)
    if lo is None or lo < 0:
        magnitude_hi = None if lo is None else -lo
        out += ["-" + alt for alt in _natural_range(max(1, -hi) if hi is not None else 1, magnitude_hi)]
    return _join(out)


def _join(options: list[str]) -> str | None:
    if not options:
        return None
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def _integer_bounds(lower: Bound | None, upper: Bound | None) -> tuple[int | None, int | None]:
    lo = hi = None
    if lower is not None:
        lo = math.ceil(lower.value)
        if not lower.inclusive and lo == lower.value:
            lo += 1
    if upper is not None:
        hi = math.floor(upper.value)
        if not upper.inclusive and hi == upper.value:
            hi -= 1
    return lo, hi


def _double_at_least(value: Fraction, strict: bool) -> float | None:
    """The smallest double >= value (> value if strict); None if there is none."""
    if value > _MAX_DOUBLE:
        return None
    if value < -_MAX_DOUBLE:
        return -float(_MAX_DOUBLE)
    d = float(value)
    while Fraction(d) < value or (strict and Fraction(d) == value):
        d = math.nextafter(d, math.inf)
    return d if math.isfinite(d) else None


def _split(d: float) -> tuple[int, str]:
    """Integer part and fraction digits (no trailing zeros) of a non-negative double's repr."""
    text = format(Decimal(repr(d)), "f")
    whole, _, frac = text.partition(".")
    return int(whole), frac.rstrip("0")


def _fraction_digits(lo: str, hi: str | None, need: bool) -> str | None:
    """Digit strings D (at least one if `need`) with 0.lo <= 0.D <= 0.hi (hi None: below 1)."""
    if hi == "":
        return "0+" if need else "0*"
    if lo == "" and hi is None:
        return "[0-9]+" if need else "[0-9]*"
    options = [] if need or lo else [""]
    x0 = int(lo[0]) if lo else 0
    x1 = int(hi[0]) if hi is not None else 9
    free = []
    for x in range(x0, x1 + 1):
        lower_tight = x == x0 and len(lo) > 1
        upper_tight = hi is not None and x == x1
        if not lower_tight and not upper_tight:
            free.append(x)
            continue
        rest = _fraction_digits(lo[1:] if x == x0 else "", (hi[1:] if upper_tight else None), False)
        if rest is not None:
            options.append(str(x) + rest)
    if free:
        options.append(_digits(str(free[0]), str(free[-1])) + "[0-9]*")
    nonempty = [o for o in options if o]
    body = _join(nonempty)
    if body is None:
        return "" if "" in options else None
    return f"(?:{body[3:-1] if body.startswith('(?:') else body})?" if "" in options else body


def _fraction_literals(lo: float, hi: float | None) -> list[str]:
    """Alternatives for literals `I.D+` with value in [lo, hi], 0 <= lo (hi None: unbounded)."""
    il, fl = _split(lo)
    if hi is not None:
        iu, fu = _split(hi)
        if il == iu:
            digits = _fraction_digits(fl, fu, True)
            return [] if digits is None else [f"{il}\\.{digits}"]
    out = [f"{il}\\.{_fraction_digits(fl, None, True)}"]
    middle = _join(_natural_range(il + 1, None if hi is None else iu - 1))
    if middle is not None:
        out.append(f"{middle}\\.[0-9]+")
    if hi is not None:
        digits = _fraction_digits("", fu, True)
        if digits is not None:
            out.append(f"{iu}\\.{digits}")
    return out


def number_range_regex(lower: Bound | None, upper: Bound | None, integer_only: bool) -> str | None:
    """Number literals inside the bounds (see the module docstring); None if there are none."""
    if lower is None and upper is None:
        return INTEGER_REGEX if integer_only else NUMBER_REGEX
    out = []
    ints = integer_range_regex(*_integer_bounds(lower, upper))
    if ints is not None:
        out.append(ints)
    if not integer_only:
        lo = None if lower is None else _double_at_least(lower.value, not lower.inclusive)
        hi = None
        if upper is not None:
            neg = _double_at_least(-upper.value, not upper.inclusive)
            hi = None if neg is None else -neg
        empty = (lower is not None and lo is None) or (upper is not None and hi is None)
        if not empty and (lo is None or hi is None or lo <= hi):
            if hi is None or hi >= 0:
                out += _fraction_literals(max(lo, 0.0) if lo is not None else 0.0, hi)
            if lo is None or lo < 0:
                out += ["-" + o for o in _fraction_literals(max(-hi, 0.0) if hi is not None else 0.0, None if lo is None else -lo)]
    return _join(out)


def multiple_of_regex(k: int) -> str | None:
    """Canonical integer literals that are multiples of k, when k divides 1000 (else None): a
    multiple's last digits alone decide it."""
    j = next((j for j in range(4) if 10**j % k == 0), None)
    if j is None:
        return None
    if j == 0:
        return INTEGER_REGEX
    short = [str(n) for n in range(k, 10**j, k)]
    suffixes = _join([str(n).zfill(j) for n in range(0, 10**j, k)])
    magnitude = _join(short + [f"[1-9][0-9]*{suffixes}"])
    return f"(?:0|-?{magnitude})"
