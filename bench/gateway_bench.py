"""Gateway benchmark: requests through `loom-gateway` to a 3-node Loom cluster, against loomd's
HTTP door directly, in one run.

    .venv/bin/python bench/gateway_bench.py [--seconds 5] [--clients 8]

Everything runs on this machine on 127.0.0.1: three `loomd` processes with the HTTP door
(mutual TLS, fsync on), one `loom-gateway` process in front of the leader's door, and a small
identity provider in this process (loom/http's server: a JWKS document with an RS256 key and an
RFC 7662 introspection endpoint, counting calls). Scenarios, each a closed loop of `--clients`
clients doing `GET /v1/counters/bench` (a linearizable read at the leader):

- direct:      to the leader's door with a client certificate (no gateway);
- jwt-l1:      one RS256 token for every request: after the first, an L1 hit (no signature
               verification);
- jwt-fresh:   a new RS256 token per request (minted before the timed run): the signature is
               verified every time;
- api-key:     an API key (a SHA-256 digest and a constant-time compare per request);
- introspect:  an opaque token, introspected once, then served from the introspection cache.

Figures per scenario: requests/s, p50/p99 latency, and the gateway process's CPU time per
request (utime + stime from /proc, so the load generator's own CPU is not counted). Targets,
reported, never asserted: end-to-end p50 through the gateway at most 1.5x direct; the
authentication part of an L1 hit under 50 µs of CPU (bench/gateway_auth_bench.py measures that
part alone; here the whole forwarding path is in the figure). The load generator shares the
machine's cores with four server processes: figures move between runs on a loaded machine.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import trio
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster_bench import LoomCluster
from loom.chaos.cluster import free_ports
from loom.http import ClientLimits, HTTPClient, HTTPServer, Request, Response
from loom.security.tls import client_context, server_context

ISSUER = "https://idp.bench"
AUDIENCE = "loom"
API_KEY = "bench-api-key-0123456789"
GATEWAY_ID = "spiffe://loom.dev/gateway/edge"
BIN = Path(sys.executable).parent


def say(msg: str) -> None:
    print(msg, flush=True)


class DoorCluster(LoomCluster):
    """The benchmark's cluster with the HTTP door on and the dev gateway trusted."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, tick_ms=50)
        self.http = {n: f"127.0.0.1:{p}" for n, p in zip(self.client, free_ports(3),
                                                        strict=True)}

    def config(self, node: str) -> dict[str, Any]:
        cfg = super().config(node)
        cfg["http"] = {"listen": self.http[node]}
        cfg["gateway"] = {"identities": [GATEWAY_ID]}
        return cfg


class IdentityProvider:
    """JWKS and introspection over HTTPS; every call counted."""

    def __init__(self, certs: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.calls = {"jwks": 0, "introspect": 0}
        self.server = HTTPServer(self.handle, server_context(
            certs / "ca.pem", certs / "n1.pem", certs / "n1.key", require_client_auth=False))
        self.port = 0

    def jwks(self) -> bytes:
        n = self.key.public_key().public_numbers()

        def b64(i: int) -> str:
            return base64.urlsafe_b64encode(i.to_bytes((i.bit_length() + 7) // 8, "big")
                                            ).rstrip(b"=").decode()
        return json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
                                     "n": b64(n.n), "e": b64(n.e)}]}).encode()

    async def handle(self, request: Request) -> Response:
        if request.path == "/jwks":
            self.calls["jwks"] += 1
            return Response(200, [("content-type", "application/json")], self.jwks())
        self.calls["introspect"] += 1
        now = int(time.time())
        body = {"active": True, "sub": "opaque-user", "scope": "reader", "exp": now + 600}
        return Response(200, [("content-type", "application/json")], json.dumps(body).encode())

    def token(self, sub: str) -> str:
        now = int(time.time())
        return pyjwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": ["reader"],
                             "iat": now, "exp": now + 600}, self.key, algorithm="RS256",
                            headers={"kid": "k1"})


