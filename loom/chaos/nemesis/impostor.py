"""An impostor on the peer plane: a member's valid certificate, another id (A4).

The harness dials a live member (the target) as a peer, with the certificate of another live
member (the wearer: a real, CA-signed node certificate, so TLS, the NODE identity check,
membership and PEER_HELLO all pass), and sends Raft heartbeats that claim to come from a third
id, in a term `FORGED_TERMS` above the target's. The peer plane must drop them (a message's
sender is pinned to its certificate's node id, loom/node/peer.py): dropped, they are counted
as `rejected` for the wearer and never reach Raft.

What must hold (each breach an anomaly of the run): no member ever reaches the forged term (a
stepped forged heartbeat makes the target follow the impostor in that term, and its newer
term then spreads). Outcomes: `impostor-rejected` (the drop was seen), `impostor-undelivered`.
"""

from __future__ import annotations

import random

import trio

from loom.chaos.cluster import CLUSTER_NAME, ChaosCluster
from loom.chaos.nemesis import Nemesis
from loom.node.config import PeerLimits
from loom.node.peerlink import Link, PeerStats
from loom.raft.messages import Heartbeat
from loom.security.tls import peer_client_context

FORGED_TERMS = 100_000  # far above any term a run reaches by itself
DELIVER_S = 10.0  # a target restarted meanwhile must still see one


class ImpostorNemesis(Nemesis):
    name = "impostor"
    on_processes = False

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.forged: list[tuple[int, str]] = []  # (forged term, what was forged)

    async def inject(self) -> str | None:
        c = self.cluster
        live = c.live()
        if len(live) < 2:
            return None
        target, wearer = self.rng.sample(live, 2)
        claimed = self.rng.choice([n for n in c.nodes if n not in (target, wearer)])
        st = await c.status(target)
        stats = await c.node_stats(target)
        if st is None or stats is None:
            return None
        term = int(st["term"]) + FORGED_TERMS
        what = (f"heartbeats to {target} in term {term} claiming to be {claimed}, over "
                f"{wearer}'s certificate")
        self.forged.append((term, what))
        rejected = _rejected(stats, wearer)
        certs = c.certs
        link = Link(peer_id=target, addr=c.peer_addr(wearer, target), node_id=wearer,
                    cluster=CLUSTER_NAME, client_addr="",
                    client_ctx=peer_client_context(certs / "ca.pem", certs / f"{wearer}.pem",
                                                   certs / f"{wearer}.key"),
                    trust_domain="loom.dev", limits=PeerLimits(), stats=PeerStats())
        outcome = "impostor-undelivered"
        starts = c.nodes[target].starts
        async with trio.open_nursery() as n:
            n.start_soon(link.run)
            with trio.move_on_after(DELIVER_S):
                for seq in range(1, 1000):
                    link.enqueue(Heartbeat(to=target, frm=claimed, term=term, commit=0, seq=seq))
                    await trio.sleep(0.2)
                    now = await c.node_stats(target)
                    if c.nodes[target].starts != starts:
                        # restarted meanwhile (another nemesis, e.g. a power cut): the new
                        # process counts from 0, and the link redials it
                        starts, rejected = c.nodes[target].starts, 0
                        continue
                    if now is not None and _rejected(now, wearer) > rejected:
                        outcome = "impostor-rejected"
                        break
                    if await self._check():
                        break
            link.stop()
        self.outcomes[outcome] += 1
        return "impostor-heartbeat"

    async def _check(self) -> bool:
        """Record an anomaly if a member reached a forged term; whether one did."""
        if not self.forged:
            return False
        sts = await self.cluster.statuses(self.cluster.live())
        for term, what in self.forged:
            hit = {m: s.get("term") for m, s in sts.items() if int(s.get("term", 0)) >= term}
            if hit:
                self.anomalies.append(f"forged {what} were stepped: members {hit} reached the "
                                      f"forged term {term}")
                self.forged.clear()
                return True
        return False

    async def heal(self) -> None:
        await self._check()


def _rejected(stats: dict[str, object], wearer: str) -> int:
    peer = stats.get("peer")
    peers = peer.get("peers", {}) if isinstance(peer, dict) else {}
    return int(peers.get(wearer, {}).get("rejected", 0))
