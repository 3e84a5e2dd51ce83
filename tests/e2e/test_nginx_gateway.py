"""nginx in front of loomd: the gateway of deploy/nginx/loom-gateway.conf.template, run for real.

nginx (Debian's package; scripts/test.sh installs it) runs as the test user with its own prefix
and config under tmp, on a free loopback port, and stops at the end of each test. It terminates
the end user's TLS (their own CA, not Loom's), authenticates them by client certificate
(/cert/) or Basic auth (/basic/), forwards only an allow-list of headers with X-Auth-User and
X-Auth-Roles set from what it authenticated, and proxies to the node's HTTP listener over mutual
TLS with the gateway certificate `edge`. Requests go through it with two real clients: the
project's HTTP client and curl.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.http import ClientResponse, HTTPClient
from loom.node.server import Node
from loom.security import devpki
from loom.security.tls import client_context
from tests.conftest import PKI, NodeFactory
from tests.http_door.conftest import doc, header, http_as, start_http_node
from tests.node.conftest import EDGE_GW_P, WRITER_P, audit_flushed, records

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "nginx" / "loom-gateway.conf.template"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
HTPASSWD = shutil.which("htpasswd")
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}  # alice: reader; bob: data-writer
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

pytestmark = pytest.mark.skipif(
    NGINX is None or HTPASSWD is None,
    reason="nginx and htpasswd are not installed (scripts/test.sh installs them: apt-get "
           "install -y nginx apache2-utils, which needs root)")


@dataclass(frozen=True)
class Gateway:
    node: Node
    base: str  # https://127.0.0.1:PORT (nginx)
    user_ca: Path  # end users' CA: nginx's server certificate and carol's client certificate
    carol: tuple[Path, Path]
    prefix: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _end_user_pki(d: Path) -> tuple[Path, tuple[Path, Path], tuple[Path, Path]]:
    """A CA of the gateway's own (end users never see Loom's): nginx's server certificate
    and the client certificate of the end user carol."""
    d.mkdir()
    ca, ca_key = devpki.new_ca(common_name="Gateway users CA")
    devpki.write_cert(d / "ca.pem", ca)
    out = []
    for name, ips in (("nginx", ("127.0.0.1",)), ("carol", ())):
        cert, key = devpki.issue_cert(ca, ca_key, role="client", name=name, uri=False, ips=ips,
                                      server=bool(ips))
        devpki.write_cert(d / f"{name}.pem", cert)
        devpki.write_key(d / f"{name}.key", key)
        out.append((d / f"{name}.pem", d / f"{name}.key"))
    return d / "ca.pem", out[0], out[1]


def render(prefix: Path, listen: str, loomd: str, pki: PKI, user_ca: Path,
           server: tuple[Path, Path], htpasswd: Path) -> str:
    user = pwd.getpwuid(os.geteuid()).pw_name
    subst = {
        "PREFIX": str(prefix), "USER_LINE": f"user {user};" if os.geteuid() == 0 else "",
        "LISTEN": listen, "SERVER_CERT": str(server[0]), "SERVER_KEY": str(server[1]),
        "USER_CA": str(user_ca), "HTPASSWD": str(htpasswd), "LOOMD": loomd,
        "LOOM_NAME": "localhost", "LOOM_CA": str(pki.ca),
        "GATEWAY_CERT": str(pki.dir / "edge.pem"), "GATEWAY_KEY": str(pki.dir / "edge.key"),
    }
    text = TEMPLATE.read_text(encoding="utf-8")
    for k, v in subst.items():
        text = text.replace(f"@{k}@", v)
    left = [x for x in text.splitlines() if "@" in x and not x.lstrip().startswith("#")]
    assert not left, f"placeholders of the template not replaced: {left}"
    return text


async def _wait_listening(port: int, proc: trio.Process, log: Path) -> None:
    with trio.fail_after(10):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited {proc.returncode}: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            try:
                s = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await s.aclose()
            return


@pytest.fixture
async def gateway(pki: PKI, tmp_path: Path, start_node: NodeFactory) -> AsyncIterator[Gateway]:
    assert NGINX is not None and HTPASSWD is not None
    node = await start_http_node(start_node)
    assert node.http is not None
    user_ca, server, carol = _end_user_pki(tmp_path / "users")
    htpasswd = tmp_path / "users.htpasswd"
    htpasswd.write_text("".join(
        subprocess.run([HTPASSWD, "-nbB", u, p], check=True, capture_output=True, text=True,
                       timeout=30).stdout.strip() + "\n" for u, p in PASSWORDS.items()))
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    for attempt in range(3):  # the free port may be taken between the probe and nginx's bind
        port = _free_port()
        conf.write_text(render(prefix, f"127.0.0.1:{port}", f"127.0.0.1:{node.http.port}",
                               pki, user_ca, server, htpasswd))
        log = prefix / "error.log"
        proc = await trio.lowlevel.open_process(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await _wait_listening(port, proc, log)
            break
        except RuntimeError:
            if attempt == 2 or "Address already in use" not in log.read_text(errors="replace"):
                raise
    try:
        yield Gateway(node, f"https://127.0.0.1:{port}", user_ca, carol, prefix)
    finally:
        with trio.CancelScope(shield=True):
            proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master
            with trio.move_on_after(10):
                await proc.wait()
            if proc.poll() is None:
                proc.kill()
                await proc.wait()


def _basic(user: str) -> tuple[str, str]:
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    return ("authorization", f"Basic {token}")


async def _request(gw: Gateway, method: str, path: str, *, headers: list[tuple[str, str]],
                   body: bytes = b"", cert: tuple[Path, Path] | None = None) -> ClientResponse:
    ctx = client_context(gw.user_ca, *cert) if cert else client_context(gw.user_ca)
    async with HTTPClient(ctx) as client:
        with trio.fail_after(20):
            return await client.request(method, gw.base + path, headers=headers, body=body)


async def _curl(gw: Gateway, *args: str) -> tuple[int, Any]:
    """curl through nginx: (status, the JSON body, or None when it is not JSON: nginx's own
    error pages are HTML)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    r = await trio.run_process(
        [curl, "-sS", "--max-time", "20", "--cacert", str(gw.user_ca),
         "-o", "-", "-w", "\n%{http_code}", *args],
        capture_stdout=True, capture_stderr=True, check=False)
    assert r.returncode == 0, r.stderr
    text, _, code = r.stdout.decode().rpartition("\n")
    try:
        return int(code), json.loads(text)
    except ValueError:
        return int(code), None


