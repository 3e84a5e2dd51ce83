"""Forwarding: what the gateway sends upstream for an admitted request, and how it answers.

This module owns the forwarding rules (docs/gateway.md, "Forwarding"):

- The request headers an upstream sees are built by `upstream_headers`, a pure function:
  hop-by-hop fields are dropped as RFC 9110 section 7.6.1 says (Connection and every field it
  lists, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, every Proxy-* field); every
  inbound field whose name is, or normalises to (case, '_' for '-', surrounding blanks), an
  `X-Auth-*` name is dropped, and so is every inbound field the gateway itself sets
  (X-Forwarded-*, the claims and client-certificate headers), so a caller can never speak for
  the gateway. Only then are the gateway's own fields added.
- The credentials the gateway verified do not travel on (`hide_credentials`, an upstream's
  setting, always on for a loom upstream): for an authenticated request, every header and
  query parameter that an enabled method reads a credential from (Authorization, the API key's
  header and query parameter) is removed, as Envoy's jwt_authn does by default. The upstream
  gets the identity instead, and an end-user secret goes no further than the edge.
- `X-Forwarded-For` is the TCP peer, `X-Forwarded-Proto` https: the gateway is the edge and
  trusts no inbound X-Forwarded-* (it would let any client choose its address).
- `traceparent` (W3C Trace Context): with tracing on, the gateway's own span's (a child of the
  caller's); else the caller's when valid (loom/wire/codec.py's check), else a new trace, so a
  request can be followed from the edge to the node.
- To a `kind: loom` upstream: the connection is mutual TLS with the gateway certificate (the
  client's SSL context), X-Auth-User / X-Auth-Roles carry the identity, and loomd's NOT_LEADER
  answers (307 to the leader's HTTP address, or 503 naming the leader) are followed here, at
  most `max_redirects` times: NOT_LEADER means the node executed nothing, so sending again is
  safe for every method. The leader found becomes the preferred endpoint.
- A request goes to another endpoint after a failure only when that cannot execute it twice:
  the connection was refused (nothing was sent), or repeating is safe (an idempotent method,
  or a POST with an Idempotency-Key). Anything else that broke is 502.
- Responses are streamed, never waited for: the head is answered as soon as it arrives and
  each body piece is sent on as it comes (server-sent events reach the client live). A body
  that arrived whole with its head (at most `whole_bytes`, nothing waited for: the usual small
  JSON answer) is passed on as one complete response, head and body in one write. Hop-by-hop
  response fields are dropped too.
"""

from __future__ import annotations

import functools
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote_plus, urlsplit

import h11
import trio

from loom.gateway.auth.mtls import certificate_fields
from loom.gateway.config import ClientCertHeaders, Upstream
from loom.http import (
    HTTPClient,
    Request,
    Response,
    ResponseTooLarge,
    StreamedResponse,
    StreamingResponse,
)
from loom.http.client import IDEMPOTENT
from loom.wire.codec import valid_traceparent

__all__ = [
    "ForwardIdentity",
    "Forwarder",
    "ForwarderStatistics",
    "UpstreamUnavailable",
    "certificate_headers",
    "response_headers",
    "trace_parent",
    "upstream_headers",
    "without_params",
]

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", b"proxy-connection", b"host", b"content-length"})
AUTH_USER = "X-Auth-User"
AUTH_ROLES = "X-Auth-Roles"
AUTH_ATTRS = "X-Auth-Attrs"
MAX_NOT_LEADER_BODY = 16 * 1024


class ForwardIdentity(Protocol):
    """What forwarding needs of an authenticated caller (auth's `Identity` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def roles(self) -> tuple[str, ...]: ...
    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def attrs(self) -> tuple[tuple[str, str], ...]: ...


class UpstreamUnavailable(Exception):
    """No endpoint of the upstream answered usefully within the bounds (502 or 503)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def _norm(name: bytes) -> bytes:
    return name.strip().lower().replace(b"_", b"-")


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    out: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            out.update(_norm(t) for t in v.split(b",") if t.strip())
    return out


