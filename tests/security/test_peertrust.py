"""The peer-admission rule (loom/security/peertrust.py), pure: data-driven scripts and the
strict parsing of a vouch.

Each testdata/peertrust_*.txt holds blocks: commands, a `----` line, and the output they must
print, then a blank line. The trust persists from block to block within a file. Commands:

    new SELF [max=N]                        a fresh PeerTrust for node SELF
    own trusted=a,b [removed=c] applied=N   the node's own view (PeerTrust.update)
    hear VOUCHER index=N members=a,b@addr   a PEER_MEMBERS heard from VOUCHER (PeerTrust.hear)

Each command prints whether the vouched peers changed; each block then prints who is admitted
and refused among every id the file named so far (and n9, which no script ever makes a
member: it must be refused in every block), and the vouched configuration in force. Set
LOOM_REWRITE=1 to regenerate the outputs after a deliberate change (and review the diff).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from loom.security.peertrust import (
    MAX_MEMBERS,
    PeerTrust,
    Vouch,
    VouchError,
    newest_vouched,
    parse_vouch,
)

DATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(DATA.glob("peertrust_*.txt"))
NEVER_MEMBER = "n9"


def _ids(csv: str) -> list[str]:
    return [x for x in csv.split(",") if x]


class Runner:
    def __init__(self, trust: type[PeerTrust] = PeerTrust) -> None:
        self.kind = trust
        self.trust = trust("n0")
        self.seen: set[str] = {NEVER_MEMBER}

    def command(self, line: str) -> str:
        word, *args = line.split()
        kv = dict(a.split("=", 1) for a in args if "=" in a)
        plain = [a for a in args if "=" not in a]
        if word == "new":
            self.trust = self.kind(plain[0], max_vouchers=int(kv.get("max", "64")))
            self.seen.add(plain[0])
            return f"new {plain[0]}"
        if word == "own":
            trusted, removed = _ids(kv["trusted"]), _ids(kv.get("removed", ""))
            self.seen.update(trusted, removed)
            changed = self.trust.update(trusted, removed, int(kv["applied"]))
            return f"own: vouched changed={changed}"
        if word == "hear":
            members = {}
            for m in _ids(kv["members"]):
                node, _, addr = m.partition("@")
                members[node] = addr
            self.seen.update(members, plain)
            changed = self.trust.hear(plain[0], Vouch(int(kv["index"]), members))
            return f"hear {plain[0]}: vouched changed={changed}"
        raise ValueError(f"unknown command {line!r}")

    def state(self) -> list[str]:
        t = self.trust
        ids = sorted(self.seen)
        st = t.statistics()
        vouched = t.vouched()
        out = [f"admits: {' '.join(n for n in ids if t.admits(n)) or '-'}",
               f"refuses: {' '.join(n for n in ids if not t.admits(n))}"]
        if st.vouch_index is None:
            out.append("vouched: none")
        else:
            peers = " ".join(f"{n}@{vouched[n]}" if vouched[n] else n for n in sorted(vouched))
            out.append(f"vouched: {peers or '-'} (index {st.vouch_index}, from {st.voucher})")
        out.append(f"held {st.held}, heard {st.heard}, ignored {st.ignored}")
        return out


def run_script(text: str, trust: type[PeerTrust] = PeerTrust) -> str:
    """The transcript of a script's commands: comments, commands, `----`, their output."""
    r, out, block = Runner(trust), [], []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            out.append(s)
        elif s == "----":
            out.append(s)
            out.extend(r.command(c) for c in block)
            out.extend(r.state())
            out.append("")
            block = []
        else:
            out.append(s)
            block.append(s)
    return "\n".join(out)


def _commands_only(text: str) -> str:
    """The script without its expected outputs: comments, commands and separators."""
    keep, expecting = [], False
    for line in text.splitlines():
        if line == "----":
            keep.append(line)
            expecting = True
        elif not line.strip():
            expecting = False
        elif line.startswith("#") or not expecting:
            keep.append(line)
    return "\n".join(keep)


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path: Path) -> None:
    text = path.read_text()
    got = run_script(_commands_only(text))
    if os.environ.get("LOOM_REWRITE") == "1":
        path.write_text(got)
        text = got
    assert got == text
    for line in got.splitlines():
        if line.startswith("refuses:"):
            assert NEVER_MEMBER in line.split()[1:], line
        if line.startswith("admits:"):
            assert NEVER_MEMBER not in line.split()[1:], line


