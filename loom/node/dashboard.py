"""The operator's dashboard, served by the HTTP door under `/dashboard`.

    GET /dashboard                the page (loom/node/static/dashboard.html)
    GET /dashboard/static/NAME    its script and style sheet (package data, no CDN)
    GET /dashboard/data.json      what the page shows, read from this node once a second

Authorization: every one of these is a CLUSTER_STATUS request as far as the ACL and the audit
log are concerned. The door builds the CLUSTER_STATUS message for the caller and runs it
through `Dispatcher.start` like any other request, and serves the dashboard only when that
answer is OK; a caller without the grant gets CLUSTER_STATUS's refusal (403, audited). So the
grant is the one operators already give for `loomctl cluster status`, and there is no second
authorization path (node/http.py's first invariant).

What data.json holds is this node's view: its own role, term, commit and applied index; the
members with reachability (peer links) and, on the leader, their match index and lag (the
leader's commit index minus the member's match index; a follower does not know them, and says
so with null); the leader; cumulative request counts and the latency histogram summed over
types (the page turns successive polls into rates and a p99); audit records written, queued and
dropped; and the most recent refusals (denied and unauthenticated requests, a bounded ring the
dispatcher fills).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from importlib import resources
from typing import Any

from loom.http import Response
from loom.node.http_codec import json_response

PREFIX = "/dashboard"
DATA = PREFIX + "/data.json"
STATIC = PREFIX + "/static/"

# name -> media type; nothing else under static/ is served (no path from the request is ever
# joined to a file name).
_ASSETS = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page loads only its own script and style; a framing site gets nothing.
_SECURITY = [
    ("content-security-policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self'; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
]
_cache: dict[str, bytes] = {}


def handles(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _asset(name: str) -> bytes:
    body = _cache.get(name)
    if body is None:
        body = _cache[name] = resources.files("loom.node").joinpath("static", name).read_bytes()
    return body


def latency_summary(families: Iterable[Any], name: str) -> dict[str, Any]:
    """A histogram family's buckets, sum and count, summed over its label sets (cumulative)."""
    buckets: dict[str, float] = {}
    total = count = 0.0
    for fam in families:
        if fam.name != name:
            continue
        for s in fam.samples:
            if s.name == name + "_bucket":
                buckets[s.labels["le"]] = buckets.get(s.labels["le"], 0.0) + s.value
            elif s.name == name + "_sum":
                total += s.value
            elif s.name == name + "_count":
                count += s.value
    return {"buckets": sorted(buckets.items(), key=lambda kv: float(kv[0])),
            "sum_s": total, "count": count}


def data(status: dict[str, Any], stats: dict[str, Any], latency: dict[str, Any],
         refusals: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The document the page polls (pure: built from what the node reports)."""
    leader_view = status["role"] == "leader"
    members = []
    for m in status["members"]:
        own = m["id"] == status["node"]
        match = m.get("match_index")
        members.append({
            "id": m["id"], "voter": m["voter"], "client_addr": m.get("client_addr"),
            "role": (status["role"] if own else
                     "leader" if m["id"] == status["leader"] else
                     "follower" if m["voter"] else "learner"),
            "term": status["term"] if own else None,
            "commit_index": status["commit_index"] if own else None,
            "applied_index": status["applied_index"] if own else None,
            "reachable": m.get("reachable"),
            "match_index": match,
            "lag": status["commit_index"] - match if leader_view and match is not None
            else None,
        })
    audit = stats.get("audit", {})
    return {
        "time": time.time(), "node": status["node"], "leader": status["leader"],
        "term": status["term"], "members": members,
        "requests": {"total": stats.get("requests", 0), "denied": stats.get("denied", 0),
                     "errors": stats.get("errors", 0), "latency": latency},
        "audit": {"written": audit.get("written", 0), "dropped": audit.get("dropped", 0),
                  "queued": audit.get("queued_data", 0) + audit.get("queued_priority", 0)},
        "refusals": list(refusals),
    }


def response(path: str, document: dict[str, Any] | None) -> Response:
    """The answer for an authorized dashboard request. `document`: data.json's (only built
    when that is the path asked)."""
    if path in (PREFIX, PREFIX + "/"):
        name = "dashboard.html"
    elif path == DATA:
        assert document is not None
        r = json_response(200, document)
        return Response(200, [*r.headers, *_SECURITY], r.body)
    elif path.startswith(STATIC) and path[len(STATIC):] in _ASSETS:
        name = path[len(STATIC):]
    else:
        return Response(404, [("content-type", "text/plain; charset=utf-8"), *_SECURITY],
                        b"no such dashboard resource\n")
    return Response(200, [("content-type", _ASSETS[name]), *_SECURITY], _asset(name))
