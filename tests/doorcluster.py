"""A real 3-process cluster with the HTTP door on every node (or all but some): one fixture,
`hcluster`, for every test that drives a cluster over HTTP, and `audited_hcluster`, the same
with each node's audit records in a file the test reads. Registered in tests/conftest.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.node.config import AuditConfig, HttpConfig, NodeConfig
from tests.cluster.conftest import FAST_RAFT, Cluster, free_ports
from tests.conftest import PKI

__all__ = ["AuditedCluster", "HttpCluster", "audited_hcluster", "hcluster"]

NODES = ("n1", "n2", "n3")


class HttpCluster(Cluster):
    """A `Cluster` whose nodes also serve HTTP, each on its own fixed free port."""

    def __init__(self, *args: Any, without_http: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.http_ports = dict(zip(self.ids, free_ports(len(self.ids)), strict=True))
        self.without_http = without_http

    def config_for(self, nid: str) -> NodeConfig:
        cfg = super().config_for(nid)
        if nid in self.without_http:
            return cfg
        return replace(cfg, http=HttpConfig(listen=f"127.0.0.1:{self.http_ports[nid]}"))

    def url(self, nid: str, path: str) -> str:
        return f"https://127.0.0.1:{self.http_ports[nid]}{path}"


class AuditedCluster(HttpCluster):
    """An `HttpCluster` whose nodes write their audit records to a file each."""

    def config_for(self, nid: str) -> NodeConfig:
        cfg = super().config_for(nid)
        return replace(cfg, audit=AuditConfig(sink="file", path=self.audit(nid)))

    def audit(self, nid: str) -> Path:
        return self.nodes[nid].dir / "audit.jsonl"

    def records(self) -> list[dict[str, Any]]:
        out = []
        for nid in self.ids:
            p = self.audit(nid)
            if p.exists():
                out += [json.loads(line) for line in p.read_text().splitlines() if line]
        return out


async def _running(c: HttpCluster) -> AsyncIterator[Any]:
    try:
        await c.start()
        yield c
    finally:
        await c.aclose()
        c.dump_logs()


@pytest.fixture
async def hcluster(pki: PKI, tmp_path: Path, nursery: trio.Nursery
                   ) -> AsyncIterator[HttpCluster]:
    async for c in _running(HttpCluster(pki, tmp_path / "cluster", nursery, NODES, FAST_RAFT,
                                        False)):
        yield c


@pytest.fixture
async def audited_hcluster(pki: PKI, tmp_path: Path, nursery: trio.Nursery
                           ) -> AsyncIterator[AuditedCluster]:
    async for c in _running(AuditedCluster(pki, tmp_path / "cluster", nursery, NODES,
                                           FAST_RAFT, False)):
        yield c
