"""CPU per authentication in the gateway's methods, in one process, without the network.

    .venv/bin/python bench/gateway_auth_bench.py [--calls 20000] [--uncached 2000]

Prints µs of process CPU per call (`time.process_time`) for:

- JWT, L1 hit: the same valid token again (header parsing, the L1 lookup by SHA-256; no
  signature verification, which the printed verification count shows);
- JWT uncached, RS256 and ES256: a distinct valid token per call, each verified by PyJWT with
  the issuer's key from L2 (the JWKS is fetched once, from memory: the fetch is not measured);
- API key: SHA-256 of the presented key and constant-time comparison with 10 configured keys;
- Basic, cached: a verified credential again (bcrypt ran once, the cache answers after).

The target for an L1 hit is under 50 µs. Nothing is asserted; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loom.gateway.auth.api_key import ApiKeyAuthenticator
from loom.gateway.auth.base import AuthRequest, Identity
from loom.gateway.auth.basic import BasicAuthenticator
from loom.gateway.auth.jwt import JwtAuthenticator
from loom.gateway.config import (
    ApiKey,
    ApiKeyConfig,
    BasicConfig,
    BasicUser,
    IssuerConfig,
    JwtConfig,
)

ISSUER = "https://idp.bench"
JWKS_URL = "https://idp.bench/jwks"


def make_keys() -> tuple[dict[str, Any], dict[str, Any]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = [{**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "r",
             "alg": "RS256", "use": "sig"},
            {**json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "e",
             "alg": "ES256", "use": "sig"}]
    return {"RS256": ("r", rsa_key), "ES256": ("e", ec_key)}, {"keys": jwks}


def token(keys: dict[str, Any], alg: str) -> bytes:
    kid, key = keys[alg]
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": "loom", "iat": now, "exp": now + 3600,
              "jti": uuid.uuid4().hex, "roles": ["reader", "writer"]}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid}).encode()


def bearer(tok: bytes) -> AuthRequest:
    return AuthRequest(((b"host", b"gw"), (b"authorization", b"Bearer " + tok),
                        (b"accept", b"*/*")), remote="127.0.0.1:40000")


async def per_call(fn: Callable[[AuthRequest], Awaitable[object]],
                   requests: Sequence[AuthRequest]) -> float:
    """µs of process CPU per call; every call must authenticate."""
    start = time.process_time()
    for r in requests:
        if not isinstance(await fn(r), Identity):
            raise SystemExit("a benchmark call did not authenticate")
    return (time.process_time() - start) / len(requests) * 1e6


async def main(calls: int, uncached: int) -> None:
    keys, jwks = make_keys()
    body = json.dumps(jwks).encode()

    async def fetch(method: str, url: str, headers: Sequence[tuple[str, str]],
                    data: bytes) -> tuple[int, bytes]:
        return (200, body) if url == JWKS_URL else (404, b"")

    cfg = JwtConfig(enabled=True, audience=("loom",), roles_claim="roles",
                    cache_size=max(calls, uncached) + 10, issuers=(
                        IssuerConfig("idp", ISSUER, ("RS256", "ES256"), jwks_url=JWKS_URL),))
    auth = JwtAuthenticator(cfg, fetch)
    hot = bearer(token(keys, "ES256"))
    await auth.authenticate(hot)  # verified once: in L1 from now on
    before = auth.statistics().verifications
    l1 = await per_call(auth.authenticate, [hot] * calls)
    assert auth.statistics().verifications == before
    print(f"JWT L1 hit            {l1:8.1f} µs/call  ({calls} calls, "
          f"{auth.statistics().verifications - before} signature verifications)")
    for alg in ("RS256", "ES256"):
        reqs = [bearer(token(keys, alg)) for _ in range(uncached)]
        before = auth.statistics().verifications
        us = await per_call(auth.authenticate, reqs)
        done = auth.statistics().verifications - before
        print(f"JWT uncached {alg}    {us:8.1f} µs/call  ({uncached} calls, {done} verified)")

    api_keys = tuple(ApiKey(f"k{i}", hashlib.sha256(f"key-{i}".encode()).digest())
                     for i in range(10))
    ak = ApiKeyAuthenticator(ApiKeyConfig(True, "X-API-Key", None, api_keys))
    req = AuthRequest(((b"host", b"gw"), (b"x-api-key", b"key-7")))
    print(f"API key               {await per_call(ak.authenticate, [req] * calls):8.1f} µs/call")

    hashed = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=5))
    ba = BasicAuthenticator(BasicConfig(True, "bench", (BasicUser("admin", hashed),),
                                        cache_ttl_s=3600.0))
    cred = base64.b64encode(b"admin:correct horse")
    req = AuthRequest(((b"host", b"gw"), (b"authorization", b"Basic " + cred)))
    await ba.authenticate(req)
    us = await per_call(ba.authenticate, [req] * calls)
    print(f"Basic, cached         {us:8.1f} µs/call  ({ba.statistics().hashes} bcrypt hash)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--uncached", type=int, default=2_000)
    a = p.parse_args()
    trio.run(main, a.calls, a.uncached)
