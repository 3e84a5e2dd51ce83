"""The one small interface every authentication method implements.

An `Authenticator` looks at a request's credentials (`AuthRequest`: headers, query, verified
peer certificate, client address) and answers exactly one of:

- `None`: no credential of its kind is present (the chain may try the next method);
- an `Identity`: who the caller is, as forwarded to the upstream;
- an `AuthFailure`: a credential of its kind is present and wrong (or cannot be checked now).
  A failure is final for the chain: a bad token is never "absent", so a wrong credential
  cannot fall through to a weaker method. The one exception is `fallthrough`: a credential
  that is not of the method's kind at all (an opaque bearer token is not a JWT), which another
  method (introspection) may own.

Methods never log a credential, at any level: reasons are fixed strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl

__all__ = ["AuthFailure", "AuthRequest", "Authenticator", "Identity", "bad_request"]


@dataclass(frozen=True, slots=True)
class AuthRequest:
    headers: tuple[tuple[bytes, bytes], ...]  # lower-cased names, raw values, repeats kept
    query: str = ""  # raw, not percent-decoded
    peer_certificate: bytes | None = None  # DER, only ever a certificate TLS verified
    remote: str = ""  # "host:port"

    def header_values(self, name: str) -> list[bytes]:
        key = name.lower().encode("ascii")
        return [v for k, v in self.headers if k == key]

    def query_values(self, name: str) -> list[str]:
        try:
            pairs = parse_qsl(self.query, keep_blank_values=True, encoding="utf-8",
                              errors="strict", max_num_fields=1000)
        except ValueError:
            return ["\x00"]  # undecodable: present and wrong, never absent
        return [v for k, v in pairs if k == name]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the caller is. `name` is what the upstream sees as X-Auth-User (`apikey:production`,
    `basic:admin`, `<issuer name>:<sub>`, `mtls:<subject>`, `guest`)."""

    name: str
    roles: tuple[str, ...]
    method: str
    claims: Mapping[str, object] = field(default_factory=dict)
    # Extra headers for plain HTTP upstreams (claims_to_headers, client certificate fields).
    headers: tuple[tuple[str, str], ...] = ()
    expires_at: float | None = None  # wall-clock seconds: the credential's own expiry
    api_key: str | None = None  # the key's name, for rate limits keyed by api_key
    rate_limit: float | None = None  # a per-credential rate (requests/s), when configured
    # Policy attributes for loom upstreams (claims_to_attributes), sent as X-Auth-Attrs.
    attrs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """401 (missing or invalid credentials, with a challenge), 403 (authenticated, not
    admitted), 400 (ambiguous credentials) or 503 (cannot be checked now)."""

    status: int
    reason: str  # fixed text, safe to log and to show
    challenge: str | None = None  # WWW-Authenticate value
    retry_after: int | None = None
    # Not this method's kind of credential after all (an opaque token seen by the JWT method):
    # the chain tries the next method, and answers with this failure only if none succeeds.
    fallthrough: bool = False

    def headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.challenge:
            out.append(("WWW-Authenticate", self.challenge))
        if self.retry_after is not None:
            out.append(("Retry-After", str(self.retry_after)))
        return out


def bad_request(reason: str) -> AuthFailure:
    return AuthFailure(400, reason)


@runtime_checkable
class Authenticator(Protocol):
    """One method. `name` is its name in the configuration (`jwt`, `api_key`, a plugin's
    name); `challenge` is the WWW-Authenticate value for a request that lacks credentials."""

    name: str
    challenge: str | None

    async def authenticate(self, request: AuthRequest) -> Identity | AuthFailure | None: ...
