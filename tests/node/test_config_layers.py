"""The configuration makes every layer's limit object (one place), `[peer]` included."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.node.config import ConfigError, PeerLimits, load, to_toml


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "loomd.toml"
    path.write_text(text, encoding="utf-8")
    return load(path)


def test_each_layer_gets_its_limits_from_one_config(tmp_path: Path) -> None:
    cfg = load(None, {"node_id": "n7"})
    path = tmp_path / "loomd.toml"
    text = to_toml(cfg).replace("[raft]\n", "[raft]\nlease_reads = true\n", 1)
    text = text.replace("lease_reads = false\n", "", 1)
    text = text.replace("[peer]\n", "[peer]\nqueue_len = 8\n", 1).replace(
        "queue_len = 1024\n", "", 1)
    text += '\n[state.map_caches]\n"cache:*" = 100\n'
    path.write_text(text, encoding="utf-8")
    cfg = load(path, {"storage.keyring": str(tmp_path / "ring.json")})

    core = cfg.to_raft_config()
    assert (core.node_id, core.lease_reads) == ("n7", True)
    assert core.fast_failover is cfg.raft.fast_failover is True
    off = load(None, {"node_id": "n7", "raft.fast_failover": False}).to_raft_config()
    assert off.fast_failover is False
    assert core.election_tick_min == cfg.raft.election_ticks_min
    assert (core.trailing_entries, core.trailing_bytes) == (
        cfg.raft.trailing_entries, cfg.raft.trailing_bytes)
    assert cfg.to_state_limits().map_caches == (("cache:*", 100),)
    opts = cfg.to_storage_options()
    assert opts.keyring_path == str(tmp_path / "ring.json")
    assert opts.trailing_entries == cfg.raft.trailing_entries
    assert cfg.to_peer_limits() == PeerLimits(queue_len=8)
    assert load(path, {"storage.keyring": str(tmp_path / "ring.json")}) == cfg  # round trip


@pytest.mark.parametrize("line,key", [
    ("queue_len = 0", "peer.queue_len"),
    ("keepalive_s = \"1s\"", "peer.keepalive_s"),
    ("no_such_limit = 1", "peer.no_such_limit"),
    ("max_frame = 65536", "peer.max_frame"),
    ("backoff_min_s = 5.0", "peer.backoff_min_s"),
    ("inline_sync_entries = 65", "raft.inline_sync_entries"),
    ("inline_sync_entries = -1", "raft.inline_sync_entries"),
    ("inline_sync_below_ms = 0", "raft.inline_sync_below_ms"),
    ("fast_failover = 1", "raft.fast_failover"),
])
def test_bad_settings_name_their_key(tmp_path: Path, line: str, key: str) -> None:
    section = key.partition(".")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _load(tmp_path, f"node_id = \"n1\"\n[{section}]\n{line}\n")
