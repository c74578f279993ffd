"""Code point ranges -> UTF-8 byte-range sequences, so character automata can run on bytes.

`utf8_sequences(lo, hi)` splits [lo, hi] into sequences of byte ranges such that the byte strings
matched by the sequences are exactly the UTF-8 encodings of the code points in [lo, hi]
(surrogates excluded): e.g. [0x80, 0x7FF] -> [((0xC2, 0xDF), (0x80, 0xBF))].
"""

from __future__ import annotations

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)

ByteSeq = tuple[tuple[int, int], ...]


def encode_code_point(cp: int) -> bytes:
    """UTF-8 bytes of one code point (surrogates included, for range endpoints)."""
    if cp < 0x80:
        return bytes([cp])
    if cp < 0x800:
        return bytes([0xC0 | cp >> 6, 0x80 | cp & 0x3F])
    if cp < 0x10000:
        return bytes([0xE0 | cp >> 12, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])
    return bytes([0xF0 | cp >> 18, 0x80 | cp >> 12 & 0x3F, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])


def without_surrogates(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Remove the surrogate block from a list of code point ranges."""
    out = []
    s_lo, s_hi = SURROGATES
    for lo, hi in ranges:
        if hi < s_lo or lo > s_hi:
            out.append((lo, hi))
            continue
        if lo < s_lo:
            out.append((lo, s_lo - 1))
        if hi > s_hi:
            out.append((s_hi + 1, hi))
    return out


def utf8_sequences(lo: int, hi: int) -> list[ByteSeq]:
    """Byte-range sequences matching exactly the UTF-8 encodings of code points lo..hi."""
    out: list[ByteSeq] = []
    for a, b in without_surrogates([(lo, hi)]):
        _split(a, b, out)
    return out


def _split(lo: int, hi: int, out: list[ByteSeq]) -> None:
    for boundary in (0x7F, 0x7FF, 0xFFFF):  # encoded length changes after each
        if lo <= boundary < hi:
            _split(lo, boundary, out)
            _split(boundary + 1, hi, out)
            return
    if hi < 0x80:
        out.append(((lo, hi),))
        return
    for i in range(1, 4):
        m = (1 << (6 * i)) - 1  # the low bits carried by the last i continuation bytes
        if lo & ~m != hi & ~m:
            if lo & m:
                _split(lo, lo | m, out)
                _split((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split(lo, (hi & ~m) - 1, out)
                _split(hi & ~m, hi, out)
                return
    out.append(tuple(zip(encode_code_point(lo), encode_code_point(hi))))
