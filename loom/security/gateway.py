"""Gateway-asserted identity: who a request runs as (SECURITY-CATALOGUE C1-C7).

A request frame may carry a header map. The only meaningful headers are X-Auth-User,
X-Auth-Roles and X-Auth-Attrs (attributes for policy conditions, parsed strictly by
loom/security/attrs.py), and they are trusted only from a connection whose certificate is a
configured gateway identity. Everything else about headers is refused rather than ignored,
because every known header-spoofing bug comes from two components disagreeing about what a
header said:

- Names must be spelled exactly canonically. A name that equals one of ours case-insensitively
  or after '_' -> '-' (or with surrounding whitespace) is ambiguous: BadRequest. Any other name
  is unknown: BadRequest (Loom defines no other request headers).
- Values: printable characters only (no CR, LF, NUL, other controls or invisible formatting
  characters), no surrounding whitespace, bounded length.
- Identity headers from a guest, client or node connection: SpoofAttempt (Unauthenticated; the
  node audits it on the priority lane). A gateway request without X-Auth-User:
  Unauthenticated, never "the gateway itself" (etcd CVE-2018-16886).
- Roles: comma separated, items trimmed, no empty items, at most MAX_ROLES, matched exactly
  (case-sensitive) against the policy's roles; unknown roles are dropped, never mapped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from loom.security.acl import USER_PREFIX, Env, Policy, valid_user_name
from loom.security.attrs import parse_attrs
from loom.security.identity import Identity, Role
from loom.wire.errors import BadRequest, TooLarge, Unauthenticated

__all__ = [
    "AUTH_ATTRS",
    "AUTH_ROLES",
    "AUTH_USER",
    "MAX_ROLES",
    "Caller",
    "SpoofAttempt",
    "resolve_principal",
]

AUTH_USER = "X-Auth-User"
AUTH_ROLES = "X-Auth-Roles"
AUTH_ATTRS = "X-Auth-Attrs"
MAX_HEADERS = 8
MAX_NAME = 64
MAX_ROLES_VALUE = 2048
MAX_ROLES = 16
_CANONICAL = {h.lower(): h for h in (AUTH_USER, AUTH_ROLES, AUTH_ATTRS)}


class SpoofAttempt(Unauthenticated):
    """Identity headers from a connection that is not a configured gateway."""


@dataclass(frozen=True, slots=True)
class Caller:
    principal: str
    roles: tuple[str, ...]
    via_gateway: str | None  # the gateway's principal when the user was asserted by one
    identity: Identity  # the TLS identity of the connection
    attrs: Mapping[str, str] = field(default_factory=dict)  # gateway-asserted X-Auth-Attrs

    def env(self, source: str | None, now: datetime | None) -> Env:
        """What policy conditions see for this caller: the gateway's attributes, and the
        connection certificate's fields only when no gateway speaks for someone else."""
        own = self.via_gateway is None
        return Env(self.attrs, dict(self.identity.subject) if own else {},
                   self.identity.spiffe_path if own else None, source, now)


def _printable(v: str) -> bool:
    return v.isprintable() and v == v.strip()


def _parse_headers(headers: Mapping[str, str] | Sequence[tuple[str, str]] | None
                   ) -> dict[str, str]:
    if headers is None:
        return {}
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if len(items) > MAX_HEADERS:
        raise TooLarge(f"at most {MAX_HEADERS} request headers")
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise BadRequest("headers must be name/value pairs")
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise BadRequest("header names and values must be strings")
        if len(name) > MAX_NAME:
            raise TooLarge("header name too long")
        if name not in _CANONICAL.values():
            norm = name.strip().lower().replace("_", "-")
            if norm in _CANONICAL:
                raise BadRequest(
                    f"ambiguous header name {name!r}: only {_CANONICAL[norm]!r} is accepted"
                )
            raise BadRequest(f"unknown request header {name!r}")
        if name in out:
            raise BadRequest(f"header {name} given more than once")
        limit = MAX_ROLES_VALUE if name != AUTH_USER else 4 * 128
        if len(value) > limit:
            raise TooLarge(f"header {name} too long")
        if not _printable(value):
            raise BadRequest(
                f"header {name}: control characters or surrounding whitespace are not allowed"
            )
        out[name] = value
    return out


def _parse_roles(value: str, known: frozenset[str]) -> tuple[str, ...]:
    items = [r.strip() for r in value.split(",")]
    if len(items) > MAX_ROLES:
        raise TooLarge(f"{AUTH_ROLES}: at most {MAX_ROLES} roles")
    if any(not r for r in items):
        raise BadRequest(f"{AUTH_ROLES}: empty role in list")
    # Exact, case-sensitive membership; unknown roles are ignored, never approximated.
    return tuple(dict.fromkeys(r for r in items if r in known))


def is_gateway(identity: Identity, gateways: frozenset[str]) -> bool:
    # Both conditions: a gateway URI SAN role AND an explicit allow-list entry. An empty
    # allow-list trusts nobody (unlike Kubernetes' "empty allowed-names = any cert").
    return identity.role is Role.GATEWAY and identity.principal in gateways


def resolve_principal(
    identity: Identity,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None,
    gateways: frozenset[str],
    policy: Policy,
) -> Caller:
    """The principal and roles a request runs as. `gateways`: allowed gateway principals."""
    h = _parse_headers(headers) if headers else {}
    asserted = bool(h)
    if not is_gateway(identity, gateways):
        if asserted:
            raise SpoofAttempt(
                "identity headers are accepted only from a configured gateway connection"
            )
        p = identity.principal
        return Caller(p, policy.roles_for(p), None, identity)
    user = h.get(AUTH_USER)
    if user is None:
        raise Unauthenticated(f"gateway request without {AUTH_USER}")
    if not valid_user_name(user):
        raise BadRequest(f"{AUTH_USER} must be 1..128 printable characters")
    principal = USER_PREFIX + user
    roles = _parse_roles(h[AUTH_ROLES], policy.known_roles) if AUTH_ROLES in h else ()
    roles = tuple(dict.fromkeys(roles + policy.roles_for(principal)))
    attrs = parse_attrs(h[AUTH_ATTRS], AUTH_ATTRS) if AUTH_ATTRS in h else {}
    return Caller(principal, roles, identity.principal, identity, attrs)
