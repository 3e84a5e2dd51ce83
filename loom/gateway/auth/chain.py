"""Which methods a route accepts, in which order, and what the caller is told.

- `noop` (AUTH_TYPE): every request is the guest identity with the configured guest roles.
- A route whose `auth.require` is false needs nothing: the request goes on anonymously (no
  credential is even read).
- Otherwise the methods are the route's `auth.methods`, else the `chain`, else every enabled
  method, tried in that order:
  - `require_any: true`: the first method that authenticates decides; a method that sees its
    kind of credential and finds it wrong ends the chain with its failure (a wrong token never
    falls back to a weaker method), unless the failure is `fallthrough`;
  - `require_any: false`: every method must authenticate; the identity is the first one's,
    the roles the union of all.
- Nothing presented: 401 with every accepted method's challenge. Valid credentials of a method
  the route does not accept, or an identity without one of the route's `roles`: 403.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from loom.gateway.auth.base import Authenticator, AuthFailure, AuthRequest, Identity
from loom.gateway.config import AuthConfig, RouteAuth

__all__ = ["GUEST", "Chain"]

GUEST = "guest"


_OUTCOMES = {401: "unauthenticated", 403: "forbidden", 400: "bad_request",
             503: "unavailable"}


class Chain:
    def __init__(self, config: AuthConfig, methods: Mapping[str, Authenticator]) -> None:
        self.config = config
        self.methods = dict(methods)
        self._default = config.chain or tuple(methods)
        self.guest = Identity(GUEST, config.guest_roles, "noop")
        # Each method's outcomes, (method, outcome) -> count: loom_gateway_auth_total.
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def _tried(self, name: str, r: Identity | AuthFailure | None) -> None:
        if r is None or (isinstance(r, AuthFailure) and r.fallthrough):
            return  # not this method's kind of credential: nothing to count
        self.outcomes[(name, "ok" if isinstance(r, Identity) else _OUTCOMES.get(
            r.status, "error"))] += 1

    def statistics(self) -> dict[str, Any]:
        """Outcomes per method, and each method's own statistics (caches, fetches) as plain
        data: what the gateway's metrics read at scrape time."""
        methods: dict[str, Any] = {}
        for name, m in self.methods.items():
            st = getattr(m, "statistics", None)
            doc = st() if callable(st) else None
            if is_dataclass(doc) and not isinstance(doc, type):
                methods[name] = asdict(doc)
            keysets = getattr(m, "issuers", None)
            if isinstance(keysets, dict):  # the JWT method's L2 key sets, summed
                sums: Counter[str] = Counter()
                for _iss, ks in keysets.values():
                    if ks is not None:
                        sums.update({k: v for k, v in asdict(ks.statistics()).items()})
                methods.setdefault(name, {})["jwks"] = dict(sums)
        return {"outcomes": {f"{n}/{o}": c for (n, o), c in self.outcomes.items()},
                "methods": methods}

    def order(self, route: RouteAuth) -> tuple[str, ...]:
        return route.methods or self._default

    def _missing(self, order: tuple[str, ...]) -> AuthFailure:
        challenges = dict.fromkeys(c for m in order if (c := self.methods[m].challenge))
        return AuthFailure(401, "credentials required", ", ".join(challenges) or None)

    async def authenticate(self, route: RouteAuth, request: AuthRequest, *,
                           certificate_is_identity: bool = False,
                           ) -> Identity | AuthFailure | None:
        """The caller's identity, a failure to answer with, or None: anonymous on a route
        that requires nothing. `certificate_is_identity` (a listener with `client_auth:
        verify`) puts `mtls` first on every route that requires authentication."""
        if self.config.type == "noop":
            return self.guest
        if not route.require:
            return None
        order = self.order(route)
        if certificate_is_identity and "mtls" in self.methods:
            order = ("mtls", *(m for m in order if m != "mtls"))
        if self.config.require_any:
            result = await self._any(order, request)
        else:
            result = await self._all(order, request)
        if isinstance(result, Identity) and route.roles and not set(result.roles) & set(
                route.roles):
            return AuthFailure(403, "no role this route admits")
        return result

    async def _any(self, order: tuple[str, ...], request: AuthRequest) -> Identity | AuthFailure:
        deferred: AuthFailure | None = None
        for name in order:
            r = await self.methods[name].authenticate(request)
            self._tried(name, r)
            if isinstance(r, AuthFailure) and r.fallthrough:
                deferred = deferred or r
                continue
            if r is not None:
                return r
        if deferred is not None:
            return deferred
        # Nothing this route accepts: is the caller someone the route does not admit?
        for name, method in self.methods.items():
            if name not in order and isinstance(await method.authenticate(request), Identity):
                return AuthFailure(403, f"this route does not accept {name}")
        return self._missing(order)

    async def _all(self, order: tuple[str, ...], request: AuthRequest) -> Identity | AuthFailure:
        first: Identity | None = None
        roles: list[str] = []
        for name in order:
            r = await self.methods[name].authenticate(request)
            self._tried(name, r)
            if r is None:
                return self._missing(order)
            if isinstance(r, AuthFailure):
                return r
            first = first or r
            roles += [x for x in r.roles if x not in roles]
        if first is None:
            return self._missing(order)
        return Identity(first.name, tuple(roles), first.method, first.claims, first.headers,
                        first.expires_at, first.api_key, first.rate_limit, first.attrs)
