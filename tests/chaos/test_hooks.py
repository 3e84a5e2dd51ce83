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
from loom.node.testhooks import ENV, FaultHooks, HookedFS, from_environ
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
                                 '{"fsync_fail_after": -1}', '{"clock_offset_ms": "x"}'])
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


@pytest.mark.timeout(60)
def test_loomd_refuses_the_variable_without_the_flag(pki: PKI, tmp_path: Path) -> None:
    cfg = tmp_path / "n1.toml"
    cfg.write_text(to_toml(make_config(pki, tmp_path)), encoding="utf-8")
    env = {**os.environ, ENV: '{"fsync_delay_ms": 1}'}
    p = subprocess.run([sys.executable, "-m", "loom.cli.loomd", "--config", str(cfg)],
                       env=env, capture_output=True, text=True, timeout=50, check=False)
    assert p.returncode == 2, p.stderr
    assert "refusing to start" in p.stderr and "--enable-test-hooks" in p.stderr
