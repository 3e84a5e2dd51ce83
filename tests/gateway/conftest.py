"""A local identity provider for the gateway tests: a real trio HTTPS server on loom/http with
OIDC discovery, a JWKS of RSA and EC keys made with `cryptography` (rotated by the tests) and an
RFC 7662 introspection endpoint, counting every call. Tokens are signed with PyJWT."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from loom.gateway.auth.fetch import HTTPSFetcher
from loom.http import HTTPServer, Request, Response, ServerLimits
from loom.security.tls import client_context, server_context
from tests.conftest import PKI

CLIENT_ID = "gateway"
CLIENT_SECRET = "introspection-secret-6b1c"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algo = RSAAlgorithm if self.alg.startswith("RS") else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537,
                                                             key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class IdP:
    """The provider's state; the tests change it (rotate keys, go down, revoke tokens)."""

    keys: list[SigningKey]
    port: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    down: bool = False
    active: dict[str, dict[str, Any]] = field(default_factory=dict)  # introspection answers
    introspection_auth: list[str] = field(default_factory=list)
    introspection_delay_s: float = 0.0  # how long the endpoint takes to answer

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}/realms/test"

    @property
    def jwks_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/jwks"

    @property
    def introspection_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/introspect"

    def key(self, kid: str) -> SigningKey:
        return next(k for k in self.keys if k.kid == kid)

    def token(self, kid: str | None = None, *, headers: dict[str, Any] | None = None,
              **claims: Any) -> str:
        k = self.key(kid) if kid else self.keys[0]
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "sub": "alice", "aud": "loom",
                                "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
        body.update(claims)
        for name in [n for n, v in body.items() if v is None]:
            del body[name]
        return jwt.encode(body, k.private, algorithm=k.alg,
                          headers={"kid": k.kid, **(headers or {})})

    async def handle(self, request: Request) -> Response:
        self.calls[request.path] += 1
        if self.down:
            return Response(503, [("content-type", "text/plain")], b"down")
        if request.path == "/realms/test/.well-known/openid-configuration":
            doc = {"issuer": self.issuer, "jwks_uri": self.jwks_url,
                   "introspection_endpoint": self.introspection_url}
            return _json(doc)
        if request.path == "/jwks":
            return _json({"keys": [k.public_jwk() for k in self.keys]})
        if request.path == "/introspect" and request.method == "POST":
            auth = request.header("authorization") or b""
            self.introspection_auth.append(auth.decode())
            expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if auth.decode() != f"Basic {expected}":
                return Response(401, [("www-authenticate", 'Basic realm="idp"')])
            form = dict(parse_qsl(request.body.decode()))
            await trio.sleep(self.introspection_delay_s)
            return _json(self.active.get(form.get("token", ""), {"active": False}))
        return Response(404)


def _json(doc: object) -> Response:
    return Response(200, [("content-type", "application/json")], json.dumps(doc).encode())


@asynccontextmanager
async def running_idp(pki: PKI, keys: list[SigningKey]) -> AsyncIterator[IdP]:
    idp = IdP(keys)
    server = HTTPServer(idp.handle, server_context(pki.ca, *pki.pair("n1"),
                                                   require_client_auth=False),
                        limits=ServerLimits(linger_s=0.05))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        idp.port = listeners[0].socket.getsockname()[1]
        try:
            yield idp
        finally:
            server.shutdown()


@pytest.fixture(scope="session")
def signing_keys() -> list[SigningKey]:
    # RSA key generation costs ~100 ms: made once per session, copied per test.
    return [rsa_key("rsa-1"), ec_key("ec-1"), rsa_key("rsa-2")]


@pytest.fixture
async def idp(pki: PKI, signing_keys: list[SigningKey]) -> AsyncIterator[IdP]:
    async with running_idp(pki, list(signing_keys[:2])) as provider:
        yield provider


@pytest.fixture
async def fetcher(pki: PKI) -> AsyncIterator[HTTPSFetcher]:
    f = HTTPSFetcher(client_context(pki.ca), timeout_s=5.0)
    try:
        yield f
    finally:
        await f.aclose()


class Clock:
    """An injected clock the tests move by hand."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