def test_scripts_exist() -> None:
    assert len(SCRIPTS) >= 2


class _VouchedRemoved(PeerTrust):
    """A planted bug: a vouch readmits an id the node's own removed set names."""

    def update(self, trusted: Iterable[str], removed: Iterable[str], applied: int) -> bool:
        return super().update(trusted, (), applied)


class _NeverRetired(PeerTrust):
    """A planted bug: a vouch stays in force after the node's own log reached it."""

    def update(self, trusted: Iterable[str], removed: Iterable[str], applied: int) -> bool:
        return super().update(trusted, removed, 0)


@pytest.mark.parametrize(("mutant", "script"), [(_VouchedRemoved, "peertrust_removed.txt"),
                                                (_NeverRetired, "peertrust_catch_up.txt")])
def test_scripts_catch_planted_bugs(mutant: type[PeerTrust], script: str) -> None:
    text = (DATA / script).read_text()
    assert run_script(_commands_only(text), mutant) != text


# -- the pure function alone ---------------------------------------------------------------------
def V(index: int, *members: str) -> Vouch:
    return Vouch(index, dict.fromkeys(members, ""))


@pytest.mark.parametrize(("trusted", "removed", "applied", "vouches", "expected"), [
    # nothing heard: nothing vouched
    ({"a", "b"}, set(), 5, {}, None),
    # a trusted member's newer configuration
    ({"a", "b"}, set(), 5, {"a": V(9, "a", "b", "c")}, ("a", 9)),
    # not newer than our own log: superseded
    ({"a", "b"}, set(), 9, {"a": V(9, "a", "b", "c")}, None),
    # an outsider's word is never read
    ({"a", "b"}, set(), 5, {"x": V(9, "a", "b", "x")}, None),
    # a removed member's word is never read
    ({"a", "b"}, {"b"}, 5, {"b": V(9, "a", "c")}, None),
    # the newest of several; ties go to the smallest voucher id
    ({"a", "b"}, set(), 5, {"a": V(7, "a", "b", "c"), "b": V(8, "a", "b", "d")}, ("b", 8)),
    ({"a", "b"}, set(), 5, {"b": V(8, "a", "b", "d"), "a": V(8, "a", "b", "d")}, ("a", 8)),
    # a vouched member's newer word counts (c is vouched for by a, then says 12)
    ({"a", "b"}, set(), 5, {"a": V(9, "a", "b", "c"), "c": V(12, "b", "c", "d")}, ("c", 12)),
    # ... but not an older one: a's 9 stays in force
    ({"a", "b"}, set(), 5, {"a": V(9, "a", "b", "c"), "c": V(7, "c", "e")}, ("a", 9)),
])
def test_newest_vouched(trusted: set[str], removed: set[str], applied: int,
                        vouches: dict[str, Vouch], expected: tuple[str, int] | None) -> None:
    got = newest_vouched(trusted, removed, applied, vouches)
    assert (None if got is None else (got[0], got[1].index)) == expected


def test_admits_never_self_nor_removed() -> None:
    t = PeerTrust("a")
    t.update({"a", "b"}, {"c"}, 1)
    t.hear("b", V(5, "a", "b", "c", "d"))
    assert [n for n in "abcdx" if t.admits(n)] == ["b", "d"]


# -- parsing a PEER_MEMBERS body ------------------------------------------------------------------
def test_parse_vouch_round_trip() -> None:
    v = Vouch(42, {"n1": "127.0.0.1:7001", "n4": ""})
    assert parse_vouch(v.body()) == v


@pytest.mark.parametrize("body", [
    {"index": -1, "members": {}},
    {"index": True, "members": {}},
    {"index": "1", "members": {}},
    {"index": 1, "members": ["n1"]},
    {"index": 1, "members": {"n 1": "a:1"}},
    {"index": 1, "members": {"..": "a:1"}},
    {"index": 1, "members": {"x" * 65: "a:1"}},
    {"index": 1, "members": {"n1": 7}},
    {"index": 1, "members": {"n1": "a\n:1"}},
    {"index": 1, "members": {"n1": "a" * 301}},
    {"index": 1, "members": {f"n{i}": "" for i in range(MAX_MEMBERS + 1)}},
])
def test_parse_vouch_refuses_malformed(body: dict[str, object]) -> None:
    with pytest.raises(VouchError):
        parse_vouch(body)


def test_bounds() -> None:
    with pytest.raises(ValueError):
        PeerTrust("a", max_vouchers=0)
