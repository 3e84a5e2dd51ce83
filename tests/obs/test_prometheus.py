"""A real Prometheus (Debian's package) scrapes a real 3-process cluster's HTTP doors with a
client certificate, loads deploy/'s alert rules, and the values come back through its HTTP API.

Bounded: scrape and evaluation every second, the whole test well under 60 s. Prometheus
listens on a free loopback port with its data in the test's tmp directory, and is stopped by
the test (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster.conftest import free_ports
from tests.conftest import PKI
from tests.doorcluster import HttpCluster
from tests.obs.test_deploy import RULES

pytestmark = pytest.mark.timeout(90)


def _prometheus() -> str:
    path = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if path is None:
        pytest.skip("prometheus not installed (Debian's prometheus package; scripts/test.sh "
                    "installs it with apt-get when it can)")
    return path


def _config(c: HttpCluster, pki: PKI) -> str:
    cert, key = pki.pair("admin")  # the admin role grants METRICS_GET
    targets = ", ".join(f'"127.0.0.1:{c.http_ports[n]}"' for n in c.ids)
    return f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}}
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: loom
    scheme: https
    tls_config: {{ca_file: "{pki.ca}", cert_file: "{cert}", key_file: "{key}"}}
    static_configs: [{{targets: [{targets}]}}]
"""


class PromAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=5) as r:
            return r.read()

    async def get_json(self, path: str) -> Any:
        return json.loads(await trio.to_thread.run_sync(self._get, path))

    async def query(self, expr: str) -> list[dict[str, Any]]:
        doc = await self.get_json("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert doc["status"] == "success", doc
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    async def ready(self) -> bool:
        try:
            await trio.to_thread.run_sync(self._get, "/-/ready")
            return True
        except OSError:
            return False


async def _until(what: str, check: Any, timeout: float) -> Any:
    """Poll `check()` (async) until it returns a truthy value, bounded."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            last = await check()
            if last:
                return last
            await trio.sleep(0.5)
    raise AssertionError(f"{what}: not seen within {timeout} s (last: {last!r})")


async def test_prometheus_scrapes_the_cluster_with_a_client_certificate(
        hcluster: HttpCluster, pki: PKI, tmp_path: Path) -> None:
    binary = _prometheus()
    c = hcluster
    leader = await c.wait_leader()
    port = free_ports(1)[0]
    (tmp_path / "prometheus.yml").write_text(_config(c, pki))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await trio.lowlevel.open_process(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1h"], stdout=log, stderr=log)
    api = PromAPI(port)
    try:
        await _until("prometheus ready", api.ready, 20)
        conn = await c.connect(leader)
        for i in range(5):
            assert (await conn.request("MAP_PUT", name="m", key=f"k{i}", value=b"v"))["s"] == 0

        async def all_up() -> bool:
            up = await api.query('up{job="loom"}')
            return len(up) == 3 and all(r["value"][1] == "1" for r in up)

        await _until("three targets up", all_up, 15)

        async def writes_counted() -> float:
            r = await api.query('sum(loom_requests_total{type="MAP_PUT",result="ok"})')
            return float(r[0]["value"][1]) if r and float(r[0]["value"][1]) >= 5 else 0.0

        assert await _until("the writes counted", writes_counted, 15) == 5
        terms = await api.query("loom_raft_term")
        assert len(terms) == 3
        assert len({t["value"][1] for t in terms}) == 1 and int(terms[0]["value"][1]) >= 1
        leaders = await api.query('loom_raft_role{role="leader"} == 1')
        assert [r["metric"]["instance"] for r in leaders] == [
            f"127.0.0.1:{c.http_ports[leader]}"]
        assert {r["metric"]["instance"] for r in await api.query("loom_raft_has_leader == 1")
                } == {f"127.0.0.1:{c.http_ports[n]}" for n in c.ids}
        fsyncs = await api.query("sum(loom_raft_fsync_duration_seconds_count)")
        assert float(fsyncs[0]["value"][1]) >= 5 * 3  # every node synced every write
        # The deploy/ rules are loaded and evaluated; a healthy cluster fires none.
        rules = await api.get_json("/api/v1/rules")
        loaded = {r["name"]: r for g in rules["data"]["groups"] for r in g["rules"]}
        assert {"LoomNoLeader", "LoomAuditDrops", "LoomHandshakeFailureSpike"} <= set(loaded)
        assert all(r["health"] in ("ok", "unknown") for r in loaded.values()), loaded
        assert loaded["LoomNoLeader"]["state"] == "inactive"
    finally:
        proc.terminate()
        with trio.move_on_after(10) as cs:
            cs.shield = True
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        log.close()
