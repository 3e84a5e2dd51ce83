"""Bounded glob patterns for ACL structure and key scopes.

fnmatch-style: `*` (any run), `?` (one character), `[abc]`, `[a-z]`, `[!x]`; everything else is
literal. Matching is case-sensitive and uses no regular expressions: the two-pointer algorithm
below backtracks only to the last `*`, so it runs in O(len(pattern) * len(text)) whatever the
pattern (SECURITY-CATALOGUE F4: no pathological patterns).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_PATTERN", "Glob", "GlobError"]

MAX_PATTERN = 256


class GlobError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Class:
    ranges: tuple[tuple[str, str], ...]
    negate: bool

    def matches(self, c: str) -> bool:
        hit = any(lo <= c <= hi for lo, hi in self.ranges)
        return hit != self.negate


@dataclass(frozen=True, slots=True)
class Glob:
    pattern: str
    tokens: tuple[tuple[str, str | _Class], ...]  # (kind, payload): lit / any / star / class

    @classmethod
    def compile(cls, pattern: object) -> Glob:
        if not isinstance(pattern, str):
            raise GlobError(f"pattern must be a string, got {type(pattern).__name__}")
        if not 1 <= len(pattern) <= MAX_PATTERN:
            raise GlobError(f"pattern must be 1..{MAX_PATTERN} characters")
        if not pattern.isprintable():
            raise GlobError(f"pattern {pattern!r} contains control or invisible characters")
        toks: list[tuple[str, str | _Class]] = []
        i, n = 0, len(pattern)
        while i < n:
            c = pattern[i]
            if c == "*":
                if not toks or toks[-1][0] != "star":  # "**" is "*"
                    toks.append(("star", ""))
                i += 1
            elif c == "?":
                toks.append(("any", ""))
                i += 1
            elif c == "[":
                j = pattern.find("]", i + 2)  # a ']' right after '[' (or '[!') is literal
                if j < 0:
                    raise GlobError(f"pattern {pattern!r}: unterminated '['")
                body = pattern[i + 1 : j]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                    if not body:
                        raise GlobError(f"pattern {pattern!r}: empty '[!]'")
                ranges: list[tuple[str, str]] = []
                k = 0
                while k < len(body):
                    if k + 2 < len(body) and body[k + 1] == "-":
                        lo, hi = body[k], body[k + 2]
                        if lo > hi:
                            raise GlobError(f"pattern {pattern!r}: bad range {lo}-{hi}")
                        ranges.append((lo, hi))
                        k += 3
                    else:
                        ranges.append((body[k], body[k]))
                        k += 1
                toks.append(("class", _Class(tuple(ranges), negate)))
                i = j + 1
            else:
                toks.append(("lit", c))
                i += 1
        return cls(pattern, tuple(toks))

    @staticmethod
    def _one(tok: tuple[str, str | _Class], c: str) -> bool:
        kind, p = tok
        if kind == "any":
            return True
        if kind == "lit":
            return p == c
        assert isinstance(p, _Class)
        return p.matches(c)

    def match(self, text: str) -> bool:
        toks = self.tokens
        ti = pi = 0
        star_pi, star_ti = -1, 0
        while ti < len(text):
            if pi < len(toks) and toks[pi][0] == "star":
                star_pi, star_ti = pi, ti
                pi += 1
            elif pi < len(toks) and self._one(toks[pi], text[ti]):
                pi += 1
                ti += 1
            elif star_pi >= 0:
                # Backtrack only to the most recent star: let it absorb one more character.
                star_ti += 1
                pi, ti = star_pi + 1, star_ti
            else:
                return False
        while pi < len(toks) and toks[pi][0] == "star":
            pi += 1
        return pi == len(toks)
