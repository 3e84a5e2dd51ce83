"""Attribute conditions (`when`) in the ACL decision: validation when the policy is set, the
matrix of conditions x callers, time windows under an injected clock, strict X-Auth-Attrs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from loom.security.acl import Env, Policy, PolicyError
from loom.security.attrs import parse_attrs
from loom.security.devpki import issue_cert
from loom.security.gateway import SpoofAttempt, resolve_principal
from loom.security.identity import Identity, Role, guest_identity, identity_from_der
from loom.wire.catalog import BY_NAME
from loom.wire.errors import BadRequest, TooLarge
from tests.security.conftest import PKI

GET = BY_NAME["MAP_GET"]
GW = "spiffe://loom.dev/gateway/edge"
ACME = "spiffe://loom.dev/client/acme"


def policy(when: dict[str, Any], **top: Any) -> Policy:
    return Policy.from_config({
        "guest_roles": ["r"], "roles": {"r": {"grants": [
            {"types": ["MAP_GET"], "structures": ["m"], "when": when}]}},
        "principals": {ACME: ["r"]}, "users": {"alice": ["r"]}, **top})


@pytest.mark.parametrize("when,message", [
    ({"attr.Region": ["eu"]}, "unknown attribute 'attr.Region'"),
    ({"cert.SERIAL": ["1"]}, "unknown attribute 'cert.SERIAL'"),
    ({"region": ["eu"]}, "unknown attribute 'region'"),
    ({"attr.region": []}, "attr.region: must be a string or a list"),
    ({"time": "8:00-18:00"}, "a time window is"),
    ({"time": "08:00-25:00"}, "a time window is"),
    ({"time": "08:00-24:30"}, "24:00 is the latest end"),
    ({"time": "09:00-09:00"}, "is an empty window"),
    ({"days": ["monday"]}, "days: a non-empty list"),
    ({"days": []}, "days: a non-empty list"),
    ({"source": ["10.0.0.0/33"]}, "source[0]: bad CIDR '10.0.0.0/33'"),
    ({"source": ["10.0.0.1/8"]}, "source[0]: bad CIDR '10.0.0.1/8'"),
    ({"source": "10.0.0.0/8"}, "source: a list of"),
    ({}, "when: must be a non-empty table"),
])
def test_bad_conditions_refused_when_the_policy_is_set(when: dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(PolicyError) as e:
        policy(when)
    assert message in str(e.value)
    assert "acl.roles.r.grants[0].when" in str(e.value)


def test_bad_timezone_refused() -> None:
    with pytest.raises(PolicyError, match="unknown time zone 'Mars/Olympus'"):
        policy({"time": "08:00-18:00"}, timezone="Mars/Olympus")


def test_conditions_round_trip_through_the_document() -> None:
    when = {"attr.region": ["eu"], "time": "22:00-06:00", "days": ["mon"],
            "source": ["10.0.0.0/8"], "spiffe.path": "client/*"}
    p = policy(when, timezone="Europe/Paris")
    doc = p.to_config()
    assert doc["timezone"] == "Europe/Paris"
    assert doc["roles"]["r"]["grants"][0]["when"] == when
    assert Policy.from_config(doc) == p
    assert "timezone" not in policy({"days": ["mon"]}).to_config()


def _cert_identity(pki: PKI, org: str | None) -> Identity:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, "acme")]
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    cert, _ = issue_cert(pki.ca_cert, pki.ca_key, role=Role.CLIENT, name="acme",
                         subject=x509.Name(attrs))
    return identity_from_der(cert.public_bytes(Encoding.DER), "loom.dev")


def _env(p: Policy, identity: Identity, headers: dict[str, str] | None,
         source: str = "10.1.2.3") -> tuple[tuple[str, ...], Env]:
    caller = resolve_principal(identity, headers, frozenset({GW}), p)
    return caller.roles, caller.env(source, datetime(2026, 12, 7, 12, 0, tzinfo=UTC))


NOON_MONDAY = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize("when,cert_ok,gw_ok,guest_ok", [
    ({"cert.O": ["Acme"]}, True, False, False),
    ({"cert.O": ["Other*"]}, False, False, False),
    ({"spiffe.path": ["client/acme"]}, True, False, False),
    ({"spiffe.path": ["gateway/*"]}, False, False, False),  # the gateway speaks for alice
    ({"attr.region": ["eu"]}, False, True, False),
    ({"attr.region": ["us"]}, False, False, False),
    ({"attr.tier": ["gold", "silver"]}, False, True, False),
    ({"source": ["10.0.0.0/8"]}, True, True, True),
    ({"source": ["192.168.0.0/16", "::1/128"]}, False, False, False),
    ({"time": "11:00-13:00", "days": ["mon"]}, True, True, True),
    ({"time": "13:00-14:00"}, False, False, False),
    ({"days": ["sat", "sun"]}, False, False, False),
    ({"attr.region": ["eu"], "source": ["10.0.0.0/8"], "time": "00:00-24:00"},
     False, True, False),
])
def test_matrix_conditions_by_caller(pki: PKI, when: dict[str, Any], cert_ok: bool,
                                     gw_ok: bool, guest_ok: bool) -> None:
    p = policy(when)
    gw = Identity(Role.GATEWAY, "edge", GW, "loom.dev")
    callers = [(_cert_identity(pki, "Acme"), None, cert_ok),
               (gw, {"X-Auth-User": "alice", "X-Auth-Attrs": "region=eu,tier=gold"}, gw_ok),
               (guest_identity("loom.dev"), None, guest_ok)]
    for identity, headers, ok in callers:
        roles, env = _env(p, identity, headers)
        d = p.check_request(roles, GET, {"name": "m", "key": "k"}, env)
        assert d.allowed is ok, (identity.principal, d)
        if not ok:  # the denial names the grant and the condition that failed
            assert d.rule == "roles.r.grants[0] when"
            assert "roles.r.grants[0] applies but its condition failed: " in d.reason
            assert any(name in d.reason for name in when)


def test_a_certificate_field_given_twice_is_no_attribute(pki: PKI) -> None:
    cert, _ = issue_cert(pki.ca_cert, pki.ca_key, role=Role.CLIENT, name="acme",
                         subject=x509.Name([
                             x509.NameAttribute(NameOID.COMMON_NAME, "acme"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil")]))
    ident = identity_from_der(cert.public_bytes(Encoding.DER), "loom.dev")
    p = policy({"cert.O": ["Acme"]})
    roles, env = _env(p, ident, None)
    d = p.check(roles, GET, "m", ["k"], env)
    assert not d.allowed and "cert.O: the caller has no such attribute" in d.reason


@pytest.mark.parametrize("tz,window,days,when,ok", [
    ("UTC", "08:00-18:00", None, datetime(2026, 12, 7, 7, 59, tzinfo=UTC), False),
    ("UTC", "08:00-18:00", None, datetime(2026, 12, 7, 8, 0, tzinfo=UTC), True),
    ("UTC", "08:00-18:00", None, datetime(2026, 12, 7, 17, 59, tzinfo=UTC), True),
    ("UTC", "08:00-18:00", None, datetime(2026, 12, 7, 18, 0, tzinfo=UTC), False),
    ("UTC", "22:00-06:00", None, datetime(2026, 12, 7, 23, 30, tzinfo=UTC), True),
    ("UTC", "22:00-06:00", None, datetime(2026, 12, 7, 5, 59, tzinfo=UTC), True),
    ("UTC", "22:00-06:00", None, datetime(2026, 12, 7, 12, 0, tzinfo=UTC), False),
    # 07:30 UTC is 08:30 in Paris in winter, 09:30 in summer; 17:30 UTC in summer is 19:30.
    ("Europe/Paris", "08:00-18:00", None, datetime(2026, 12, 7, 7, 30, tzinfo=UTC), True),
    ("Europe/Paris", "08:00-18:00", None, datetime(2026, 7, 6, 17, 30, tzinfo=UTC), False),
    ("Europe/Paris", "08:00-18:00", None, datetime(2026, 7, 6, 15, 30, tzinfo=UTC), True),
    # Sunday 23:30 UTC is already Monday in Tokyo.
    ("Asia/Tokyo", None, ["mon"], datetime(2026, 12, 6, 23, 30, tzinfo=UTC), True),
    ("UTC", None, ["mon"], datetime(2026, 12, 6, 23, 30, tzinfo=UTC), False),
])
def test_time_windows_with_an_injected_clock(tz: str, window: str | None,
                                             days: list[str] | None, when: datetime,
                                             ok: bool) -> None:
    cond: dict[str, Any] = {}
    if window is not None:
        cond["time"] = window
    if days is not None:
        cond["days"] = days
    p = policy(cond, timezone=tz)
    d = p.check(("r",), GET, "m", ["k"], Env(now=when))
    assert d.allowed is ok, d
    if not ok:
        assert ("time:" in d.reason) or ("days:" in d.reason)


def test_no_clock_fails_time_conditions_and_other_grants_still_allow() -> None:
    p = Policy.from_config({"roles": {"r": {"grants": [
        {"types": ["MAP_GET"], "when": {"time": "00:00-24:00"}},
        {"types": ["MAP_GET"], "structures": ["open"]}]}}})
    d = p.check(("r",), GET, "m", ["k"])
    assert not d.allowed and "no clock" in d.reason
    assert p.check(("r",), GET, "open", ["k"]).allowed  # the unconditioned grant
    assert p.check(("r",), GET, "m", ["k"], Env(now=NOON_MONDAY)).allowed


def test_batch_denial_names_the_conditioned_grant() -> None:
    p = Policy.from_config({"roles": {"r": {"grants": [
        {"types": ["BATCH_EXECUTE"]},
        {"types": ["MAP_GET"], "when": {"attr.region": "eu"}}]}}})
    body = {"ops": [{"op": "MAP_GET", "b": {"name": "m", "key": "k"}}]}
    d = p.check_request(("r",), BY_NAME["BATCH_EXECUTE"], body, Env(attrs={"region": "us"}))
    assert not d.allowed and d.member is not None and d.member.index == 0
    assert d.rule == "roles.r.grants[1] when" and "'us' matches none" in d.reason
    assert p.check_request(("r",), BY_NAME["BATCH_EXECUTE"], body,
                           Env(attrs={"region": "eu"})).allowed


@pytest.mark.parametrize("value,error", [
    ("region", BadRequest), ("region=", BadRequest), ("=eu", BadRequest),
    ("Region=eu", BadRequest), ("region=eu,region=us", BadRequest),
    ("region=eu,,tier=gold", BadRequest), ("region=e=u", BadRequest),
    ("region= eu", BadRequest), ("region=eu\u200b", BadRequest),
    ("region=" + "x" * 129, BadRequest),
    (",".join(f"a{i}=x" for i in range(17)), TooLarge),
])
def test_attrs_header_parsed_strictly(value: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_attrs(value)


def test_attrs_header_accepted() -> None:
    assert parse_attrs("region=eu, tier=gold") == {"region": "eu", "tier": "gold"}
    assert len(parse_attrs(",".join(f"a{i}=x" for i in range(16)))) == 16


def test_attrs_from_a_non_gateway_are_a_spoof_attempt(pki: PKI) -> None:
    p = policy({"attr.region": ["eu"]})
    for identity in (_cert_identity(pki, "Acme"), guest_identity("loom.dev"),
                     Identity(Role.GATEWAY, "rogue", "spiffe://loom.dev/gateway/rogue",
                              "loom.dev")):
        with pytest.raises(SpoofAttempt):
            resolve_principal(identity, {"X-Auth-Attrs": "region=eu"}, frozenset({GW}), p)
    gw = Identity(Role.GATEWAY, "edge", GW, "loom.dev")
    for bad in ({"x-auth-attrs": "region=eu", "X-Auth-User": "a"},
                {"X-Auth_Attrs": "region=eu", "X-Auth-User": "a"}):
        with pytest.raises(BadRequest, match="ambiguous"):
            resolve_principal(gw, bad, frozenset({GW}), p)