def _audit(node: Node, command: str) -> list[dict[str, Any]]:
    return [x for x in records(node) if x.get("command") == command]


async def test_an_allowed_write_runs_as_the_end_user(gateway: Gateway) -> None:
    # The allow-list passes traceparent on (it becomes the audit record's request_id).
    r = await _request(gateway, "PUT", "/basic/v1/maps/orders/o%2F17", body=b"\x00raw",
                       headers=[_basic("bob"), ("content-type", "application/octet-stream"),
                                ("traceparent", TRACE)])
    assert r.status == 200, r.body
    # ... and Idempotency-Key: a retried POST answers the first outcome and applies once.
    retry = [_basic("bob"), ("idempotency-key", "order-17-count")]
    for _ in range(2):
        r = await _request(gateway, "POST", "/basic/v1/counters/c/increment", headers=retry)
        assert r.status == 200 and doc(r) == {"result": 1}, r.body
    r = await _request(gateway, "POST", "/basic/v1/counters/c/increment",
                       headers=[_basic("bob"), ("idempotency-key", "order-18-count")])
    assert doc(r) == {"result": 2}
    # The certificate location, another end user; the raw URI (a %2F in the key) kept.
    r = await _request(gateway, "GET", "/cert/v1/maps/orders/o%2F17", cert=gateway.carol,
                       headers=[("accept", "application/octet-stream")])
    assert r.status == 200 and r.body == b"\x00raw", r.body
    await audit_flushed(gateway.node)
    [put] = _audit(gateway.node, "MAP_PUT")
    assert put["principal"] == "user:bob" and put["via_gateway"] == EDGE_GW_P
    assert put["result"] == "ok" and put["key"] == "o/17"
    assert put["roles"] == ["data-writer", "reader"] and put["request_id"] == TRACE


