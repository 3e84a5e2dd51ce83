"""ACL glob patterns agree with fnmatch and stay bounded (F4)."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom.security.glob import Glob, GlobError

ALPHA = "ab*?[]!-"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=ALPHA, min_size=1, max_size=10), st.text(alphabet="ab-!", max_size=12))
def test_agrees_with_fnmatchcase(pattern: str, text: str) -> None:
    try:
        g = Glob.compile(pattern)
    except GlobError:
        return  # refused patterns (unterminated '[', bad ranges) are never used
    assert g.match(text) == fnmatch.fnmatchcase(text, pattern), (pattern, text)


def test_pathological_pattern_is_linear_work() -> None:
    # Exponential for a naive backtracking matcher; this one backtracks only to the last star.
    g = Glob.compile("*a" * 100 + "b")
    assert not g.match("a" * 1024)


@pytest.mark.parametrize("bad", ["", "x" * 257, "a\nb", "[", "[z-a]", "[!]", 5])
def test_refused(bad: object) -> None:
    with pytest.raises(GlobError):
        Glob.compile(bad)
