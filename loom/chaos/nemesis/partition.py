"""Partitions made by the cluster's network (namespaces or proxies), plus delay and loss.

Shapes (over the current members): isolate the leader; halves (a minority and a majority);
a majority ring (each node still sees a majority, a different one: 5 nodes and more); a bridge
(two halves that only one node connects); delay (every link slowed by 20-200 ms); loss (2-10 %:
packets in the namespaces, chunks that reset their connection with the proxies). Only the shapes
the network supports are chosen (a kernel without sch_netem has no delay or loss).
With the proxies, a member added by a membership change is reached on its own port (its address
is replicated), so partitions cut the links between the other members only; in namespaces every
node has one address and partitions reach added members too.
"""

from __future__ import annotations

from loom.chaos.nemesis import Nemesis


class PartitionNemesis(Nemesis):
    name = "partition"
    on_processes = False

    async def inject(self) -> str | None:
        c = self.cluster
        ids = list(c.members)
        self.rng.shuffle(ids)
        shapes = ["isolate-leader", "halves", "bridge",
                  *(s for s in ("delay", "loss") if s in c.net.shapes)]
        if len(ids) >= 5:
            shapes.append("majority-ring")
        shape = self.rng.choice(shapes)
        if shape == "isolate-leader":
            leader = await c.leader()
            if leader is None:
                return None
            for o in ids:
                if o != leader:
                    c.cut(leader, o)
        elif shape == "halves":
            small = ids[: len(ids) // 2]
            for a in small:
                for b in ids[len(ids) // 2:]:
                    c.cut(a, b)
        elif shape == "bridge":
            bridge, rest = ids[0], ids[1:]
            left, right = rest[: len(rest) // 2], rest[len(rest) // 2:]
            for a in left:
                for b in right:
                    c.cut(a, b)
            del bridge  # linked to both sides: nothing to cut
        elif shape == "majority-ring":
            n = len(ids)
            for i, a in enumerate(ids):
                for j in range(i + 1, n):
                    if min(j - i, n - (j - i)) > 1:  # only ring neighbours stay linked
                        c.cut(a, ids[j])
        elif shape == "delay":
            c.net.set_delay(self.rng.uniform(0.02, 0.2))
        else:
            c.net.set_loss(self.rng.uniform(0.02, 0.1))
        return f"partition-{shape}"

    async def heal(self) -> None:
        self.cluster.heal_network()
