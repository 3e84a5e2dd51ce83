"""Data structures under faults on real processes (catalogue group I): a queue pushed and polled
with exactly-once retries across a leader SIGKILL (I4), lock fencing tokens against an expired
holder and across a leader change (I6), and a follower removed while another peer link is cut,
under a steady write load (I7)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio

from tests.cluster.conftest import INDETERMINATE, OK, Client, Cluster, ClusterFactory

pytestmark = pytest.mark.slow

NOT_FOUND = 4


class SeqClient:
    """A Client with its own client_id whose writes carry increasing seqs; a write whose outcome
    is unknown is retried with the same seq (exactly-once), at most `tries` times."""

    def __init__(self, cluster: Cluster, client_id: str) -> None:
        self.c = cluster.client(client_id=client_id)
        self.seq = 0
        self.unknown_retries = 0

    async def write(self, op: str, *, tries: int = 4, deadline_s: float = 20.0,
                    **body: Any) -> dict[str, Any]:
        """The first determinate answer, or the last indeterminate one after `tries`."""
        self.seq += 1
        r: dict[str, Any] = {}
        for attempt in range(tries):
            if attempt:
                self.unknown_retries += 1
            r = await self.c.call(op, seq=self.seq, deadline_s=deadline_s, **body)
            if r["s"] not in INDETERMINATE:
                return r
        return r

    async def settled(self, op: str, **body: Any) -> dict[str, Any]:
        """Retried (same seq) until an answer that is not indeterminate."""
        self.seq += 1
        return await self.c.call(op, seq=self.seq, retry_unknown=True, deadline_s=30.0, **body)


# -- I4 rel-queue-no-loss-no-dup -----------------------------------------------------------------

QUEUE = "jobs"
PRODUCERS, PER_PRODUCER, CONSUMERS = 2, 150, 2


async def test_queue_every_acked_push_polled_exactly_once_across_leader_kill(
        cluster: Cluster) -> None:
    acked: set[bytes] = set()
    unknown: set[bytes] = set()
    polled: list[tuple[str, int, bytes]] = []  # (consumer, seq, item)
    pushes_done = [0]
    producers_left = [PRODUCERS]
    producers_done = trio.Event()
    fault: dict[str, Any] = {}
    clients: list[SeqClient] = []

    async def producer(p: int) -> None:
        sc = SeqClient(cluster, f"producer-{p}")
        clients.append(sc)
        for i in range(PER_PRODUCER):
            item = f"p{p}-{i:04d}".encode()
            r = await sc.write("QUEUE_PUSH", name=QUEUE, value=item)
            if r["s"] == OK:
                acked.add(item)
            elif r["s"] in INDETERMINATE:
                unknown.add(item)
            else:
                raise AssertionError(f"QUEUE_PUSH {item!r}: {r}")
            pushes_done[0] += 1
            await trio.sleep(0.01)  # a steady rate, so the kill and the restart land mid-run
        producers_left[0] -= 1
        if producers_left[0] == 0:
            producers_done.set()

    async def consumer(name: str) -> None:
        sc = SeqClient(cluster, name)
        clients.append(sc)
        empty_after_done = 0
        for _ in range(1000):
            # A poll takes an item: its retries carry the same seq, so a lost answer gives back
            # the item it took rather than taking another.
            r = await sc.settled("QUEUE_POLL", name=QUEUE, timeout_ms=150)
            assert r["s"] == OK, f"{name} QUEUE_POLL seq {sc.seq}: {r}"
            if r["r"] is not None:
                polled.append((name, sc.seq, r["r"]))
                empty_after_done = 0
            elif producers_done.is_set():
                empty_after_done += 1
                if empty_after_done >= 3:
                    return
        raise AssertionError(f"{name} never saw the queue empty after the producers finished")

    async def nemesis() -> None:
        for _ in range(1200):
            if pushes_done[0] >= PRODUCERS * PER_PRODUCER // 4:
                break
            await trio.sleep(0.025)
        old = await cluster.wait_leader()
        fault["killed"] = old
        fault["at_push"] = pushes_done[0]
        t_kill = trio.current_time()
        await cluster.kill(old)
        new = await cluster.wait_leader(among=[n for n in cluster.ids if n != old])
        fault["new"] = new
        fault["elected_after"] = trio.current_time() - t_kill
        await cluster.start(old)
        fault["restarted_at_push"] = pushes_done[0]

    await cluster.wait_leader()
    t0 = trio.current_time()
    with trio.fail_after(120):
        async with trio.open_nursery() as n:
            n.start_soon(nemesis)
            for p in range(PRODUCERS):
                n.start_soon(producer, p)
            for k in range(CONSUMERS):
                n.start_soon(consumer, f"consumer-{k}")
    load_s = trio.current_time() - t0

    # Whatever is left (an indeterminate push may have landed after the consumers stopped).
    drainer = SeqClient(cluster, "drainer")
    clients.append(drainer)
    drained = 0
    for _ in range(PRODUCERS * PER_PRODUCER + 10):
        r = await drainer.settled("QUEUE_POLL", name=QUEUE, timeout_ms=0)
        assert r["s"] == OK, r
        if r["r"] is None:
            break
        polled.append(("drainer", drainer.seq, r["r"]))
        drained += 1
    else:
        raise AssertionError("the queue never drained")
    size = await drainer.c.call("QUEUE_SIZE", name=QUEUE, retry_unknown=True)
    assert size["s"] == OK and size["r"] == 0, size
    await cluster.wait_converged(timeout=30)

    counts = Counter(item for _, _, item in polled)
    twice = {item: [(who, seq) for who, seq, it in polled if it == item]
             for item, k in counts.items() if k > 1}
    missing = sorted(acked - set(counts))
    foreign = sorted(set(counts) - acked - unknown)
    print(f"leader {fault.get('killed')} SIGKILLed after {fault.get('at_push')} pushes; "
          f"{fault.get('new')} elected after {fault.get('elected_after', 0):.3f} s; "
          f"restarted after {fault.get('restarted_at_push')} pushes")
    print(f"{load_s:.2f} s of load: pushes acked {len(acked)}, indeterminate {len(unknown)}; "
          f"polled {len(polled)} (drained at the end {drained}); same-seq retries "
          f"{sum(sc.unknown_retries for sc in clients)}, client retries "
          f"{sum(sc.c.retries for sc in clients)}, redirects "
          f"{sum(sc.c.redirects for sc in clients)}")
    assert not twice, f"items polled more than once: {twice}"
    assert not missing, f"{len(missing)} acknowledged pushes never polled: {missing[:20]}"
    assert not foreign, f"polled items that were never pushed: {foreign[:20]}"
    assert len(acked) + len(unknown) == PRODUCERS * PER_PRODUCER


# -- I6 rel-lock-fencing -------------------------------------------------------------------------

LOCK = "fenced"


class FencedResource:
    """A storage service that remembers the highest fencing token it has seen and refuses any
    write carrying a lower one."""

    def __init__(self) -> None:
        self.highest = 0
        self.value: bytes | None = None
        self.accepted: list[tuple[int, bytes]] = []
        self.refused: list[tuple[int, bytes]] = []

    def write(self, token: int, value: bytes) -> bool:
        if token < self.highest:
            self.refused.append((token, value))
            return False
        self.highest = token
        self.value = value
        self.accepted.append((token, value))
        return True


async def open_session(sc: SeqClient, ttl_ms: int) -> int:
    r = await sc.settled("SESSION_OPEN", ttl_ms=ttl_ms)
    assert r["s"] == OK, r
    sid = r["r"]["session_id"]
    assert isinstance(sid, int)
    return sid


async def lock_token(sc: SeqClient, sid: int) -> int:
    r = await sc.settled("LOCK_TRY_LOCK", name=LOCK, session_id=sid)
    assert r["s"] == OK and isinstance(r["r"], int), f"LOCK_TRY_LOCK: {r}"
    token: int = r["r"]
    return token


async def owner(c: Client) -> dict[str, Any]:
    r = await c.call("LOCK_GET_OWNER", name=LOCK, retry_unknown=True)
    assert r["s"] == OK, r
    out: dict[str, Any] = r["r"]
    return out


async def test_lock_expired_holder_is_fenced_and_tokens_increase_across_leader_kill(
        cluster: Cluster) -> None:
    resource = FencedResource()
    tokens: list[tuple[str, int]] = []
    a = SeqClient(cluster, "lock-a")
    b = SeqClient(cluster, "lock-b")
    await cluster.wait_leader()

    # A takes the lock with a short-lived session, writes, then stops heartbeating (a paused
    # holder: a GC pause, a SIGSTOP, a slow disk).
    sid_a = await open_session(a, 1500)
    t1 = await lock_token(a, sid_a)
    tokens.append(("a", t1))
    assert resource.write(t1, b"a-1")
    t_pause = trio.current_time()

    # B opens a long session and asks for the lock (waiting up to 2.5 s each time).
    sid_b = await open_session(b, 60_000)
    t2: int | None = None
    attempts = 0
    for _ in range(5):
        attempts += 1
        r = await b.settled("LOCK_LOCK", name=LOCK, session_id=sid_b, timeout_ms=2500)
        assert r["s"] == OK, r
        if r["r"] is not None:
            t2 = r["r"]
            break
    assert isinstance(t2, int), "B never acquired the lock after A's session expired"
    waited = trio.current_time() - t_pause
    tokens.append(("b", t2))
    print(f"A's session (ttl 1.5 s) expired; B acquired after {waited:.3f} s "
          f"({attempts} LOCK_LOCK call(s)), tokens t1={t1} t2={t2}")
    assert waited >= 1.4, f"B acquired the lock {waited:.3f} s after A's last heartbeat"
    assert t2 > t1, (t1, t2)
    seen = await owner(b.c)
    assert seen["session_id"] == sid_b and seen["token"] == t2, seen

    # B writes with t2; A, resuming, writes with its stale t1 and is refused.
    assert resource.write(t2, b"b-1")
    assert not resource.write(t1, b"a-late"), "the stale holder's write was accepted"
    assert resource.value == b"b-1"
    # And the cluster agrees that A holds nothing any more.
    r = await a.settled("LOCK_UNLOCK", name=LOCK, session_id=sid_a)
    assert r["s"] == NOT_FOUND, f"the expired session unlocked: {r}"
    r = await a.settled("SESSION_HEARTBEAT", session_id=sid_a)
    assert r["s"] == NOT_FOUND, f"the expired session was revived: {r}"
    r = await a.settled("LOCK_TRY_LOCK", name=LOCK, session_id=sid_a)
    assert r["s"] == NOT_FOUND, f"the expired session locked again: {r}"
    r = await b.settled("LOCK_UNLOCK", name=LOCK, session_id=sid_b)
    assert r["s"] == OK and r["r"] == 0, r

    # Hand the lock around before a leader change...
    c = SeqClient(cluster, "lock-c")
    sid_c = await open_session(c, 60_000)
    for k in range(4):
        sc, sid = (b, sid_b) if k % 2 == 0 else (c, sid_c)
        t = await lock_token(sc, sid)
        tokens.append((f"before-{k}", t))
        assert resource.write(t, b"before-%d" % k)
        r = await sc.settled("LOCK_UNLOCK", name=LOCK, session_id=sid)
        assert r["s"] == OK and r["r"] == 0, r

    # ... with a lock request in flight to the leader when it is SIGKILLed: the retry with the
    # same seq answers the token of that one acquisition, or takes the lock once afterwards.
    old = await cluster.wait_leader()
    direct = await cluster.connect(old, client_id="lock-b")
    b.seq += 1
    inflight_seq = b.seq
    _, frame = direct.frame("LOCK_TRY_LOCK", seq=inflight_seq, name=LOCK, session_id=sid_b)
    await direct.send(frame)
    await trio.sleep(0.01)
    await cluster.kill(old)
    await direct.aclose()
    for sc in (a, b, c):
        await sc.c.aclose()  # their connections may be to the dead leader
    new = await cluster.wait_leader(among=[n for n in cluster.ids if n != old])
    r = await b.c.call("LOCK_TRY_LOCK", seq=inflight_seq, retry_unknown=True, deadline_s=30,
                       name=LOCK, session_id=sid_b)
    assert r["s"] == OK and isinstance(r["r"], int), r
    t_retry = r["r"]
    again = await b.c.call("LOCK_TRY_LOCK", seq=inflight_seq, retry_unknown=True, name=LOCK,
                           session_id=sid_b)
    assert again["s"] == OK and again["r"] == t_retry, (r, again)
    seen = await owner(b.c)
    assert seen["session_id"] == sid_b and seen["token"] == t_retry and seen["holds"] == 1, \
        f"the retried acquisition was applied twice or not at all: {seen}, token {t_retry}"
    tokens.append(("in-flight", t_retry))
    assert resource.write(t_retry, b"in-flight")
    r = await b.settled("LOCK_UNLOCK", name=LOCK, session_id=sid_b)
    assert r["s"] == OK and r["r"] == 0, r

    # After the leader change, under the new leader and then with the old one back.
    for k in range(4):
        if k == 2:
            await cluster.start(old)
        sc, sid = (c, sid_c) if k % 2 == 0 else (b, sid_b)
        t = await lock_token(sc, sid)
        tokens.append((f"after-{k}", t))
        assert resource.write(t, b"after-%d" % k), f"token {t} below one already used: {tokens}"
        r = await sc.settled("LOCK_UNLOCK", name=LOCK, session_id=sid)
        assert r["s"] == OK and r["r"] == 0, r
    await cluster.wait_converged(timeout=30)
    print(f"leader {old} SIGKILLed, {new} took over; tokens {[t for _, t in tokens]}")

    values = [t for _, t in tokens]
    assert values == sorted(values) and len(set(values)) == len(values), \
        f"fencing tokens reused or out of order: {tokens}"
    assert resource.refused == [(t1, b"a-late")], resource.refused
    assert (await owner(c.c))["session_id"] is None


async def test_lock_waiter_is_granted_soon_after_the_holder_session_expires(
        cluster: Cluster) -> None:
    a = SeqClient(cluster, "waiter-a")
    b = SeqClient(cluster, "waiter-b")
    await cluster.wait_leader()
    sid_a = await open_session(a, 1000)
    t1 = await lock_token(a, sid_a)
    t_last = trio.current_time()  # A's last word: it never heartbeats
    sid_b = await open_session(b, 60_000)
    r = await b.settled("LOCK_LOCK", name=LOCK, session_id=sid_b, timeout_ms=8000)
    waited = trio.current_time() - t_last
    print(f"A's session (ttl 1 s) lapsed; B's LOCK_LOCK (timeout 8 s) answered {r.get('r')} "
          f"after {waited:.3f} s")
    assert r["s"] == OK and isinstance(r["r"], int) and r["r"] > t1, r
    # Generous: four times the TTL. The lock is free from 1 s on.
    assert waited < 4.0, f"B was granted the lock {waited:.3f} s after A's last heartbeat"


# -- I7 rel-membership-under-faults --------------------------------------------------------------


async def test_remove_follower_while_a_link_is_cut_under_load(
        cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(proxied=True)
    leader = await cluster.wait_leader()
    cut_peer, gone = (n for n in cluster.ids if n != leader)
    stay = sorted([leader, cut_peer])
    acked: dict[str, bytes] = {}
    unknown: dict[str, bytes] = {}
    leaders_by_term: dict[int, set[str]] = {}
    samples = [0]
    stop_load = trio.Event()
    stop_sampling = trio.Event()
    phase: dict[str, Any] = {}
    writer = SeqClient(cluster, "member-writer")

    async def load() -> None:
        for i in range(2000):
            if stop_load.is_set():
                return
            key, value = f"w{i:04d}", b"v%d" % i
            r = await writer.write("MAP_PUT", deadline_s=30, name="m", key=key, value=value)
            if r["s"] == OK:
                acked[key] = value
            elif r["s"] in INDETERMINATE:
                unknown[key] = value
            else:
                raise AssertionError(f"MAP_PUT {key}: {r}")
            await trio.sleep(0.005)
        raise AssertionError("the load never stopped")

    async def sample() -> None:
        for _ in range(2000):
            if stop_sampling.is_set():
                return
            for nid, st in (await cluster.statuses()).items():
                if st["role"] == "leader":
                    leaders_by_term.setdefault(st["term"], set()).add(nid)
            samples[0] += 1
            await trio.sleep(0.05)

    async def wait_acked(n: int, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            for _ in range(3000):
                if len(acked) >= n:
                    return
                await trio.sleep(0.01)
        raise AssertionError(f"fewer than {n} writes acknowledged")

    async def change() -> None:
        admin = cluster.client()
        await wait_acked(30)
        cluster.cut(leader, cut_peer)
        t_cut = trio.current_time()
        phase["acked_at_cut"] = len(acked)
        await trio.sleep(0.3)
        r = await admin.call("MEMBER_REMOVE", node=gone, deadline_s=20)
        phase["remove"] = (r["s"], r.get("e"))
        phase["remove_after"] = trio.current_time() - t_cut
        await trio.sleep(max(0.0, 2.5 - (trio.current_time() - t_cut)))
        phase["acked_before_heal"] = len(acked)
        cluster.heal()
        t_heal = trio.current_time()
        writer.c.only = stay  # the removed node still answers clients
        admin.only = stay
        if r["s"] != OK:
            # The removal was not acknowledged during the cut (indeterminate or refused): ask
            # again now that the link is healed; it is applied once either way.
            r = await admin.call("MEMBER_REMOVE", node=gone, retry_unknown=True, deadline_s=20)
            phase["remove_again"] = (r["s"], r.get("e"))
        await wait_acked(len(acked) + 30)
        stop_load.set()
        phase["healed_to_30_more"] = trio.current_time() - t_heal

    t0 = trio.current_time()
    with trio.fail_after(90):
        async with trio.open_nursery() as n:
            n.start_soon(sample)
            async with trio.open_nursery() as m:
                m.start_soon(load)
                m.start_soon(change)
            for nid in stay:
                await _wait_voters(cluster, nid, stay)
            sts = await cluster.wait_converged(stay, timeout=30)
            stop_sampling.set()
    print(f"leader {leader}, cut {leader}<->{cut_peer}, removed {gone}; phases {phase}; "
          f"{trio.current_time() - t0:.2f} s")
    print(f"writes acked {len(acked)}, indeterminate {len(unknown)}; status samples "
          f"{samples[0]}; leaders by term { {t: sorted(v) for t, v in leaders_by_term.items()} }")

    split = {t: sorted(v) for t, v in leaders_by_term.items() if len(v) > 1}
    assert not split, f"two leaders in one term: {split}"
    assert len({s["applied_index"] for s in sts.values()}) == 1, sts
    assert {s["term"] for s in sts.values()} == {sts[stay[0]]["term"]}, sts
    gone_st = await cluster.status(gone)
    assert gone_st is None or gone_st["role"] != "leader", gone_st

    reader = cluster.client()
    reader.only = stay
    for key, want in acked.items():
        r = await reader.call("MAP_GET", name="m", key=key, retry_unknown=True)
        assert r["s"] == OK and r["r"] == want, f"acknowledged write {key} lost: {r}"
    for key, want in unknown.items():
        r = await reader.call("MAP_GET", name="m", key=key, retry_unknown=True)
        assert r["s"] == OK and r["r"] in (None, want), (key, r)
    for nid in stay:  # each remaining voter serves every acknowledged write itself
        for key in list(acked)[:: max(1, len(acked) // 20)]:
            r = await cluster.request(nid, "MAP_GET", timeout=10, name="m", key=key)
            assert r is not None and r["s"] in (OK, 10), (nid, key, r)
            if r["s"] == OK:
                assert r["r"] == acked[key], (nid, key, r)


async def _wait_voters(cluster: Cluster, nid: str, want: list[str],
                       timeout: float = 20.0) -> None:
    last: Any = None
    with trio.move_on_after(timeout):
        for _ in range(400):
            r = await cluster.request(nid, "MEMBER_LIST")
            if r is not None and r["s"] == OK:
                last = r["r"]["members"]
                if sorted(m["id"] for m in last if m["voter"]) == want:
                    return
            await trio.sleep(0.1)
    raise AssertionError(f"{nid}: voters never became {want}: {last}")
