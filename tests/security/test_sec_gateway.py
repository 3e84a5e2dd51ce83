"""Gateway-asserted identity, SECURITY-CATALOGUE C1-C7."""

from __future__ import annotations

from typing import Any

import pytest

from loom.security.acl import Policy
from loom.security.gateway import SpoofAttempt, resolve_principal
from loom.security.identity import Identity, Role, guest_identity
from loom.wire.errors import BadRequest, TooLarge, Unauthenticated

from .test_sec_acl import EXAMPLE

CFG: dict[str, Any] = {**EXAMPLE, "users": {"carol": ["reader"]}}
P = Policy.from_config(CFG)
EDGE = Identity(Role.GATEWAY, "edge", "spiffe://loom.dev/gateway/edge", "loom.dev")
OTHER_GW = Identity(Role.GATEWAY, "rogue", "spiffe://loom.dev/gateway/rogue", "loom.dev")
WRITER = Identity(Role.CLIENT, "writer", "spiffe://loom.dev/client/writer", "loom.dev")
NODE = Identity(Role.NODE, "n1", "spiffe://loom.dev/node/n1", "loom.dev")
GWS = frozenset({EDGE.principal})


def test_no_headers_is_the_certificate() -> None:
    c = resolve_principal(WRITER, {}, GWS, P)
    assert (c.principal, c.roles, c.via_gateway) == (WRITER.principal, ("data-writer", "reader"),
                                                     None)
    g = resolve_principal(guest_identity("loom.dev"), None, GWS, P)
    assert g.principal == "guest" and g.roles == ("guest",)


@pytest.mark.parametrize("ident", [WRITER, NODE, OTHER_GW, guest_identity("loom.dev")])
def test_c1_c2_c3_headers_from_non_gateway(ident: Identity) -> None:
    # C1: client cert not on the allow-list; C2: guest; C3: same-CA node or unlisted gateway.
    for h in ({"X-Auth-User": "admin"}, {"X-Auth-Roles": "admin"}):
        with pytest.raises(SpoofAttempt):
            resolve_principal(ident, h, GWS, P)


def test_gateway_role_and_allow_list_both_required() -> None:
    # A client cert listed as a gateway is still not a gateway; an empty list trusts nobody.
    with pytest.raises(SpoofAttempt):
        resolve_principal(WRITER, {"X-Auth-User": "bob"}, frozenset({WRITER.principal}), P)
    with pytest.raises(SpoofAttempt):
        resolve_principal(EDGE, {"X-Auth-User": "bob"}, frozenset(), P)


def test_c4_gateway_without_user() -> None:
    for h in (None, {}, {"X-Auth-Roles": "admin"}):
        with pytest.raises(Unauthenticated) as ei:
            resolve_principal(EDGE, h, GWS, P)
        assert not isinstance(ei.value, SpoofAttempt)


def test_gateway_user() -> None:
    c = resolve_principal(EDGE, {"X-Auth-User": "bob", "X-Auth-Roles": "data-writer"}, GWS, P)
    assert (c.principal, c.roles, c.via_gateway) == ("user:bob", ("data-writer",),
                                                     EDGE.principal)
    assert c.identity == EDGE
    # Roles from [acl.users] are added; no roles asserted still gives those.
    c = resolve_principal(EDGE, {"X-Auth-User": "carol"}, GWS, P)
    assert c.roles == ("reader",)
    c = resolve_principal(EDGE, {"X-Auth-User": "dave"}, GWS, P)
    assert c.roles == ()  # never the gateway's own roles


@pytest.mark.parametrize("headers", [
    {"x-auth-user": "bob"},
    {"X-AUTH-USER": "bob"},
    {"X-Auth_User": "bob"},
    {"X_Auth_Roles": "admin", "X-Auth-User": "bob"},
    {"X-Auth-User ": "bob"},
    {"X-Auth-User": "bob", "x-auth-user": "admin"},
    {"X-Forwarded-For": "10.0.0.1", "X-Auth-User": "bob"},
    {"X-Request-Id": "abc", "X-Auth-User": "bob"},
])
def test_c5_ambiguous_or_unknown_names(headers: dict[str, str]) -> None:
    for ident in (EDGE, WRITER):
        with pytest.raises(BadRequest):
            resolve_principal(ident, headers, GWS, P)


def test_c5_repeated_header_pairs() -> None:
    pairs = [("X-Auth-User", "bob"), ("X-Auth-User", "admin")]
    with pytest.raises(BadRequest, match="more than once"):
        resolve_principal(EDGE, pairs, GWS, P)


@pytest.mark.parametrize("value", ["bob ", " bob", "bob\r\nX-Auth-Roles: admin", "bob\x00",
                                   "bo\tb", "bob\u202e", "bob\u200b", "\x1b[31mbob", ""])
def test_c5_c7_bad_values(value: str) -> None:
    with pytest.raises(BadRequest):
        resolve_principal(EDGE, {"X-Auth-User": value}, GWS, P)


def test_c6_roles_parsing() -> None:
    def roles(v: str) -> tuple[str, ...]:
        return resolve_principal(EDGE, {"X-Auth-User": "bob", "X-Auth-Roles": v}, GWS, P).roles

    assert roles("data-writer, reader") == ("data-writer", "reader")
    assert roles("data-writer,data-writer") == ("data-writer",)
    assert roles("Admin,ADMIN,admin2,root") == ()  # case variants and unknowns ignored
    assert roles("reader, superuser") == ("reader",)
    for bad in ("reader,", ",reader", "reader,,admin", "reader, ,admin"):
        with pytest.raises(BadRequest, match="empty role"):
            roles(bad)


def test_c7_sizes() -> None:
    with pytest.raises(TooLarge):
        resolve_principal(EDGE, {"X-Auth-User": "bob",
                                 "X-Auth-Roles": ",".join(["reader"] * 17)}, GWS, P)
    with pytest.raises(BadRequest):
        resolve_principal(EDGE, {"X-Auth-User": "b" * 129}, GWS, P)
    with pytest.raises(TooLarge):
        resolve_principal(EDGE, {"X-Auth-User": "bob", "X-Auth-Roles": "r" * 5000}, GWS, P)
    with pytest.raises(TooLarge):
        resolve_principal(EDGE, [(f"H{i}", "v") for i in range(100)], GWS, P)
    long_ok = resolve_principal(EDGE, {"X-Auth-User": "b" * 128}, GWS, P)
    assert long_ok.principal == "user:" + "b" * 128
    with pytest.raises(BadRequest):
        resolve_principal(EDGE, {"X-Auth-User": 5}, GWS, P)  # type: ignore[dict-item]