def _hop_by_hop(headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes] | set[bytes]:
    listed = _connection_listed(headers)
    return HOP_BY_HOP | listed if listed else HOP_BY_HOP


def trace_parent(inbound: bytes | None) -> bytes:
    """The traceparent to send on: the caller's when valid (loom/wire/codec.py owns the
    check), else a new trace with a random id, sampled."""
    if inbound is not None:
        value = valid_traceparent(inbound.strip().decode("latin-1"))
        if value:
            return value.encode()
    ids = secrets.token_hex(24).encode()  # trace id and parent id from one read of randomness
    return b"00-%s-%s-01" % (ids[:32], ids[32:])


def certificate_headers(der: bytes, names: ClientCertHeaders) -> list[tuple[str, str]]:
    """The verified client certificate's subject, issuer, serial (hex) and SHA-256
    fingerprint (hex), under the configured header names."""
    f = certificate_fields(der)
    return [(names.subject, f["subject"]), (names.issuer, f["issuer"]),
            (names.serial, f["serial"]), (names.fingerprint, f["fingerprint"])]


def without_params(target: str, names: frozenset[str]) -> str:
    """`target` without the query parameters named in `names` (compared decoded, as the
    authenticators read them); every other parameter is kept byte for byte, in order."""
    path, sep, query = target.partition("?")
    if not sep or not names:
        return target
    kept = [p for p in query.split("&")
            if unquote_plus(p.partition("=")[0], errors="replace") not in names]
    return f"{path}?{'&'.join(kept)}" if kept else path


