"""Helpers for the forwarding tests: gateway configuration files as real users write them
(YAML, secrets in private files), dev tokens, and a plain HTTPS upstream that echoes."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import trio
import yaml

from loom.http import HTTPServer, Request, Response, StreamingResponse
from loom.security.tls import server_context
from tests.conftest import PKI

API_KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789",
            "root": "root-key-0123456789"}
JWT_SECRET = b"a-dev-only-hs256-secret-of-32-bytes!"
ISSUER = "https://issuer.loom.dev"
AUDIENCE = "loom"


def private(path: Path, text: str | bytes) -> Path:
    """A file only its owner can read (the schema refuses world-readable secrets)."""
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(0o600)
    return path


def gateway_config(pki: PKI, d: Path, *, upstream: dict[str, Any],
                   client_auth: str = "request", address: str = "127.0.0.1:0",
                   rate: float = 1000.0, burst: float = 1000.0,
                   extra_routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    d.mkdir(parents=True, exist_ok=True)
    secret = private(d / "jwt.secret", JWT_SECRET)
    keys = [{"name": n, "key_sha256": hashlib.sha256(k.encode()).hexdigest(),
             "roles": ["admin"] if n == "root" else ["data-writer", "reader"]}
            for n, k in API_KEYS.items()]
    routes = [*(extra_routes or []),
              {"id": "public", "path": "/public/*", "upstream": "up"},
              {"id": "admin", "path": "/admin/*", "upstream": "up",
               "auth": {"require": True, "roles": ["admin"]}},
              {"id": "api", "path": "/*", "upstream": "up", "auth": {"require": True}}]
    return {
        "listeners": [{"name": "https", "address": address, "tls": {
            "cert_file": str(pki.dir / "edge.pem"), "key_file": str(pki.dir / "edge.key"),
            "client_auth": client_auth, "ca_file": str(pki.ca)}}],
        "middleware": {"auth": {
            "api_key": {"enabled": True, "header": "X-API-Key", "query_param": "api_key",
                        "keys": keys},
            "jwt": {"enabled": True, "issuers": [{
                "name": "dev", "issuer": ISSUER, "algorithms": ["HS256"],
                "secret_file": str(secret)}], "audience": [AUDIENCE], "roles_claim": "roles",
                "claims_to_headers": {"sub": "X-User-ID"}},
            "chain": ["jwt", "api_key"],
            "guest_roles": ["guest"]}},
        "routes": routes,
        "upstreams": [{"name": "up", **upstream}],
        "rate_limit": {"enabled": True, "key": "identity", "rate": rate, "burst": burst},
    }


def write_config(d: Path, config: dict[str, Any]) -> Path:
    return private(d / "gateway.yaml", yaml.safe_dump(config))


def dev_token(sub: str, roles: list[str], *, ttl: float = 300.0) -> str:
    now = int(time.time())
    return pyjwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles,
                         "iat": now, "exp": now + int(ttl)}, JWT_SECRET, algorithm="HS256")


class EchoUpstream:
    """A plain HTTPS upstream (loom/http's server, the node certificate n1): answers every
    request with what it received as JSON, and `/api/events` as a live event stream whose
    second event is produced only after `release` is set."""

    def __init__(self, pki: PKI) -> None:
        self.release = trio.Event()
        self.seen: list[Request] = []
        self.server = HTTPServer(self.handle, server_context(
            pki.ca, *pki.pair("n1"), require_client_auth=False))
        self.port = 0

    async def handle(self, request: Request) -> Response | StreamingResponse:
        self.seen.append(request)
        if request.path == "/api/events":
            return StreamingResponse(200, [("content-type", "text/event-stream"),
                                           ("connection", "x-upstream-private"),
                                           ("x-upstream-private", "1")], self.events())
        body = json.dumps({"method": request.method, "target": request.target,
                           "headers": [[k.decode(), v.decode("latin-1")]
                                       for k, v in request.headers],
                           "body": request.body.decode("latin-1")}).encode()
        return Response(200, [("content-type", "application/json"),
                              ("keep-alive", "timeout=5")], body)

    async def events(self) -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        await self.release.wait()
        yield b"data: two\n\n"

    async def start(self, nursery: trio.Nursery) -> None:
        socks = await nursery.start(self.server.serve_tcp, "127.0.0.1", 0)
        self.port = socks[0].socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def echoed(body: bytes) -> dict[str, list[str]]:
    """The echoed request's headers as name -> values."""
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k, []).append(v)
    return out
