"""The one glob dialect: ACL structure and key scopes, MAP_SCAN's `match`, `map_caches` names.

The dialect is `DIALECT` below, which docs/protocol.md ("Glob patterns") renders as is.

Cost (SECURITY-CATALOGUE F4). A pattern is cut at its stars into segments of fixed width. A
text matches when the first segment matches at its start, the last at its end, and each middle
segment occurs, in order and without overlapping, in between; taking each middle segment's
leftmost occurrence is always right (any later placement leaves less room, never more). So
matching never backtracks across a star, and the work is done in C (`str.startswith`,
`str.find`, which is linear, or a fixed-width regular expression of single-character atoms,
which has no quantifier to backtrack on). The first and last segments are tried at one place
each; only a middle segment that is not plain text is searched position by position, so one
text costs at most len(text) x `search_width` comparisons (plus the pattern's length). A naive
translation of `*a*a*a...b` into a regular expression would take exponential time instead.
Scans use `search_width` to bound the work of one call (loom/state/map.py, MAP_SCAN).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loom.wire.errors import BadRequest

__all__ = ["DIALECT", "MAX_PATTERN", "Glob", "GlobError"]

MAX_PATTERN = 256

DIALECT = f"""\
One dialect serves MAP_SCAN's `match`, the ACL's `structures` and `keys` scopes and the
`[state] map_caches` names (`loom/wire/glob.py`). A pattern matches a whole key or name,
character by character, case-sensitively:

- `*` matches any run of characters, the empty run included (`**` is `*`);
- `?` matches exactly one character;
- `[...]` matches one character of a class: single characters and ranges `a-z`; `[!...]` and
  `[^...]` match one character *not* in the class; a `]` right after the opening `[` (or
  after `!`/`^`) and a `-` at either end of the class are literal;
- `\\c` matches the character c itself, inside a class too (`a\\*b` matches only `a*b`,
  `\\[` a bracket);
- every other character matches itself.

Refused with `BAD_REQUEST` (in an ACL policy: the policy is invalid, naming the pattern): a
pattern that is not 1..{MAX_PATTERN} printable characters, an unterminated `[`, an empty class,
a reversed range such as `[z-a]`, a trailing `\\`.

Matching never backtracks across a star: a key costs at most its length times the width of
the widest wildcard segment between two stars, and one MAP_SCAN call examines fewer keys when
that width would make it cost more than `StateLimits.scan_match_work` (8 Mi) comparisons (its
page is then shorter and its cursor goes on).
"""

# A segment: (width in characters, the literal text when every atom is a plain character,
# else a compiled fixed-width regular expression).
_Segment = tuple[int, str | None, "re.Pattern[str] | None"]


class GlobError(BadRequest):
    """A pattern outside the dialect; the message says what and where."""


def _class(p: str, i: int) -> tuple[str, int]:
    """Parse the class opening at p[i] == '['; its regex and the index just after it."""
    n = len(p)
    j = i + 1
    negate = j < n and p[j] in "!^"
    if negate:
        j += 1
    chars: list[str] = []  # single characters, in order, with escapes resolved
    escaped: list[bool] = []
    first = True
    while j < n and (p[j] != "]" or first):
        first = False
        if p[j] == "\\":
            if j + 1 >= n:
                j = n  # "[\" at the end: never closed
                break
            j += 1
            chars.append(p[j])
            escaped.append(True)
        else:
            chars.append(p[j])
            escaped.append(False)
        j += 1
    if j >= n:
        raise GlobError(f"pattern {p!r}: unterminated '[' at {i} (a literal one is \\[)")
    items: list[str] = []
    k = 0
    while k < len(chars):
        # A range is "lo-hi" with an unescaped '-' that is neither first nor last.
        if k + 2 < len(chars) and chars[k + 1] == "-" and not escaped[k + 1]:
            lo, hi = chars[k], chars[k + 2]
            if lo > hi:
                raise GlobError(f"pattern {p!r}: reversed range {lo}-{hi}")
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            k += 3
        else:
            items.append(re.escape(chars[k]))
            k += 1
    return ("[^" if negate else "[") + "".join(items) + "]", j + 1


@dataclass(frozen=True, slots=True)
class Glob:
    pattern: str
    segments: tuple[_Segment, ...]  # at least one; two or more when the pattern has a star
    # Comparisons per text character in the worst case: the widest middle segment that is not
    # plain text (searched with a regular expression), or 1.
    search_width: int = 1

    @classmethod
    def compile(cls, pattern: object) -> Glob:
        if not isinstance(pattern, str):
            raise GlobError(f"a pattern must be a string, got {type(pattern).__name__}")
        if not 1 <= len(pattern) <= MAX_PATTERN:
            raise GlobError(f"a pattern must have 1..{MAX_PATTERN} characters, "
                            f"got {len(pattern)}")
        if not pattern.isprintable():
            raise GlobError(f"pattern {pattern!r} contains control or invisible characters")
        # atoms of each segment: (regex, the literal character or None)
        segs: list[list[tuple[str, str | None]]] = [[]]
        i, n = 0, len(pattern)
        while i < n:
            c = pattern[i]
            if c == "*":
                if segs[-1] or len(segs) == 1:  # "**" is "*"
                    segs.append([])
                i += 1
            elif c == "?":
                segs[-1].append((".", None))
                i += 1
            elif c == "[":
                rx, i = _class(pattern, i)
                segs[-1].append((rx, None))
            elif c == "\\":
                if i + 1 >= n:
                    raise GlobError(f"pattern {pattern!r} ends with an escaping '\\'")
                segs[-1].append((re.escape(pattern[i + 1]), pattern[i + 1]))
                i += 2
            else:
                segs[-1].append((re.escape(c), c))
                i += 1
        out: list[_Segment] = []
        for atoms in segs:
            lits = [lit for _, lit in atoms]
            if all(lit is not None for lit in lits):
                out.append((len(atoms), "".join(lit for lit in lits if lit is not None), None))
            else:
                out.append((len(atoms), None, re.compile("".join(a for a, _ in atoms), re.S)))
        width = max((w for w, lit, _ in out[1:-1] if lit is None), default=1)
        return cls(pattern, tuple(out), width)

    def match(self, text: str) -> bool:
        segs = self.segments
        if len(segs) == 1:
            return len(text) == segs[0][0] and _at(segs[0], text, 0)
        first, last = segs[0], segs[-1]
        end = len(text) - last[0]  # where the last segment must start
        if end < first[0] or not _at(first, text, 0) or not _at(last, text, end):
            return False
        pos = first[0]
        for seg in segs[1:-1]:
            at = _find(seg, text, pos, end)
            if at < 0:
                return False
            pos = at + seg[0]
        return True


def _at(seg: _Segment, text: str, pos: int) -> bool:
    _, lit, rx = seg
    if lit is not None:
        return text.startswith(lit, pos)
    assert rx is not None
    return rx.match(text, pos) is not None


def _find(seg: _Segment, text: str, pos: int, end: int) -> int:
    """The leftmost start >= pos of an occurrence of seg that ends by `end`, or -1."""
    _, lit, rx = seg
    if lit is not None:
        return text.find(lit, pos, end)
    assert rx is not None
    m = rx.search(text, pos, end)
    return -1 if m is None else m.start()