def upstream_headers(request: Request, identity: ForwardIdentity | None, *, loom: bool,
                     cert_headers: ClientCertHeaders | None = None,
                     gateway_set: Iterable[str] = (),
                     traceparent: str = "",
                     hidden: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """The header fields sent upstream for `request` (module docstring: the order of removal
    and addition is the rule). `identity` None: a public route to a plain upstream (a loom
    upstream always gets an identity: loomd refuses a gateway request without X-Auth-User).
    `gateway_set` names the fields the gateway sets for some callers (claims_to_headers):
    removed from every inbound request. `traceparent`: the gateway's own span's (tracing
    on), sent instead of the caller's. `hidden`: the normalised names of the credential
    headers, removed when the request was authenticated (`identity` given)."""
    drop = _hop_by_hop(request.headers)
    if identity is not None and hidden:
        drop = drop | hidden
    ours = _gateway_names(tuple(gateway_set), cert_headers)
    out: list[tuple[bytes, bytes]] = []
    for k, v in request.headers:
        n = _norm(k)
        if (k in drop or n in drop or n.startswith((b"x-auth-", b"proxy-", b"x-forwarded-"))
                or n in ours or n in (b"forwarded", b"traceparent")):
            continue
        out.append((k, v))
    if identity is not None:
        out.append((AUTH_USER.encode(), identity.name.encode()))
        out.append((AUTH_ROLES.encode(), ",".join(identity.roles).encode()))
        if loom and identity.attrs:
            out.append((AUTH_ATTRS.encode(),
                        ",".join(f"{k}={v}" for k, v in identity.attrs).encode()))
        if not loom:
            out += [(k.encode(), v.encode()) for k, v in identity.headers]
    if not loom and cert_headers is not None and request.peer_certificate is not None:
        out += [(k.encode(), v.encode())
                for k, v in certificate_headers(request.peer_certificate, cert_headers)]
    host = request.remote.rsplit(":", 1)[0].strip("[]")
    out.append((b"x-forwarded-for", host.encode()))
    out.append((b"x-forwarded-proto", b"https"))
    out.append((b"traceparent", traceparent.encode() if traceparent
                else trace_parent(_single(request, b"traceparent"))))
    return out


@functools.lru_cache(maxsize=16)  # a forwarder's settings: a handful per configuration
def _gateway_names(gateway_set: tuple[str, ...], cert_headers: ClientCertHeaders | None
                   ) -> frozenset[bytes]:
    """The normalised names of the fields the gateway sets itself (removed from every inbound
    request)."""
    names = list(gateway_set)
    if cert_headers is not None:
        names += (cert_headers.subject, cert_headers.issuer, cert_headers.serial,
                  cert_headers.fingerprint)
    return frozenset(_norm(n.encode()) for n in names)


def _single(request: Request, name: bytes) -> bytes | None:
    values = [v for k, v in request.headers if k == name]
    return values[0] if len(values) == 1 else None


def response_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response fields a client sees: hop-by-hop ones dropped; Content-Length
    kept, so a sized body stays sized (the server then frames it without chunking)."""
    drop = _hop_by_hop(headers) - {b"content-length"}
    return [(k, v) for k, v in headers
            if k not in drop and not _norm(k).startswith(b"proxy-")]


@dataclass(frozen=True, slots=True)
class ForwarderStatistics:
    forwarded: int  # requests whose upstream answer was passed on
    not_leader_followed: int  # NOT_LEADER answers followed to another endpoint
    upstream_errors: int  # endpoints that could not be reached or broke before a head


class _Body:
    """The upstream body, piece by piece, holding the pooled connection until it is closed:
    `aclose` (the server always calls it) returns the connection to the pool when the body was
    read to its end, else closes it."""

    def __init__(self, response: StreamedResponse) -> None:
        self._response = response
        self._chunks = response.chunks()

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            await self._response.aclose()


class Forwarder:
    """Forward to one upstream through a shared pooled client (`HTTPClient`)."""

    def __init__(self, upstream: Upstream, client: HTTPClient, *, max_redirects: int = 3,
                 head_timeout_s: float = 120.0,
                 cert_headers: ClientCertHeaders | None = None,
                 gateway_set: Iterable[str] = (), whole_bytes: int = 64 * 1024,
                 credentials: tuple[Iterable[str], Iterable[str]] = ((), ())) -> None:
        self.upstream = upstream
        # The credential carriers removed from authenticated requests (hide_credentials).
        hide = upstream.hide_credentials or upstream.kind == "loom"
        self.hidden = frozenset(_norm(h.encode()) for h in credentials[0]) if hide else frozenset()
        self.hidden_params = frozenset(credentials[1]) if hide else frozenset()
        # An answer whose body arrived whole with its head, up to this size, is passed on as
        # one complete response (one write); any other is streamed.
        self.whole_bytes = whole_bytes
        self.client = client
        self.max_redirects = max_redirects
        self.head_timeout_s = head_timeout_s
        self.cert_headers = cert_headers
        self.gateway_set = tuple(gateway_set)
        self._preferred = 0  # index into endpoints, or the leader's origin below
        self._leader: str | None = None  # "https://host:port" learned from a redirect
        self._forwarded = 0
        self._followed = 0
        self._errors = 0

    def statistics(self) -> ForwarderStatistics:
        return ForwarderStatistics(self._forwarded, self._followed, self._errors)

    @property
    def loom(self) -> bool:
        return self.upstream.kind == "loom"

    def _origins(self) -> list[str]:
        eps = [e.rstrip("/") for e in self.upstream.endpoints]
        order = eps[self._preferred:] + eps[:self._preferred]
        if self._leader is not None:
            order = [self._leader, *(e for e in order if e != self._leader)]
        return order

    async def forward(self, request: Request, identity: ForwardIdentity | None,
                      traceparent: str = "") -> Response | StreamingResponse:
        headers = upstream_headers(request, identity, loom=self.loom,
                                   cert_headers=None if self.loom else self.cert_headers,
                                   gateway_set=self.gateway_set, traceparent=traceparent,
                                   hidden=self.hidden)
        origins = self._origins()
        target = request.target
        if identity is not None and self.hidden_params:
            target = without_params(target, self.hidden_params)
        url = origins[0] + target
        # Safe to send again (to this or another endpoint) after a failure that may have
        # reached the upstream: by method, or a POST carrying an Idempotency-Key (loomd applies
        # it once). A refused connection never reached it, so any request may go elsewhere.
        again = request.method in IDEMPOTENT or len(
            [v for k, v in request.headers if k == b"idempotency-key"]) == 1
        tried = 0
        redirects = 0
        last = "no endpoint answered"
        while True:
            try:
                with trio.fail_after(self.head_timeout_s):
                    r = await self.client.send(request.method, url, headers=headers,
                                               body=request.body, idempotent=again)
            except trio.TooSlowError:
                self._errors += 1
                raise UpstreamUnavailable(504, f"upstream {self.upstream.name}: no answer "
                                          f"within {self.head_timeout_s:g} s") from None
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                    h11.RemoteProtocolError, ResponseTooLarge) as e:
                self._errors += 1
                last = f"{urlsplit(url).netloc}: {type(e).__name__}"
                if self._leader is not None and url.startswith(self._leader):
                    self._leader = None  # the leader we knew is gone
                tried += 1
                # Broken after sending: the upstream may have executed it; only ever once.
                unsent = isinstance(e, OSError) and not isinstance(e, ssl.SSLError)
                if tried >= len(origins) or not (again or unsent):
                    raise UpstreamUnavailable(502, f"upstream {self.upstream.name}: "
                                              f"{last}") from None
                url = origins[tried] + target
                continue
            try:
                nxt = await self._not_leader(r, target, origins, url) if self.loom else None
                body = None
                if nxt is None and request.method == "HEAD":
                    # The answer's Content-Length describes a body it does not carry: only the
                    # streamed form passes it on as it is. Its end is already here.
                    r.arrived(0)
                elif nxt is None:
                    body = r.arrived(self.whole_bytes)
            except _Answer as a:
                await r.aclose()
                self._forwarded += 1
                return StreamingResponse(a.status, a.headers, _once(a.body))
            except BaseException:
                await r.aclose()
                raise
            if nxt is None:
                self._forwarded += 1
                if body is None:
                    return StreamingResponse(r.status, response_headers(r.headers), _Body(r))
                await r.aclose()  # read to its end: the connection goes back to the pool
                return Response(r.status, response_headers(r.headers), body)
            await r.aclose()
            redirects += 1
            self._followed += 1
            if redirects > self.max_redirects:
                raise UpstreamUnavailable(503, f"upstream {self.upstream.name}: no leader "
                                          f"after {self.max_redirects} redirects")
            url = nxt

    async def _not_leader(self, r: StreamedResponse, target: str, origins: list[str],
                          url: str) -> str | None:
        """The URL to send again to when `r` is loomd's NOT_LEADER, else None. The body of a
        NOT_LEADER answer is read (bounded) so the connection goes back to the pool."""
        if r.status == 307:
            location = r.header_values(b"location")
            await r.read(MAX_NOT_LEADER_BODY)
            if len(location) != 1:
                return None
            dest = urlsplit(location[0].decode("latin-1"))
            if dest.scheme != "https" or not dest.netloc:
                return None  # only ever to another https endpoint of the cluster
            self._leader = f"https://{dest.netloc}"
            return self._leader + target
        if r.status != 503 or b"application/problem+json" not in b"".join(
                r.header_values(b"content-type")):
            return None
        body = await r.read(MAX_NOT_LEADER_BODY)
        try:
            problem = json.loads(body)
        except ValueError:
            problem = None
        if not isinstance(problem, Mapping) or problem.get("code") != "NOT_LEADER":
            # Not ours to follow; the body was consumed, so answer it as it was.
            raise _Answer(r.status, response_headers(r.headers), body)
        # The leader is named but its HTTP address is unknown: try the next endpoint.
        current = next((i for i, o in enumerate(origins) if url.startswith(o)), -1)
        self._leader = None
        self._preferred = (self._preferred + 1) % len(self.upstream.endpoints)
        return origins[(current + 1) % len(origins)] + target


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


class _Answer(Exception):
    """A buffered upstream answer to pass on as it is (a 503 that was not NOT_LEADER)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        self.body = body
