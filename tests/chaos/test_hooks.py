"""The node's test-only fault hooks: off unless both LOOM_TEST_HOOKS and --enable-test-hooks are
given (loomd refuses to start with the variable alone), bounded, and what they do to syncs."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loom.node.config import ConfigError, to_toml
from loom.node.testhooks import ENV, INJECTED, FaultHooks, HookedFS, from_environ
from tests.conftest import PKI, make_config


def test_off_unless_set_and_enabled() -> None:
    assert from_environ({}, enabled=False) is None
    assert from_environ({}, enabled=True) is None
    with pytest.raises(ConfigError, match="refusing to start"):
        from_environ({ENV: "{}"}, enabled=False)
    hooks = from_environ({ENV: json.dumps({"clock_rate": 1.05, "fsync_delay_ms": 3})},
                         enabled=True)
    assert hooks == FaultHooks(clock_rate=1.05, fsync_delay_ms=3)


@pytest.mark.parametrize("raw", ['{"clock_rate": 50}', '{"bogus": 1}', "[1]", "not json",
                                 '{"fsync_fail_after": -1}', '{"clock_offset_ms": "x"}',
                                 '{"fsync_fail_file": 3}'])
def test_bad_hooks_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError):
        from_environ({ENV: raw}, enabled=True)


def test_syncs_are_delayed_then_fail(tmp_path: Path) -> None:
    fs = HookedFS(FaultHooks(fsync_delay_ms=20, fsync_fail_after=3))
    f = fs.open(str(tmp_path / "f"), create=True)
    try:
        f.pwrite(0, b"x")
        t0 = time.monotonic()
        f.sync()
        f.fullsync()
        assert time.monotonic() - t0 >= 0.04
        with pytest.raises(OSError) as e:
            f.sync()
        assert e.value.errno == errno.EIO
    finally:
        f.close()


def test_syncs_fail_once_the_arm_file_exists(tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    fs = HookedFS(FaultHooks(fsync_fail_file=str(armed)))
    f = fs.open(str(tmp_path / "f"), create=True)
    try:
        f.pwrite(0, b"x")
        f.sync()
        f.fullsync()
        armed.touch()
        with pytest.raises(OSError) as e:
            f.sync()
        assert e.value.errno == errno.EIO and INJECTED in str(e.value)
        with pytest.raises(OSError):
            f.fullsync()
    finally:
        f.close()


@pytest.mark.timeout(60)
def test_loomd_refuses_the_variable_without_the_flag(pki: PKI, tmp_path: Path) -> None:
    cfg = tmp_path / "n1.toml"
    cfg.write_text(to_toml(make_config(pki, tmp_path)), encoding="utf-8")
    env = {**os.environ, ENV: '{"fsync_delay_ms": 1}'}
    p = subprocess.run([sys.executable, "-m", "loom.cli.loomd", "--config", str(cfg)],
                       env=env, capture_output=True, text=True, timeout=50, check=False)
    assert p.returncode == 2, p.stderr
    assert "refusing to start" in p.stderr and "--enable-test-hooks" in p.stderr


def test_power_loss_keeps_unsynced_bytes_in_the_process(tmp_path: Path) -> None:
    """What is not synced is seen by the process (every open, a renamed file too) and is
    not on disk: a SIGKILL (here: a new HookedFS on the same files) loses exactly that."""
    fs = HookedFS(FaultHooks(power_loss=True))
    path = str(tmp_path / "f")
    f = fs.open(path, create=True)
    f.pwrite(0, b"hello world")
    f.sync()
    f.pwrite(6, b"WORLD, again")
    f.truncate(14)
    assert f.pread(0, 100) == b"hello WORLD, a" and f.size() == 14
    assert fs.open(path).pread(0, 100) == b"hello WORLD, a"  # a second open sees it too
    fs.rename(path, path + ".2")
    assert fs.open(path + ".2").pread(3, 5) == b"lo WO"
    assert HookedFS(FaultHooks()).open(path + ".2").pread(0, 100) == b"hello world"  # on disk
    f.fullsync()
    assert HookedFS(FaultHooks()).open(path + ".2").pread(0, 100) == b"hello WORLD, a"
    f.truncate(2)
    f.pwrite(4, b"!")  # a hole after a truncation reads as zeros
    assert f.pread(0, 10) == b"he\0\0!"
    f.close()


def test_the_ack_before_fsync_mutant_makes_a_sync_durable_one_sync_late(tmp_path: Path) -> None:
    fs = HookedFS(FaultHooks(ack_before_fsync=True))
    path = str(tmp_path / "wal")
    f = fs.open(path, create=True)
    on_disk = HookedFS(FaultHooks()).open(path)
    f.pwrite(0, b"first")
    f.sync()  # "durable", acknowledged, but not on disk
    assert on_disk.pread(0, 100) == b"" and f.pread(0, 100) == b"first"
    f.pwrite(5, b"second")
    f.sync()
    assert on_disk.pread(0, 100) == b"first" and f.pread(0, 100) == b"firstsecond"
    f.fullsync()  # a full fsync (new segments, hard state, snapshots) still flushes all
    assert on_disk.pread(0, 100) == b"firstsecond"
    f.close()
    on_disk.close()


def test_mutants_and_power_loss_are_flags() -> None:
    hooks = from_environ({ENV: json.dumps({"power_loss": True, "skip_identity_pin": True})},
                         enabled=True)
    assert hooks == FaultHooks(power_loss=True, skip_identity_pin=True)
    with pytest.raises(ConfigError):
        from_environ({ENV: '{"forget_removed": 1}'}, enabled=True)
