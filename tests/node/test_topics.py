"""The topic hub (topics.py): a publish reaches its topic's subscribers only, in order; a
resume replays what the ring holds and reports the rest as lost."""

from __future__ import annotations

from typing import Any

from loom.node.topics import TopicHub
from loom.state import StateLimits
from tests.state.helpers import Driver


def ring() -> Driver:
    """A real state machine whose topic "t" published seq 1..5 and holds 3..5."""
    d = Driver(StateLimits(topic_ring=3))
    for i in range(1, 6):
        d.ok("TOPIC_PUBLISH", name="t", value=bytes([i]))
    return d


def test_publish_reaches_only_its_topic_and_unsubscribe_stops_it() -> None:
    d = ring()
    hub = TopicHub(lambda: d.sm)
    got: dict[str, list[Any]] = {"a": [], "b": [], "a2": []}
    sa = hub.subscribe("a", lambda s, v: got["a"].append(s), from_seq=None, lost=print)
    hub.subscribe("b", lambda s, v: got["b"].append(s), from_seq=None, lost=print)
    sa2 = hub.subscribe("a", lambda s, v: got["a2"].append(s), from_seq=None, lost=print)
    hub.publish("a", 1, b"x")
    hub.publish("c", 1, b"x")  # nobody listens: nothing is called
    assert got == {"a": [1], "b": [], "a2": [1]}
    assert hub.unsubscribe(sa) and not hub.unsubscribe(sa)
    hub.publish("a", 2, b"y")
    assert got == {"a": [1], "b": [], "a2": [1, 2]}
    assert hub.unsubscribe(sa2)
    st = hub.statistics()
    assert (st.topics, st.subscriptions, st.published, st.delivered) == (1, 1, 3, 3)


def test_resume_replays_the_ring_and_reports_the_rest_lost() -> None:
    d = ring()
    hub = TopicHub(lambda: d.sm)
    got: list[int] = []
    lost: list[tuple[int, int]] = []
    hub.subscribe("t", lambda s, v: got.append(s), from_seq=1,
                  lost=lambda a, b: lost.append((a, b)))
    assert got == [3, 4, 5] and lost == [(1, 2)]
    hub.publish("t", 6, b"z")
    assert got == [3, 4, 5, 6]


def test_resume_on_a_node_behind_never_goes_below_from_seq() -> None:
    """The node has applied up to seq 5; the consumer already had up to 7 (from a node further
    ahead). What this node applies next (6, 7) was seen already and is not pushed; 8 is."""
    d = ring()
    hub = TopicHub(lambda: d.sm)
    got: list[int] = []
    lost: list[tuple[int, int]] = []
    hub.subscribe("t", lambda s, v: got.append(s), from_seq=8,
                  lost=lambda a, b: lost.append((a, b)))
    assert got == [] and lost == []
    for seq in (6, 7, 8, 9):
        hub.publish("t", seq, b"v")
    hub.publish("t", 9, b"v")  # never twice, never backwards
    assert got == [8, 9]
    assert hub.statistics().delivered == 2
