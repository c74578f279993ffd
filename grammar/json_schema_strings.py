"""JSON string text as regexes: character sets rendered as string "units", and string formats.

A *unit* is the serialized form of one decoded character inside a JSON string literal. Two kinds:

- `STRING_UNIT`: every legal serialization (raw characters, the short escapes, `\\uXXXX` with
  surrogate pairs combined into one character and lone surrogates excluded). Used where any
  character is allowed, so `minLength`/`maxLength` count decoded characters exactly.
- `unit_regex(charset)`: the canonical serialization of the characters in `charset`, the one
  `json.dumps(..., ensure_ascii=False)` writes: raw text except `"`, `\\` and the control
  characters, which get `\\"`, `\\\\`, `\\b \\f \\n \\r \\t` or lowercase `\\u00XX`. Every
  character has exactly one canonical form, so a regex over canonical units matches one
  serialization per string value: pattern-constrained strings and object keys use it, which
  makes key exclusion (`key_complement_regex`) exact.

Character sets are tuples of inclusive code-point ranges, sorted and disjoint; surrogate code
points are never members (they are not characters of well-formed UTF-8 text).
"""

from __future__ import annotations

import json
import unicodedata

MAX_CODE_POINT = 0x10FFFF
Charset = tuple  # tuple[tuple[int, int], ...]

UNIVERSE: Charset = ((0, 0xD7FF), (0xE000, MAX_CODE_POINT))
_SPECIAL: Charset = ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C))
_SHORT_ESCAPES = {0x22: '"', 0x5C: "\\\\", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}
_CLASS_META = set("\\]^-[")

STRING_UNIT = (
    r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9A-Ca-cEFef][0-9A-Fa-f]{3}|[Dd][0-7][0-9A-Fa-f]{2})'
    r"|\\u[Dd][89ABab][0-9A-Fa-f]{2}\\u[Dd][C-Fc-f][0-9A-Fa-f]{2})"
)


def charset_union(a: Charset, b: Charset) -> Charset:
    ranges = sorted(a + b)
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def charset_complement(a: Charset) -> Charset:
    """Characters (of UNIVERSE) not in `a`."""
    out = []
    start = 0
    for lo, hi in a:
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return charset_intersect(tuple(out), UNIVERSE)


def charset_intersect(a: Charset, b: Charset) -> Charset:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def charset_subtract(a: Charset, b: Charset) -> Charset:
    return charset_intersect(a, charset_complement(b))


def charset_size(a: Charset) -> int:
    return sum(hi - lo + 1 for lo, hi in a)


def charset_of(text: str) -> Charset:
    return charset_union((), tuple((ord(c), ord(c)) for c in text))


def charset_contains(a: Charset, code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in a)


def regex_char(code: int, meta: set | str) -> str:
    """One code point in a regex: printable text as itself (escaped if in `meta`), other
    characters (controls, separators, format and private-use characters) as \\xHH / \\uHHHH."""
    ch = chr(code)
    if code < 0x20 or 0x7F <= code <= 0xA0:
        return f"\\x{code:02x}"
    if code > 0xA0 and unicodedata.category(ch)[0] in "ZC":
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return "\\" + ch if ch in meta else ch


def _class_char(code: int) -> str:
    return regex_char(code, _CLASS_META)


def _class_body(a: Charset) -> str:
    parts = []
    for lo, hi in a:
        if lo == hi:
            parts.append(_class_char(lo))
        elif hi == lo + 1:
            parts.append(_class_char(lo) + _class_char(hi))
        else:
            parts.append(f"{_class_char(lo)}-{_class_char(hi)}")
    return "".join(parts)


def class_regex(a: Charset) -> str:
    """A regex character class for `a` (non-empty), negated when that is shorter."""
    if len(a) == 1 and a[0][0] == a[0][1]:
        from .json_schema_ir import escape_literal

        return escape_literal(chr(a[0][0]))
    outside = charset_subtract(((0, MAX_CODE_POINT),), a)
    # Surrogates are outside every set; a negated class may leave them in (they never occur).
    outside = charset_subtract(outside, ((0xD800, 0xDFFF),))
    if len(outside) < len(a):
        return f"[^{_class_body(outside)}]"
    return f"[{_class_body(a)}]"


