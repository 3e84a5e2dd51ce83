"""The dashboard: its grant (CLUSTER_STATUS's), its assets, its data; and the page in headless
Chromium (Debian's chromium and chromium-driver, driven by Selenium) over a real 3-node
cluster of loomd processes, following a leader change. Screenshots are kept and their paths
printed."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.node import dashboard
from loom.node.config import HttpConfig, NodeConfig
from tests.cluster import conftest as cluster_fixtures
from tests.cluster.conftest import ClusterFactory, free_ports
from tests.conftest import PKI, TEST_ACL, NodeFactory
from tests.http_door.conftest import http_as, start_http_node

cluster_factory = cluster_fixtures.cluster_factory  # the fixture, for this module's test
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Guests (a browser without a client certificate, on loopback) may read the cluster's status.
VIEWER_ACL: dict[str, Any] = {
    **TEST_ACL, "guest_roles": ["viewer"],
    "roles": {**TEST_ACL["roles"], "viewer": {"grants": [{"types": ["CLUSTER_STATUS"]}]}},
}


async def test_the_dashboard_needs_the_cluster_status_grant(start_node: NodeFactory,
                                                            pki: PKI) -> None:
    acl = {**TEST_ACL, "principals": {**TEST_ACL["principals"],
                                      "spiffe://loom.dev/client/writer": ["data-writer"]}}
    node = await start_http_node(start_node, acl=acl)
    async with http_as(pki, node, "writer") as writer:  # no CLUSTER_STATUS grant
        r = await writer.call("GET", "/dashboard")
        assert r.status == 403, r.body
        assert json.loads(r.body)["code"] == "FORBIDDEN"
        assert (await writer.call("GET", "/dashboard/data.json")).status == 403
        assert (await writer.call("GET", "/dashboard/static/dashboard.js")).status == 403
    with trio.fail_after(5):  # the refusal is audited (the drainer writes within ~5 ms)
        while not any('"CLUSTER_STATUS"' in x and '"denied"' in x for x in node.sink.lines):
            await trio.sleep(0.01)
    async with http_as(pki, node, "reader") as reader:
        page = await reader.call("GET", "/dashboard")
        assert page.status == 200 and b'src="/dashboard/static/dashboard.js"' in page.body
        csp = page.header_values("content-security-policy")[0].decode()
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        js = await reader.call("GET", "/dashboard/static/dashboard.js")
        assert js.status == 200 and b"textContent" in js.body
        assert js.header_values("content-type")[0].startswith(b"text/javascript")
        for bad in ("/dashboard/static/../config.py", "/dashboard/static/x.js",
                    "/dashboard/nothing"):
            assert (await reader.call("GET", bad)).status == 404, bad
        assert (await reader.call("POST", "/dashboard")).status == 405
        d = json.loads((await reader.call("GET", "/dashboard/data.json")).body)
    assert d["node"] == "n1" and d["leader"] == "n1"
    (me,) = d["members"]
    assert me["role"] == "leader" and me["applied_index"] >= 1 and me["lag"] == 0
    assert d["requests"]["total"] >= 3 and d["requests"]["latency"]["count"] >= 3
    assert d["requests"]["latency"]["buckets"][-1][0] == "+Inf"
    refusals = [x for x in d["refusals"] if x["command"] == "CLUSTER_STATUS"]
    assert len(refusals) == 3  # the writer's three tries, newest last
    assert {x["principal"] for x in refusals} == {"spiffe://loom.dev/client/writer"}
    assert {x["result"] for x in refusals} == {"denied"}
    assert d["audit"]["dropped"] == 0


def test_a_follower_does_not_invent_lag() -> None:
    status = {"node": "n2", "role": "follower", "term": 3, "commit_index": 9,
              "applied_index": 9, "leader": "n1",
              "members": [{"id": i, "voter": True, "reachable": i != "n3", "match_index": None}
                          for i in ("n1", "n2", "n3")]}
    d = dashboard.data(status, {}, {"buckets": [], "sum_s": 0.0, "count": 0}, [])
    roles = {m["id"]: (m["role"], m["lag"], m["term"], m["reachable"]) for m in d["members"]}
    assert roles == {"n1": ("leader", None, None, True), "n2": ("follower", None, 3, True),
                     "n3": ("follower", None, None, False)}


def _browser(tmp: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,800", f"--user-data-dir={tmp / 'profile'}"):
        opts.add_argument(a)
    opts.accept_insecure_certs = True  # the test PKI's CA is not in the browser's store
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _page_state(driver: Any) -> tuple[str, dict[str, str]]:
    """What the page shows, read in one script run: the page redraws its table every second,
    so elements found one call earlier may be gone by the next."""
    leader, roles = driver.execute_script(
        "return [document.getElementById('leader').textContent,"
        " Array.from(document.querySelectorAll('#members tbody tr'))"
        "   .map(r => [r.dataset.node, r.querySelector('td.role').textContent])];")
    return str(leader), {str(n): str(r) for n, r in roles}


async def _until(driver: Any, ok: Any, timeout: float = 30) -> tuple[str, dict[str, str]]:
    state: tuple[str, dict[str, str]] = ("", {})
    with trio.move_on_after(timeout):
        while True:
            state = await trio.to_thread.run_sync(_page_state, driver)
            if ok(*state):
                return state
            await trio.sleep(0.2)
    said = await trio.to_thread.run_sync(
        driver.execute_script, "return document.getElementById('updated').textContent;")
    raise AssertionError(f"the page never showed what was expected: {state} ({said})")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                    reason="chromium and chromium-driver (Debian) are not installed; "
                           "scripts/test.sh installs them")
async def test_the_page_shows_three_nodes_and_follows_a_leader_change(
        cluster_factory: ClusterFactory, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    c = await cluster_factory(3, start=False)
    http_ports = dict(zip(c.ids, free_ports(len(c.ids)), strict=True))
    base = c.config_for

    def config_for(nid: str) -> NodeConfig:
        return replace(base(nid), http=HttpConfig(listen=f"127.0.0.1:{http_ports[nid]}"),
                       require_client_auth=False, acl=VIEWER_ACL)

    c.config_for = config_for  # type: ignore[method-assign]
    await c.start()
    leader = await c.wait_leader()
    watcher = next(n for n in c.ids if n != leader)  # the page is served by a follower
    # Kept after a passing run too (pytest removes a passing test's tmp_path): beside the
    # numbered run directories, or under $LOOM_TEST_ARTEFACTS.
    root = os.environ.get("LOOM_TEST_ARTEFACTS") or tmp_path_factory.getbasetemp().parent
    shots = Path(root) / "artefacts" / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    driver = await trio.to_thread.run_sync(_browser, tmp_path)
    try:
        url = f"https://127.0.0.1:{http_ports[watcher]}/dashboard"
        await trio.to_thread.run_sync(driver.get, url)
        _, roles = await _until(driver, lambda ld, rows: ld == leader and len(rows) == 3)
        assert set(roles) == set(c.ids) and roles[leader] == "leader", roles
        assert roles[watcher] == "follower"
        first = shots / "1-three-nodes.png"
        assert await trio.to_thread.run_sync(driver.save_screenshot, str(first))

        assert await c.stop(leader) == 0  # SIGTERM: the leader hands over, then exits
        new, roles = await _until(
            driver, lambda ld, rows: ld not in ("", leader, "none", "…") and len(rows) == 3
            and rows.get(ld) == "leader")
        assert new in c.ids and new != leader and roles[leader] == "follower", roles
        second = shots / "2-after-leader-change.png"
        assert await trio.to_thread.run_sync(driver.save_screenshot, str(second))
    finally:
        await trio.to_thread.run_sync(driver.quit)
    for shot in (first, second):
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    print(f"dashboard screenshots: {first} {second}")