def gateway_config(d: Path, certs: Path, port: int, idp: int, leader_http: str) -> Path:
    secret = d / "introspection.secret"
    secret.write_text("bench-secret")
    secret.chmod(0o600)
    raw = {
        "listeners": [{"name": "https", "address": f"127.0.0.1:{port}", "tls": {
            "cert_file": str(certs / "edge.pem"), "key_file": str(certs / "edge.key")}}],
        "middleware": {"auth": {
            "jwt": {"enabled": True, "issuers": [{
                "name": "idp", "issuer": ISSUER, "algorithms": ["RS256"],
                "jwks_url": f"https://127.0.0.1:{idp}/jwks"}], "audience": [AUDIENCE],
                "roles_claim": "roles", "cache_size": 200_000},
            "oauth": {"enabled": True, "introspection_url": f"https://127.0.0.1:{idp}/introspect",
                      "client_id": "gateway", "client_secret_file": str(secret)},
            "api_key": {"enabled": True, "keys": [{
                "name": "bench", "key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                "roles": ["reader"]}]},
            "chain": ["jwt", "oauth", "api_key"],
            "provider_ca_file": str(certs / "ca.pem")}},
        "routes": [{"id": "api", "path": "/*", "upstream": "loom", "auth": {"require": True}}],
        "upstreams": [{"name": "loom", "kind": "loom", "endpoints": [f"https://{leader_http}"],
                       "tls": {"ca_file": str(certs / "ca.pem"),
                               "cert_file": str(certs / "edge.pem"),
                               "key_file": str(certs / "edge.key")}}],
    }
    path = d / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    path.chmod(0o600)
    return path


def start_gateway(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("AUTH_TYPE", None)
    with log.open("wb") as out:  # own session: stopped by PID below, also on Ctrl-C
        return subprocess.Popen([str(BIN / "loom-gateway"), "run", str(cfg), "--log-level",
                                 "warning"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_leader(cluster: DoorCluster, http: HTTPClient) -> str:
    """The node whose door answers a write (a follower answers 307 or 503)."""
    with trio.fail_after(30):
        while True:
            for n, addr in cluster.http.items():
                try:
                    r = await http.request("POST", f"https://{addr}/v1/counters/bench/increment")
                except OSError:
                    continue
                if r.status == 200:
                    return n
            await trio.sleep(0.2)


async def scenario(name: str, url: str, http: HTTPClient, headers_for: Any, clients: int,
                   seconds: float, pid: int | None) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0

    async def one(stop: float) -> None:
        nonlocal errors
        i = 0
        while (a := time.perf_counter()) < stop:
            r = await http.request("GET", url, headers=headers_for(i))
            i += 1
            if r.status != 200:
                errors += 1
                continue
            lat.append(time.perf_counter() - a)

    async with trio.open_nursery() as n:  # warm-up: connections made, caches filled
        for _ in range(clients):
            n.start_soon(one, time.perf_counter() + 0.5)
    lat.clear()
    errors = 0
    c0 = cpu_s(pid) if pid else 0.0
    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for _ in range(clients):
            n.start_soon(one, t0 + seconds)
    wall = time.perf_counter() - t0
    cpu = (cpu_s(pid) - c0) if pid else 0.0
    k = len(lat)
    lat.sort()
    out = {"scenario": name, "requests": k, "errors": errors, "rps": k / wall,
           "p50_ms": lat[k // 2] * 1e3 if k else None,
           "p99_ms": lat[int(k * 0.99)] * 1e3 if k else None,
           "gateway_cpu_us_per_req": cpu / k * 1e6 if (k and pid) else None}
    say(f"{name:11s} {out['rps']:8.0f} req/s  p50 {out['p50_ms'] or 0:6.2f} ms  "
        f"p99 {out['p99_ms'] or 0:6.2f} ms  gateway CPU "
        + (f"{out['gateway_cpu_us_per_req']:6.0f} µs/req" if pid else "     - ")
        + (f"  ({errors} errors)" if errors else ""))
    return out


async def bench(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    cluster = DoorCluster(work)
    certs = cluster.certs
    with cluster.running():
        idp = IdentityProvider(certs)
        limits = ClientLimits(max_connections_per_origin=args.clients)
        admin = client_context(certs / "ca.pem", certs / "admin.pem", certs / "admin.key")
        async with trio.open_nursery() as nursery, HTTPClient(admin, limits=limits) as direct:
            socks = await nursery.start(idp.server.serve_tcp, "127.0.0.1", 0)
            idp.port = socks[0].socket.getsockname()[1]
            leader = await wait_leader(cluster, direct)
            (gport,) = free_ports(1)
            cfg = gateway_config(work, certs, gport, idp.port, cluster.http[leader])
            gw = start_gateway(cfg, work / "gateway.log")
            try:
                results = await run_all(args, cluster, leader, direct, idp, gport, gw.pid,
                                        certs, limits)
            finally:
                gw.send_signal(signal.SIGTERM)
                gw.wait(timeout=20)
                idp.server.shutdown()
    say(f"identity provider calls: {idp.calls}")
    return results


async def run_all(args: argparse.Namespace, cluster: DoorCluster, leader: str,
                  direct: HTTPClient, idp: IdentityProvider, gport: int, pid: int,
                  certs: Path, limits: ClientLimits) -> list[dict[str, Any]]:
    path = "/v1/counters/bench"
    gurl = f"https://127.0.0.1:{gport}{path}"
    anon = client_context(certs / "ca.pem")
    async with HTTPClient(anon, limits=limits) as http:
        with trio.fail_after(20):
            while True:
                try:
                    await http.request("GET", f"https://127.0.0.1:{gport}/")
                    break
                except OSError:
                    await trio.sleep(0.1)
        say(f"leader {leader}; {args.clients} clients, {args.seconds:.0f} s per scenario; "
            f"{os.cpu_count()} cores shared by 3 nodes, the gateway, the provider and the load")
        l1 = [("authorization", f"Bearer {idp.token('l1-user')}")]
        fresh = [f"Bearer {idp.token(f'user-{i}')}" for i in range(args.fresh_tokens)]
        out = [await scenario("direct", f"https://{cluster.http[leader]}{path}", direct,
                              lambda i: [], args.clients, args.seconds, None)]
        out.append(await scenario("jwt-l1", gurl, http, lambda i: l1, args.clients,
                                  args.seconds, pid))
        counter = iter(range(10**9))
        out.append(await scenario(
            "jwt-fresh", gurl, http,
            lambda i: [("authorization", fresh[next(counter) % len(fresh)])],
            args.clients, args.seconds, pid))
        out.append(await scenario("api-key", gurl, http, lambda i: [("x-api-key", API_KEY)],
                                  args.clients, args.seconds, pid))
        opaque = [("authorization", "Bearer opaque-token-for-introspection")]
        out.append(await scenario("introspect", gurl, http, lambda i: opaque, args.clients,
                                  args.seconds, pid))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--fresh-tokens", type=int, default=6_000,
                   help="distinct tokens for jwt-fresh (more than it sends: each is new)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        results = trio.run(bench, args, Path(tmp))
    direct = results[0]["p50_ms"] or 0.0
    for r in results[1:]:
        if direct and r["p50_ms"]:
            say(f"{r['scenario']:11s} p50 {r['p50_ms'] / direct:4.2f}x direct (target <= 1.5x)")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "gateway_bench.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
