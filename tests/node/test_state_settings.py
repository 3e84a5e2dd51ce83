"""The [state] table reaches the replicated state machine: cache maps evict, limits refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.node.config import ConfigError, StateSettings, load
from tests.conftest import PKI, NodeFactory, connect


async def test_cache_map_evicts_least_recently_written(start_node: NodeFactory, pki: PKI) -> None:
    node = await start_node(state=StateSettings(map_caches={"cache*": 3}))
    c = await connect(node, pki)
    for i in range(5):
        assert (await c.request("MAP_PUT", name="cache-a", key=f"k{i}", value=b"v"))["s"] == 0
    assert (await c.request("MAP_SIZE", name="cache-a"))["r"] == 3
    assert (await c.request("MAP_CONTAINS", name="cache-a", key="k0"))["r"] is False
    assert (await c.request("MAP_CONTAINS", name="cache-a", key="k4"))["r"] is True
    for i in range(5):  # a map whose name does not match is not a cache
        await c.request("MAP_PUT", name="plain", key=f"k{i}", value=b"v")
    assert (await c.request("MAP_SIZE", name="plain"))["r"] == 5
    await c.aclose()


async def test_value_limit_is_enforced(start_node: NodeFactory, pki: PKI) -> None:
    node = await start_node(state=StateSettings(max_value_bytes=16))
    c = await connect(node, pki)
    r = await c.request("MAP_PUT", name="m", key="k", value=b"x" * 17)
    assert r["e"]["code"] == "TOO_LARGE"
    await c.aclose()


def test_state_table_is_parsed_and_checked(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text('[state]\nmax_value_bytes = 1024\n[state.map_caches]\n"sess*" = 100\n')
    cfg = load(p)
    assert cfg.state.map_caches == {"sess*": 100} and cfg.state.max_value_bytes == 1024
    p.write_text('[state.map_caches]\n"sess*" = 0\n')
    with pytest.raises(ConfigError, match=r"state\.map_caches"):
        load(p)
