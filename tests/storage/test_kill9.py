"""Real processes: SIGKILL during heavy writes, restart, every acknowledged write present."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from loom.storage import Storage, StorageOptions, admin

from ._writer_child import data_for

CHILD = os.path.join(os.path.dirname(__file__), "_writer_child.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def run_and_kill(data_dir: str, keyring: str, acks_before_kill: int) -> int:
    """Start a writer, SIGKILL it after some acknowledgements; return the last acked index."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, CHILD, data_dir, keyring], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    acked, seen = 0, 0
    deadline = time.monotonic() + 30
    buf = b""
    try:
        while seen < acks_before_kill and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                assert proc.poll() is None, "writer died on its own"
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                kind, value = line.split()
                if kind == b"ack":
                    acked, seen = int(value), seen + 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert seen >= acks_before_kill, "the writer was too slow to acknowledge anything"
    return acked


@pytest.mark.slow
@pytest.mark.parametrize("encrypted", [False, True])
def test_kill9_loses_no_acknowledged_write(tmp_path: object, encrypted: bool) -> None:
    data_dir = os.path.join(str(tmp_path), "data")
    keyring = ""
    if encrypted:
        keyring = os.path.join(str(tmp_path), "keyring.json")
        admin.create_keyring(keyring)
    for round_ in range(3):
        acked = run_and_kill(data_dir, keyring, acks_before_kill=200 + 150 * round_)
        storage, rec = Storage.open(
            data_dir,
            StorageOptions(
                segment_size=256 * 1024,
                max_record_size=64 * 1024,
                snapshot_chunk_size=16 * 1024,
                keyring_path=keyring or None,
            ),
        )
        try:
            got = [e.index for e in rec.entries]
            assert got[:acked] == list(range(1, acked + 1)), f"round {round_}: lost acked entries"
            for e in rec.entries[:acked]:
                assert e.data == data_for(e.index, 256)
            assert rec.hard_state.commit <= len(got)
        finally:
            storage.close()
