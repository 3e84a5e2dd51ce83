"""A real HTTP client (curl) against the server, and the problem+json values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trio

from loom.http import PROBLEM_CONTENT_TYPE, Problem, Request, Response, StreamingResponse
from tests.conftest import PKI
from tests.http.conftest import echo, running

CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="curl is not installed on this machine")
async def test_curl_with_a_client_certificate(pki: PKI) -> None:
    async def handler(request: Request) -> Response | StreamingResponse:
        if request.path == "/who":
            return Response(200, body=b"cert" if request.peer_certificate else b"none")
        if request.path == "/sse":
            async def events():  # type: ignore[no-untyped-def]
                for i in range(3):
                    yield b"data: %d\n\n" % i
            return StreamingResponse(200, [("content-type", "text/event-stream")], events())
        return await echo(request)

    async with running(pki, handler, max_header_bytes=2048) as srv:
        cert, key = pki.pair("admin")
        base = ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.ca), "--cert", str(cert),
                "--key", str(key)]
        # Two URLs on one curl: the second reuses the kept-alive connection.
        out = await trio.run_process(
            [*base, "-w", " %{http_code} %{num_connects}\n", f"{srv.base}/who",
             "--data-binary", "hello", f"{srv.base}/post"], capture_stdout=True)
        assert out.stdout.decode().splitlines() == ["cert 200 1", "POST /post 5 200 0"]
        out = await trio.run_process([*base, "-N", f"{srv.base}/sse"], capture_stdout=True)
        assert out.stdout == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        out = await trio.run_process(
            [*base, "-w", "\n%{http_code}", "-H", "X-Big: " + "a" * 3000, f"{srv.base}/"],
            capture_stdout=True)
        body, _, code = out.stdout.rpartition(b"\n")
        assert code == b"431" and json.loads(body)["status"] == 431
        stats = srv.server.statistics()
        assert stats.requests_served == 3 and stats.refused == {"header_too_large": 1}


@pytest.mark.skipif(CURL is None, reason="curl is not installed on this machine")
async def test_curl_reads_413_while_still_sending(pki: PKI, tmp_path: Path) -> None:
    # Without "Expect: 100-continue" curl sends the body at once; it reads the early answer.
    big = tmp_path / "body"
    big.write_bytes(b"b" * (512 * 1024))
    async with running(pki, echo, max_body_bytes=1000, linger_s=2) as srv:
        cert, key = pki.pair("admin")
        out = await trio.run_process(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.ca), "--cert", str(cert),
             "--key", str(key), "-H", "Expect:", "--data-binary", f"@{big}",
             "-w", "\n%{http_code}", f"{srv.base}/up"], capture_stdout=True)
        body, _, code = out.stdout.rpartition(b"\n")
        assert code == b"413" and json.loads(body)["status"] == 413
        assert srv.server.statistics().refused == {"body_too_large": 1}


def test_problem_values() -> None:
    p = Problem(429, detail="slow down", extra={"retry_after_s": 2})
    assert p.to_dict() == {"type": "about:blank", "title": "Too Many Requests", "status": 429,
                           "detail": "slow down", "retry_after_s": 2}
    r = p.response([("retry-after", "2")])
    assert r.status == 429
    assert list(r.headers) == [("content-type", PROBLEM_CONTENT_TYPE), ("retry-after", "2")]
    assert json.loads(r.body) == p.to_dict()
    typed = Problem(409, title="Conflict on key", type="https://loom.dev/problems/conflict",
                    instance="/v1/maps/m/k")
    assert typed.to_dict()["instance"] == "/v1/maps/m/k"
    # Detail that quotes client input stays one line of ASCII JSON.
    assert Problem(400, detail="bad \x00\n\u00e9").body().isascii()
    with pytest.raises(ValueError, match="error status"):
        Problem(200)
    with pytest.raises(ValueError, match="shadow"):
        Problem(400, extra={"status": 200})


def test_the_http_layer_knows_neither_node_nor_gateway() -> None:
    """loom/http imports only itself and the TLS stream (besides the stdlib, h11 and trio)."""
    import ast

    import loom.http

    here = Path(loom.http.__file__).parent
    allowed = ("loom.http", "loom.security.tlsstream")
    for path in sorted(here.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.startswith("loom"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