def _hex_escapes(codes: list[int]) -> list[str]:
    """Lowercase `\\u00XX` escapes for control characters, grouped by their third hex digit."""
    by_high: dict[int, list[int]] = {}
    for code in codes:
        by_high.setdefault(code >> 4, []).append(code & 0xF)
    out = []
    for high, lows in sorted(by_high.items()):
        digits = "".join(f"{low:x}" for low in lows)
        out.append(f"\\\\u00{high:x}" + (digits if len(lows) == 1 else f"[{digits}]"))
    return out


def unit_regex(a: Charset) -> str | None:
    """The canonical serialization of one character of `a` (None if `a` is empty)."""
    parts = []
    raw = charset_subtract(a, _SPECIAL)
    if raw:
        parts.append(class_regex(raw))
    short, hexes = [], []
    for lo, hi in charset_intersect(a, _SPECIAL):
        for code in range(lo, hi + 1):
            (short if code in _SHORT_ESCAPES else hexes).append(code)
    if short:
        letters = "".join(_SHORT_ESCAPES[c] for c in short)
        parts.append("\\\\" + (letters if len(short) == 1 else f"[{letters}]"))
    parts.extend(_hex_escapes(hexes))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


ANY_CANONICAL_UNIT = unit_regex(UNIVERSE)


