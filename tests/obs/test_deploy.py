"""deploy/prometheus and deploy/grafana: the alert rules pass `promtool check rules`, the example
scrape config passes `promtool check config`, and every metric the rules and the dashboard
name is one loom/obs defines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loom.obs.gateway import GATEWAY_READINGS, GatewayMetrics
from loom.obs.metrics import exported_names
from tests.conftest import PKI

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "loom-rules.yml"
SCRAPE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "loom.json"
# A metric name in PromQL: loom_..., not followed by "(" (a function) or a label's "=".
NAME = re.compile(r"\b(loom_[a-z0-9_]+)\b(?!\s*[=(])")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian's prometheus package; scripts/test.sh "
                    "installs it when it can)")
    return path


def _exprs(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from _exprs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _exprs(v)


def _names(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in NAME.findall(e)}


def test_promtool_checks_the_alert_rules() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(RULES)], check=False, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 8 rules found" in r.stdout


def test_promtool_checks_the_scrape_config(pki: PKI, tmp_path: Path) -> None:
    """The example, with its example paths pointed at real files."""
    cert, key = pki.pair("admin")
    text = (SCRAPE.read_text()
            .replace("/etc/prometheus/loom-rules.yml", str(RULES))
            .replace("/etc/loom/tls/ca.pem", str(pki.ca))
            .replace("/etc/prometheus/loom/prometheus.pem", str(cert))
            .replace("/etc/prometheus/loom/prometheus.key", str(key)))
    (tmp_path / "prometheus.yml").write_text(text)
    r = subprocess.run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                       check=False, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cert_file" in text and "key_file" in text  # scraped with a client certificate


def test_rules_reference_only_metrics_that_exist() -> None:
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    names = _names(exprs)
    assert names, "no metric found in the rules: the pattern is wrong"
    assert names <= exported_names(), names - exported_names()
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"LoomNoLeader", "LoomLeaderFlapping", "LoomApplyLag", "LoomSlowFsync",
            "LoomAuditDrops", "LoomHandshakeFailureSpike", "LoomDiskFilling"} <= alerts


def test_dashboard_panels_use_only_metrics_that_exist() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(dash))
    assert len(exprs) >= 20
    names = _names(exprs)
    known = exported_names() | exported_names(GatewayMetrics().registry, GATEWAY_READINGS)
    assert names <= known, names - known
    # The dashboard covers each area of the node's metrics.
    for prefix in ("loom_raft_", "loom_peer_", "loom_audit_", "loom_tls_", "loom_state_",
                   "loom_wal_", "loom_requests_total", "loom_disk_"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_the_pattern_catches_a_metric_that_does_not_exist() -> None:
    names = _names(['rate(loom_requests_total{job="x"}[1m]) + loom_no_such_thing'])
    assert names == {"loom_requests_total", "loom_no_such_thing"}
    assert not names <= exported_names()
