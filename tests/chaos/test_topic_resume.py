"""A subscription resumed with from_seq on a node that is behind the topic.

The client docs tell a consumer whose subscription ended to subscribe again with
from_seq=last_seq + 1. When the node it reaches has not applied that far yet, the node
registers the subscriber and then pushes every message it applies, including those below
from_seq: the consumer sees sequence numbers it already had (the chaos topic checker found it
as "seq 59 after 68"). The topic hub now skips anything below what a subscriber may still
receive (loom/node/topics.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import trio

from loom.chaos.cluster import ChaosCluster
from loom.client import open_client


def test_resumed_subscription_never_goes_back(tmp_path: Path) -> None:
    # run without pytest-trio so the assertion is not wrapped in an exception group
    got = trio.run(_resume, tmp_path)
    assert got and got[-1] == 5, got
    assert min(got) >= 4, f"asked from 4, got {got}"


async def _resume(tmp_path: Path) -> list[int]:
    cluster = ChaosCluster(tmp_path, 3, random.Random(7))
    got: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            await cluster.setup(nursery)
            await cluster.wait_converged(60)
            leader = await cluster.leader()
            behind = next(m for m in cluster.members if m != leader)
            for other in cluster.members:
                if other != behind:
                    cluster.cut(behind, other)
            others = [cluster.nodes[m].client_addr for m in cluster.members if m != behind]
            kw = cluster.client_kwargs()
            with trio.fail_after(30):
                async with open_client(others, timeout=10, **kw) as c:
                    for i in range(5):
                        await c.topic_publish("t", f"m{i}".encode())
                async with open_client([cluster.nodes[behind].client_addr], timeout=10,
                                       **kw) as f, f.subscribe("t", from_seq=4) as sub:
                    cluster.heal_network()
                    with trio.move_on_after(15):
                        async for msg in sub:
                            got.append(msg["seq"])
                            if msg["seq"] >= 5:
                                break
            nursery.cancel_scope.cancel()
    finally:
        await cluster.aclose()
    return got
