// The Loom dashboard: polls /dashboard/data.json once a second and renders it. Every value is
// set with textContent (never parsed as HTML): principals, reasons and addresses are data.
"use strict";

let previous = null;

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "–" : String(value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function seconds(s) {
  if (s === null || !isFinite(s)) return "–";
  return s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms" : s.toFixed(2) + " s";
}

// The upper bound of the bucket holding the 99th percentile of the requests between two polls.
function p99(now, before) {
  const prev = new Map(before ? before.buckets : []);
  const deltas = now.buckets.map(([le, n]) => [le, n - (prev.get(le) || 0)]);
  const total = deltas.length ? deltas[deltas.length - 1][1] : 0;
  if (total <= 0) return null;
  const want = 0.99 * total;
  for (const [le, n] of deltas) {
    if (n >= want) return le === "+Inf" ? Infinity : Number(le);
  }
  return null;
}

function render(d) {
  text("node", d.node);
  text("leader", d.leader || "none");
  text("term", d.term);
  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  for (const m of d.members) {
    const row = document.createElement("tr");
    row.dataset.node = m.id;
    if (m.role === "leader") row.className = "leader";
    cell(row, m.id, "id");
    cell(row, m.role, "role");
    cell(row, m.term, "term");
    cell(row, m.commit_index, "commit");
    cell(row, m.applied_index, "applied");
    cell(row, m.reachable === null ? null : m.reachable ? "yes" : "no",
         m.reachable === false ? "reachable down" : "reachable");
    cell(row, m.match_index, "match");
    cell(row, m.lag, "lag");
    cell(row, m.client_addr, "addr");
    body.appendChild(row);
  }
  const r = d.requests;
  text("denied", r.denied);
  text("errors", r.errors);
  if (previous) {
    const dt = d.time - previous.time;
    const dn = r.latency.count - previous.requests.latency.count;
    text("rate", dt > 0 ? (Math.max(0, r.total - previous.requests.total) / dt).toFixed(1) : "–");
    text("mean", dn > 0 ? seconds((r.latency.sum_s - previous.requests.latency.sum_s) / dn) : "–");
    text("p99", seconds(p99(r.latency, previous.requests.latency)));
  }
  text("audit-written", d.audit.written);
  text("audit-dropped", d.audit.dropped);
  text("audit-queued", d.audit.queued);
  const refusals = document.querySelector("#refusals tbody");
  refusals.replaceChildren();
  for (const x of d.refusals.slice().reverse()) {
    const row = document.createElement("tr");
    cell(row, new Date(x.time_ms).toISOString().replace("T", " ").slice(0, 23));
    cell(row, x.principal);
    cell(row, x.command);
    cell(row, x.result);
    cell(row, x.reason);
    refusals.appendChild(row);
  }
  previous = d;
}

async function poll() {
  const status = document.getElementById("updated");
  try {
    const answer = await fetch("/dashboard/data.json", { cache: "no-store" });
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    render(await answer.json());
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "muted";
  } catch (e) {
    status.textContent = "not updated: " + e.message;
    status.className = "stale";
  }
  setTimeout(poll, 1000);
}

poll();