def json_literal(value: object) -> str:
    """Canonical compact JSON text of a value (raw non-ASCII, as `unit_regex` expects)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def string_body_regex(min_length: int, max_length: int | None) -> str:
    """Units of any string with a length in [min_length, max_length], without the quotes."""
    from .json_schema_ir import _quantifier

    if max_length == 0:
        return ""
    return STRING_UNIT + _quantifier(min_length, max_length)


def key_complement_regex(names: list[str], alphabet: Charset = UNIVERSE, blocked: list[str] = ()) -> str | None:
    """Canonical-unit string bodies (no quotes) of every string over `alphabet` that is not in
    `names` and does not start with a `blocked` prefix (None: no string is left)."""
    trie: dict = {}
    in_alphabet = lambda text: all(charset_contains(alphabet, ord(c)) for c in text)
    for text, mark in [(n, "name") for n in names] + [(b, "blocked") for b in blocked]:
        if not in_alphabet(text):
            continue
        node = trie
        for ch in text:
            node = node.setdefault(ord(ch), {})
        node[mark] = True
    any_unit = unit_regex(alphabet)

    def build(node: dict) -> str | None:
        if "blocked" in node:
            return None
        options = [] if "name" in node else [""]
        children = sorted(k for k in node if isinstance(k, int))
        other = unit_regex(charset_subtract(alphabet, charset_union((), tuple((c, c) for c in children))))
        if other is not None:
            options.append(f"{other}{any_unit}*")
        for code in children:
            rest = build(node[code])
            if rest is not None:
                options.append(unit_regex(((code, code),)) + rest)
        if not options:
            return None
        if len(options) == 1:
            return options[0]
        nonempty = [o for o in options if o]
        body = "|".join(nonempty)
        return f"(?:{body})?" if "" in options else f"(?:{body})"

    return build(trie)


_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][48]|[2468]0|[13579][26])00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?(?:Z|[+\\-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_HEX = "[0-9a-fA-F]"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = f"{_OCTET}(?:\\.{_OCTET}){{3}}"
_H16 = f"{_HEX}{{1,4}}"


def _ipv6_compressed(k: int) -> str:
    """IPv6 text with "::" after k groups (at most 7 groups written in all)."""
    prefix = "::" if k == 0 else f"(?:{_H16}:){{{k}}}:"
    tails = [f"(?:{_H16}:){{0,{6 - k}}}{_H16}"] if k < 7 else []
    if k <= 5:
        tails.append(f"(?:{_H16}:){{0,{5 - k}}}{_IPV4}")
    return prefix + (f"(?:{'|'.join(tails)})?" if tails else "")


_IPV6 = "(?:" + "|".join(
    [f"(?:{_H16}:){{7}}{_H16}", f"(?:{_H16}:){{6}}{_IPV4}"] + [_ipv6_compressed(k) for k in range(8)]
) + ")"
_ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`\\{|\\}~\\-]"


def _label(max_length: int) -> str:
    """An RFC 1123 host label (letters, digits, inner hyphens) that is not reserved: no "--" at
    positions 3-4 (those are IDNA A-labels, "xn--...", valid only as punycode)."""
    a, h = "[A-Za-z0-9]", "[A-Za-z0-9\\-]"
    return f"(?:{a}(?:{h}?{a})?|{a}{h}[A-Za-z0-9\\-]{a}|{a}{h}(?:{a}{h}|-{a}){h}{{0,{max_length - 5}}}{a})"


_HOSTNAME = f"{_label(63)}(?:\\.{_label(62)}){{0,3}}"
_UNRESERVED = "A-Za-z0-9\\-._~"
_SUB_DELIMS = "!$&'()*+,;="
_PCT = f"%{_HEX}{{2}}"
_PCHAR = f"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_QUERY = f"(?:[{_UNRESERVED}{_SUB_DELIMS}:@/?]|{_PCT})*"
_HOST = f"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})+"
_URI = f"[A-Za-z][A-Za-z0-9+\\-.]*://{_HOST}(?::[0-9]+)?(?:/{_PCHAR}*)*(?:\\?{_QUERY})?(?:#{_QUERY})?"

# name -> (regex over raw characters, which need no escaping in JSON; min length; max length)
FORMATS: dict[str, tuple[str, int, int | None]] = {
    "date": (_DATE, 10, 10),
    "time": (_TIME, 9, 24),
    "date-time": (f"{_DATE}T{_TIME}", 20, 35),
    "uuid": (f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}", 36, 36),
    "ipv4": (_IPV4, 7, 15),
    "ipv6": (_IPV6, 2, 45),
    "hostname": (_HOSTNAME, 1, 252),
    "email": (f"{_ATEXT}{{1,32}}(?:\\.{_ATEXT}{{1,15}}){{0,2}}@{_HOSTNAME}", 3, 317),
    "uri": (_URI, 5, None),
}
FORMATS_DOC = """\
Formats (a sound subset of each format's syntax, always asserted):
  date       RFC 3339 full-date, real calendar dates (leap years), year 0001-9999
  time       RFC 3339 full-time with offset (Z or +hh:mm), no leap second, at most 9 fraction digits
  date-time  date "T" time
  uuid       8-4-4-4-12 hex digits, either case
  ipv4       dotted quad, no leading zeros
  ipv6       RFC 4291 text forms (with "::" and a trailing dotted quad), no zone id
  hostname   1-4 RFC 1123 labels (letters, digits, inner hyphens; no "--" at positions 3-4, which
             IDNA reserves), at most 252 characters
  email      dot-atom local part (at most 64 characters) "@" hostname
  uri        scheme "://" host [":" port] path ["?" query] ["#" fragment] (RFC 3986 characters)
"""

# Formats defined by some JSON Schema draft that are not implemented: refused, never ignored.
# Any other format name is not a JSON Schema format, carries no assertion, and is ignored.
UNSUPPORTED_FORMATS = frozenset(
    {
        "idn-hostname", "uri-reference", "iri", "iri-reference", "idn-email", "json-pointer",
        "relative-json-pointer", "regex", "uri-template", "duration",
    }
)


def regex_fsm(regex: str):
    """An interegular FSM of one of our regexes (its `\\uXXXX` escapes become literal characters,
    which interegular reads; the escapes stand for characters that are not printable)."""
    import interegular

    out, i = [], 0
    while i < len(regex):
        if regex[i] == "\\" and regex[i + 1] in "uU":
            width = 4 if regex[i + 1] == "u" else 8
            ch = chr(int(regex[i + 2 : i + 2 + width], 16))
            out.append("\\" + ch if ch in _CLASS_META else ch)
            i += 2 + width
        elif regex[i] == "\\":
            out.append(regex[i : i + 2])
            i += 2
        else:
            out.append(regex[i])
            i += 1
    return interegular.parse_pattern("".join(out)).to_fsm()
