"""A real in-process node with its HTTP listener on 127.0.0.1 (port 0), real TLS 1.3 and the
development PKI, and the project's real HTTP client holding a chosen client certificate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio

from loom.http import ClientResponse, HTTPClient
from loom.node.config import HttpConfig
from loom.node.server import Node
from loom.security.tls import client_context
from tests.conftest import PKI, NodeFactory


class Http:
    """One client identity (a certificate name, or None for no certificate) on one node."""

    def __init__(self, client: HTTPClient, base: str) -> None:
        self.client = client
        self.base = base

    async def call(self, method: str, path: str, *, body: bytes = b"",
                   headers: list[tuple[str, str]] | None = None,
                   json_body: Any = None) -> ClientResponse:
        h = list(headers or [])
        if json_body is not None:
            body = json.dumps(json_body).encode()
            h.append(("content-type", "application/json"))
        with trio.fail_after(20):
            return await self.client.request(method, self.base + path, headers=h, body=body)

    async def op(self, type_name: str, body: dict[str, Any] | None = None,
                 headers: list[tuple[str, str]] | None = None) -> ClientResponse:
        return await self.call("POST", f"/v1/call/{type_name}", json_body=body or {},
                               headers=headers)


def doc(r: ClientResponse) -> Any:
    return json.loads(r.body)


def header(r: ClientResponse, name: str) -> str | None:
    v = r.header_values(name)
    return v[0].decode() if v else None


HttpFactory = Callable[..., Awaitable[Http]]


async def start_http_node(start_node: NodeFactory, **kw: Any) -> Node:
    http = kw.pop("http", HttpConfig())
    node: Node = await start_node(http=replace(http, listen="127.0.0.1:0"), **kw)
    return node


class HasCA(Protocol):
    @property
    def ca(self) -> Path: ...
    def pair(self, name: str) -> tuple[Path, Path]: ...


@asynccontextmanager
async def http_as(pki: HasCA, node: Node, name: str | None) -> AsyncIterator[Http]:
    ctx = (client_context(pki.ca) if name is None
           else client_context(pki.ca, *pki.pair(name)))
    assert node.http is not None
    async with HTTPClient(ctx) as client:
        yield Http(client, f"https://127.0.0.1:{node.http.port}")


@pytest.fixture
async def hnode(start_node: NodeFactory) -> Node:
    return await start_http_node(start_node)


@pytest.fixture
async def as_(pki: PKI, hnode: Node) -> AsyncIterator[Callable[[str | None], Awaitable[Http]]]:
    """`admin = await as_("admin")`: a client of `hnode` with that certificate."""
    stack: list[Any] = []

    async def make(name: str | None) -> Http:
        cm = http_as(pki, hnode, name)
        stack.append(cm)
        return await cm.__aenter__()

    yield make
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)
