"""ACL policy: the documented example, selectors, scopes, batches, reveals, RAFT, errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom.security.acl import Member, Policy, PolicyError
from loom.wire.catalog import (
    BY_NAME,
    Access,
    Category,
    Listener,
    MessageType,
    client_types,
    validate_body,
)

EXAMPLE: dict[str, Any] = {
    "guest_roles": ["guest"],
    "roles": {
        "guest": {"grants": [{"types": ["class:read"], "structures": ["public*"]}]},
        "data-writer": {"grants": [{"types": ["MAP_PUT", "QUEUE_PUSH", "COUNTER_INCREMENT"]}]},
        "reader": {"grants": [{"types": ["class:read"]}]},
        "admin": {"grants": [{"types": ["*"]}]},
    },
    "principals": {
        "spiffe://loom.dev/client/admin": ["admin"],
        "spiffe://loom.dev/client/writer": ["data-writer", "reader"],
    },
}
P = Policy.from_config(EXAMPLE)
M = BY_NAME


def allowed(roles: tuple[str, ...], name: str, body: dict[str, Any]) -> bool:
    mt = M[name]
    return P.check_request(roles, mt, validate_body(mt, body)).allowed


def test_example_principals() -> None:
    assert P.roles_for("spiffe://loom.dev/client/writer") == ("data-writer", "reader")
    assert P.roles_for("spiffe://loom.dev/client/admin") == ("admin",)
    assert P.roles_for("guest") == ("guest",)
    assert P.roles_for("spiffe://loom.dev/client/nobody") == ()
    assert P.known_roles == {"guest", "data-writer", "reader", "admin"}


def test_example_writer() -> None:
    w = ("data-writer",)
    assert allowed(w, "MAP_PUT", {"name": "m", "key": "k", "value": b"v"})
    assert allowed(w, "QUEUE_PUSH", {"name": "q", "value": b"v"})
    assert allowed(w, "COUNTER_INCREMENT", {"name": "c"})
    assert not allowed(w, "MAP_DELETE", {"name": "m", "key": "k"})
    assert not allowed(w, "MAP_GET", {"name": "m", "key": "k"})


def test_lock_unlock_reserved_to_admin() -> None:  # D2
    body = {"name": "l", "session_id": 1}
    writer = P.roles_for("spiffe://loom.dev/client/writer")
    d = P.check_request(writer, M["LOCK_UNLOCK"], body)
    assert not d.allowed and d.rule == "default-deny" and "LOCK_UNLOCK" in d.reason
    assert allowed(("admin",), "LOCK_UNLOCK", body)


def test_guest() -> None:
    g = P.roles_for("guest")
    assert allowed(g, "MAP_GET", {"name": "public-m", "key": "k"})
    assert not allowed(g, "MAP_GET", {"name": "private", "key": "k"})
    assert not allowed(g, "MAP_PUT", {"name": "public-m", "key": "k", "value": b"v"})
    assert not allowed(g, "CLUSTER_STATUS", {})  # structure-scoped grant, no structure
    assert allowed((), "PING", {}) and allowed((), "WHOAMI", {})


def test_matrix_every_type_every_role() -> None:  # D1 over the example policy
    expected = {
        "admin": {mt.name for mt in client_types()},
        "reader": {mt.name for mt in client_types() if mt.access in (Access.READ, Access.PUBLIC)},
        "data-writer": {"MAP_PUT", "QUEUE_PUSH", "COUNTER_INCREMENT"}
        | {mt.name for mt in client_types() if mt.access is Access.PUBLIC},
    }
    for role, names in expected.items():
        got = {mt.name for mt in client_types() if P.check((role,), mt, "s", ["k"]).allowed
               or P.check((role,), mt, "s", []).allowed or P.check((role,), mt, None, []).allowed}
        assert got == names, role
    assert len(client_types()) >= 80


def raft_type() -> MessageType:
    return MessageType(0x7F01, "APPEND_ENTRIES_TEST", Category.RAFT, Access.WRITE, {},
                       listener=Listener.PEER)


def test_raft_never_granted() -> None:  # D7
    mt = raft_type()
    d = P.check(("admin",), mt, None, [])
    assert not d.allowed and d.rule == "builtin:peer-plane"
    for bad in ("category:RAFT", "APPEND_ENTRIES_TEST"):
        with pytest.raises(PolicyError, match="unknown type selector"):
            Policy.from_config({"roles": {"r": {"grants": [{"types": [bad]}]}}})


def pol(*grants: dict[str, Any]) -> Policy:
    return Policy.from_config({"roles": {"r": {"grants": list(grants)}}})


def test_selectors() -> None:
    p = pol({"types": ["category:QUEUE"]}, {"types": ["class:admin"]}, {"types": ["MAP_GET"]})
    for mt in client_types():
        want = (mt.category is Category.QUEUE or mt.access is Access.ADMIN
                or mt.name == "MAP_GET" or mt.access is Access.PUBLIC)
        got = p.check(("r",), mt, "s", ["k"]).allowed or p.check(("r",), mt, "s", []).allowed
        assert got == want, mt.name
    # class:write does not include admin types; unknown roles are ignored
    pw = pol({"types": ["class:write"]})
    assert not pw.check(("r",), M["STRUCT_DESTROY"], "s", []).allowed
    assert not pw.check(("nope",), M["MAP_CLEAR"], "s", []).allowed
    assert pw.check(("nope", "r"), M["MAP_CLEAR"], "s", []).allowed


def test_key_scope_every_key() -> None:  # D5
    p = pol({"types": ["category:MAP"], "keys": ["user:*"]})
    r = ("r",)
    assert allowed_p(p, r, "MAP_GET", {"name": "m", "key": "user:1"})
    assert not allowed_p(p, r, "MAP_GET", {"name": "m", "key": "admin:1"})
    assert allowed_p(p, r, "MAP_GET_ALL", {"name": "m", "keys": ["user:1", "user:2"]})
    assert not allowed_p(p, r, "MAP_GET_ALL", {"name": "m", "keys": ["user:1", "admin:1"]})
    assert not allowed_p(p, r, "MAP_PUT_ALL",
                         {"name": "m", "entries": {"user:1": b"", "zz": b""}})
    for whole in ("MAP_KEYS", "MAP_SCAN", "MAP_CLEAR", "MAP_SIZE"):
        assert not allowed_p(p, r, whole, {"name": "m"}), whole
    p2 = pol({"types": ["category:MAP"], "keys": ["user:*"]}, {"types": ["MAP_SIZE"]})
    assert allowed_p(p2, r, "MAP_SIZE", {"name": "m"})
    assert not allowed_p(p2, r, "MAP_KEYS", {"name": "m"})


def test_structure_scope() -> None:
    p = pol({"types": ["*"], "structures": ["team-a.*", "shared"]})
    r = ("r",)
    assert allowed_p(p, r, "MAP_CLEAR", {"name": "team-a.x"})
    assert allowed_p(p, r, "QUEUE_PUSH", {"name": "shared", "value": b""})
    assert not allowed_p(p, r, "QUEUE_PUSH", {"name": "shared2", "value": b""})
    assert not allowed_p(p, r, "MAP_CLEAR", {"name": "team-b.x"})
    assert not allowed_p(p, r, "STRUCT_LIST", {})  # no structure named


def allowed_p(p: Policy, roles: tuple[str, ...], name: str, body: dict[str, Any]) -> bool:
    mt = M[name]
    return p.check_request(roles, mt, validate_body(mt, body)).allowed


def batch(*ops: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return validate_body(M["BATCH_EXECUTE"], {"ops": [{"op": o, "b": b} for o, b in ops]})


def test_batch_one_forbidden_op_denies_all() -> None:  # D3
    p = Policy.from_config({**P.to_config(), "roles": {
        **P.to_config()["roles"],
        "batcher": {"grants": [{"types": ["BATCH_EXECUTE", "MAP_PUT", "QUEUE_PUSH",
                                             "COUNTER_INCREMENT"]}]}}})
    assert not P.check_request(("data-writer",), M["BATCH_EXECUTE"], batch(
        ("MAP_PUT", {"name": "m", "key": "k", "value": b""}))).allowed  # no grant of its own
    w = ("batcher",)
    P_ = p
    ok = batch(("MAP_PUT", {"name": "m", "key": "k", "value": b""}),
               ("QUEUE_PUSH", {"name": "q", "value": b""}))
    assert P_.check_request(w, M["BATCH_EXECUTE"], ok).allowed
    bad = batch(("MAP_PUT", {"name": "m", "key": "k", "value": b""}),
                ("MAP_DELETE", {"name": "m", "key": "k"}))
    d = P_.check_request(w, M["BATCH_EXECUTE"], bad)
    assert not d.allowed and "ops[1]" in d.reason
    # A reveal inside a batch is checked too.
    leak = batch(("MAP_PUT", {"name": "m", "key": "k", "value": b"", "return_old": True}))
    assert not P_.check_request(w, M["BATCH_EXECUTE"], leak).allowed
    red = batch(("MAP_PUT", {"name": "m", "key": "k", "value": b""}),
                ("COUNTER_INCREMENT", {"name": "c"}))
    d = P_.check_request(w, M["BATCH_EXECUTE"], red)
    assert d.allowed and d.redact_ops == (1,)
    nested = {"ops": [{"op": "BATCH_EXECUTE", "b": {"ops": []}}]}
    assert not P.check_request(("admin",), M["BATCH_EXECUTE"], nested).allowed


def test_a_batch_needs_its_own_grant_and_names_the_refused_member() -> None:
    """The batch grant plus every inner operation's own grant, as an etcd Txn or a Redis MULTI
    user expects: the batch can never do what its members alone could not, and a member
    grant alone does not allow batching."""
    p = Policy.from_config({"roles": {
        "members-only": {"grants": [{"types": ["MAP_PUT", "MAP_PUT_ALL"]}]},
        "batcher": {"grants": [{"types": ["BATCH_EXECUTE"]},
                               {"types": ["MAP_PUT", "MAP_PUT_ALL"], "keys": ["u:*"]}]}}})
    ok = batch(("MAP_PUT", {"name": "m", "key": "u:1", "value": b""}))
    d = p.check_request(("members-only",), M["BATCH_EXECUTE"], ok)
    assert not d.allowed and "BATCH_EXECUTE" in d.reason and d.member is None
    assert p.check_request(("batcher",), M["BATCH_EXECUTE"], ok).allowed
    bad = batch(("MAP_PUT", {"name": "m", "key": "u:1", "value": b""}),
                ("MAP_PUT_ALL", {"name": "m2", "entries": {"u:2": b"", "x:3": b"", "u:4": b""}}))
    d = p.check_request(("batcher",), M["BATCH_EXECUTE"], bad)
    assert not d.allowed and d.reason.startswith("BATCH_EXECUTE.ops[1]: ")
    assert d.member == Member(1, "MAP_PUT_ALL", "m2", "x:3")  # the key that is out of scope
    # A member whose type is not granted at all: its first key.
    bad = batch(("MAP_DELETE", {"name": "m", "key": "u:9"}))
    assert p.check_request(("batcher",), M["BATCH_EXECUTE"], bad).member == Member(
        0, "MAP_DELETE", "m", "u:9")


def test_reveals() -> None:  # D4
    w = ("data-writer",)
    put = {"name": "m", "key": "k", "value": b"v"}
    assert P.check_request(w, M["MAP_PUT"], put).allowed
    d = P.check_request(w, M["MAP_PUT"], {**put, "return_old": True})
    assert not d.allowed and "MAP_GET" in d.reason
    both = P.roles_for("spiffe://loom.dev/client/writer")
    d = P.check_request(both, M["MAP_PUT"], {**put, "return_old": True})
    assert d.allowed and not d.redact
    d = P.check_request(w, M["COUNTER_INCREMENT"], {"name": "c"})
    assert d.allowed and d.redact
    d = P.check_request(both, M["COUNTER_INCREMENT"], {"name": "c"})
    assert d.allowed and not d.redact
    # Read grant scoped elsewhere does not cover the reveal.
    p = pol({"types": ["MAP_GET_AND_DELETE"]}, {"types": ["MAP_GET"], "keys": ["pub:*"]})
    assert allowed_p(p, ("r",), "MAP_GET_AND_DELETE", {"name": "m", "key": "pub:1"})
    assert not allowed_p(p, ("r",), "MAP_GET_AND_DELETE", {"name": "m", "key": "sec:1"})


@pytest.mark.parametrize(("cfg", "msg"), [
    ({"roles": {"r": {"grants": [{"types": ["MAP_PUTT"]}]}}},
     r"acl\.roles\.r\.grants\[0\]\.types\[0\]: unknown type selector 'MAP_PUTT'"),
    ({"roles": {"r": {"grants": [{"types": ["category:NOPE"]}]}}}, "category:NOPE"),
    ({"roles": {"r": {"grants": [{"types": ["class:public"]}]}}}, "class:public"),
    ({"roles": {"r": {"grants": [{"types": ["*"], "verbs": ["x"]}]}}}, "unknown field 'verbs'"),
    ({"roles": {"r": {"grants": [{"types": []}]}}}, "types: must not be empty"),
    ({"roles": {"r": {"grants": [{"structures": ["x"]}]}}}, "missing 'types'"),
    ({"roles": {"r": {"grants": [{"types": ["*"], "keys": ["[a"]}]}}},
     r"grants\[0\]\.keys\[0\]: .*unterminated"),
    ({"roles": {"r": {"grants": [{"types": ["*"], "keys": ["x" * 300]}]}}}, "keys"),
    ({"roles": {"r": {"grants": [{"types": ["*"], "keys": ["a\nb"]}]}}}, "control"),
    ({"roles": {"r": {"grants": [{"types": ["QUEUE_PUSH"], "keys": ["a*"]}]}}},
     "touches no keys"),
    ({"roles": {"r": {"grants": [{"types": ["PING"], "structures": ["a*"]}]}}}, "no structure"),
    ({"roles": {"r": {}}, "principals": {"spiffe://loom.dev/client/a": ["ghost"]}},
     r"acl\.principals\.spiffe://loom\.dev/client/a\[0\]: unknown role 'ghost'"),
    ({"roles": {}, "guest_roles": ["ghost"]}, r"acl\.guest_roles\[0\]: unknown role"),
    ({"roles": {}, "principals": {"guest": []}}, "spiffe://"),
    ({"roles": {}, "users": {" bob": []}}, "acl.users"),
    ({"roles": {"bad role": {}}}, r"acl\.roles\.bad role"),
    ({"roles": {"r": {"grant": []}}}, "unknown key 'grant'"),
    ({"roles": {}, "version": 3}, "unknown key 'version'"),
    ({"roles": []}, "acl.roles: must be a table"),
])
def test_policy_errors(cfg: dict[str, Any], msg: str) -> None:
    with pytest.raises(PolicyError, match=msg):
        Policy.from_config(cfg)


def test_example_round_trip_and_no_aliasing() -> None:
    cfg = copy.deepcopy(EXAMPLE)
    p = Policy.from_config(cfg)
    cfg["roles"]["admin"]["grants"].clear()  # the policy does not alias its input
    assert p.check(("admin",), M["MAP_CLEAR"], "m", []).allowed
    assert Policy.from_config(p.to_config()) == p


# -- property: to_config/from_config round-trips any valid policy -------------------------------
NAMES = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True)
SELECTORS = st.sampled_from(
    ["*", "class:read", "class:write", "class:admin", "category:MAP", "category:LOCK",
     "MAP_GET", "MAP_PUT", "LOCK_UNLOCK", "MAP_GET_ALL"]
)
PATTERNS = st.from_regex(r"[a-z*?.:-]{1,10}(\[a-c\])?", fullmatch=True)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    roles = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    rt: dict[str, Any] = {}
    for r in roles:
        grants = []
        for _ in range(draw(st.integers(0, 3))):
            g: dict[str, Any] = {"types": draw(st.lists(SELECTORS, min_size=1, max_size=3))}
            if draw(st.booleans()):
                g["structures"] = draw(st.lists(PATTERNS, min_size=1, max_size=3))
            if draw(st.booleans()) and not any(
                t in ("class:admin", "category:LOCK", "LOCK_UNLOCK") for t in g["types"]
            ):
                g["keys"] = draw(st.lists(PATTERNS, min_size=1, max_size=3))
            grants.append(g)
        rt[r] = {"grants": grants}
    role_lists = st.lists(st.sampled_from(roles), max_size=3, unique=True)
    principals = draw(st.dictionaries(NAMES.map(lambda n: f"spiffe://loom.dev/client/{n}"),
                                      role_lists, max_size=4))
    users = draw(st.dictionaries(NAMES, role_lists, max_size=3))
    return {"guest_roles": draw(role_lists), "roles": rt, "principals": principals,
            "users": users}


@settings(max_examples=150, deadline=None)
@given(configs())
def test_round_trip(cfg: dict[str, Any]) -> None:
    p = Policy.from_config(cfg)
    out = p.to_config()
    assert out == cfg
    assert Policy.from_config(out) == p