async def test_a_denied_write_is_403_and_audited_as_the_end_user(gateway: Gateway) -> None:
    r = await _request(gateway, "PUT", "/basic/v1/maps/orders/o1", body=b"v",
                       headers=[_basic("alice")])
    assert r.status == 403, r.body
    assert header(r, "content-type") == "application/problem+json"
    assert doc(r)["code"] == "FORBIDDEN" and "user:alice" in doc(r)["detail"]
    await audit_flushed(gateway.node)
    [rec] = _audit(gateway.node, "MAP_PUT")
    assert rec["principal"] == "user:alice" and rec["result"] == "denied"
    assert rec["via_gateway"] == EDGE_GW_P and rec["roles"] == ["reader"]


async def test_identity_headers_an_end_user_sends_are_stripped(gateway: Gateway) -> None:
    spoof = ["-H", "X-Auth-User: bob", "-H", "X-Auth-Roles: admin", "-H", "x-auth-user: root",
             "-H", "X-Auth_User: root", "-H", "X-AUTH-ROLES: admin",
             "-H", "content-type: application/json", "-X", "POST", "-d", "{}"]
    status, body = await _curl(gateway, "-u", f"alice:{PASSWORDS['alice']}", *spoof,
                               f"{gateway.base}/basic/v1/call/WHOAMI")
    assert status == 200, body
    assert body["result"]["principal"] == "user:alice"
    assert body["result"]["roles"] == ["reader"]
    assert body["result"]["via_gateway"] == EDGE_GW_P
    carol = gateway.carol
    status, body = await _curl(gateway, "--cert", str(carol[0]), "--key", str(carol[1]),
                               *spoof, f"{gateway.base}/cert/v1/call/WHOAMI")
    assert status == 200 and body["result"]["principal"] == "user:carol", body
    # Unauthenticated at the gateway: nginx answers, loomd never sees the request.
    status, _ = await _curl(gateway, *spoof, f"{gateway.base}/basic/v1/call/WHOAMI")
    assert status == 401
    status, _ = await _curl(gateway, *spoof, f"{gateway.base}/cert/v1/call/WHOAMI")
    assert status == 401
    status, _ = await _curl(gateway, "-u", "alice:wrong", *spoof,
                            f"{gateway.base}/basic/v1/call/WHOAMI")
    assert status == 401


async def test_going_around_the_gateway_is_401_and_audited(gateway: Gateway,
                                                           pki: PKI) -> None:
    node = gateway.node
    for name in ("writer", "client-edge"):  # a client; a client named like the gateway
        async with http_as(pki, node, name) as direct:
            r = await direct.call("PUT", "/v1/maps/orders/o1", body=b"v",
                                  headers=[("X-Auth-User", "bob"),
                                           ("X-Auth-Roles", "data-writer")])
            assert r.status == 401, r.body
            assert doc(r)["code"] == "UNAUTHENTICATED"
    await audit_flushed(node)
    refused = [x for x in records(node) if x.get("event") == "identity_assertion_refused"]
    assert [x["principal"] for x in refused] == [WRITER_P, "spiffe://loom.dev/client/edge"]
    assert all(x["result"] == "unauthenticated" and x["command"] == "MAP_PUT"
               for x in refused)
    # Nothing was written by either.
    r = await _request(gateway, "GET", "/basic/v1/maps/orders/o1", headers=[_basic("alice")])
    assert r.status == 200 and doc(r) == {"result": None}
