"""Glob patterns for MAP_SCAN, matched without backtracking (SECURITY-CATALOGUE F4).

Syntax (Redis-like): `*` any run of characters, `?` one character, `[abc]`, `[a-z]`, `[!a]` or
`[^a]` one character of (not of) a class, `\\x` the character x literally.

A pattern is split at its stars into segments of single-character atoms, so every segment has
a fixed length. A key matches when the first segment matches at its start, the last at its end,
and the middle segments can be found in order in between; taking the leftmost occurrence of
each middle segment is always right (anything a later occurrence allows, an earlier one allows
too). Work per key is therefore O(len(key) * len(pattern)) with no backtracking across stars,
against exponential (or high-degree polynomial) time for a regex translated naively.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from loom.wire.errors import BadRequest

Seg = tuple[int, str | None, "re.Pattern[str] | None"]  # (length, literal text, atom regex)


def _class(p: str, i: int) -> tuple[str, int] | None:
    """Parse a class starting at p[i] == '['; the regex class and the index after it."""
    n = len(p)
    j = i + 1
    neg = j < n and p[j] in "!^"
    if neg:
        j += 1
    chars: list[str] = []
    first = True
    while j < n and (p[j] != "]" or first):
        first = False
        c = p[j]
        if c == "\\" and j + 1 < n:
            j += 1
            c = p[j]
        if j + 2 < n and p[j + 1] == "-" and p[j + 2] != "]":
            hi = p[j + 2]
            if hi == "\\" and j + 3 < n:
                hi = p[j + 3]
                j += 1
            lo, hi = (c, hi) if c <= hi else (hi, c)
            chars.append(f"{re.escape(lo)}-{re.escape(hi)}")
            j += 3
            continue
        chars.append(re.escape(c))
        j += 1
    if j >= n:
        return None  # no closing bracket: the '[' is literal
    return ("[^" if neg else "[") + "".join(chars) + "]", j + 1


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate matching keys against `pattern`; BadRequest if it cannot be compiled."""
    segs: list[list[tuple[str, str | None]]] = [[]]  # atoms: (regex, literal char or None)
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if segs[-1] or len(segs) == 1:
                segs.append([])
            i += 1
            continue
        if c == "?":
            segs[-1].append((".", None))
        elif c == "\\" and i + 1 < n:
            i += 1
            segs[-1].append((re.escape(pattern[i]), pattern[i]))
        elif c == "[" and (cls := _class(pattern, i)) is not None:
            segs[-1].append((cls[0], None))
            i = cls[1]
            continue
        else:
            segs[-1].append((re.escape(c), c))
        i += 1
    try:
        compiled: list[Seg] = []
        for atoms in segs:
            lits = [lit for _, lit in atoms]
            if all(lit is not None for lit in lits):
                compiled.append((len(atoms), "".join(lit for lit in lits if lit), None))
            else:
                rx = re.compile("".join(a for a, _ in atoms), re.DOTALL)
                compiled.append((len(atoms), None, rx))
    except re.error as e:
        raise BadRequest(f"invalid match pattern: {e}") from None
    return _matcher(compiled)


def _at(seg: Seg, key: str, pos: int) -> bool:
    length, lit, rx = seg
    if lit is not None:
        return key.startswith(lit, pos)
    return rx is not None and rx.match(key, pos, pos + length) is not None


def _find(seg: Seg, key: str, pos: int, end: int) -> int:
    _, lit, rx = seg
    if lit is not None:
        return key.find(lit, pos, end)
    assert rx is not None
    m = rx.search(key, pos, end)
    return -1 if m is None else m.start()


def _matcher(segs: list[Seg]) -> Callable[[str], bool]:
    if len(segs) == 1:
        only = segs[0]
        return lambda k: len(k) == only[0] and _at(only, k, 0)
    first, middle, last = segs[0], segs[1:-1], segs[-1]
    fixed = sum(s[0] for s in segs)

    def match(k: str) -> bool:
        if len(k) < fixed or not _at(first, k, 0):
            return False
        end = len(k) - last[0]
        if not _at(last, k, end):
            return False
        pos = first[0]
        for seg in middle:
            at = _find(seg, k, pos, end)
            if at < 0:
                return False
            pos = at + seg[0]
        return True

    return match
