"""The call queue's rules, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from voicegw.calls.queues import (
    CallQueue,
    Offer,
    Overflowed,
    QueueSettings,
    StopRinging,
    Waiting,
)

SETTINGS = QueueSettings(ring_timeout=15.0, max_wait=120.0, retry_after=30.0)


def queue() -> CallQueue:
    return CallQueue(SETTINGS)


def test_a_call_rings_the_agent_idle_longest() -> None:
    q = queue()
    q.agent_free(7, now=50.0)
    q.agent_free(3, now=10.0)
    q.agent_free(5, now=30.0)
    q.join("c1", now=100.0)
    assert q.decide(100.0, available=[7, 5, 3]) == [Offer("c1", 3)]


def test_equally_idle_agents_are_chosen_by_id_so_selection_is_deterministic() -> None:
    q = queue()
    q.join("c1", now=0.0)
    assert q.decide(0.0, available=[9, 4, 6]) == [Offer("c1", 4)]


def test_agents_first_seen_later_count_as_idle_since_then() -> None:
    q = queue()
    q.decide(0.0, available=[2])  # agent 2 seen idle at t=0
    q.agent_free(1, now=5.0)
    q.join("c1", now=10.0)
    assert q.decide(10.0, available=[1, 2]) == [Offer("c1", 2)]


def test_callers_are_served_first_come_first_served_by_distinct_agents() -> None:
    q = queue()
    q.agent_free(1, now=0.0)
    q.agent_free(2, now=1.0)
    q.join("first", now=10.0)
    q.join("second", now=11.0)
    assert q.decide(11.0, available=[1, 2]) == [Offer("first", 1), Offer("second", 2)]


def test_ring_timeout_moves_the_call_to_the_next_agent() -> None:
    q = queue()
    q.agent_free(1, now=0.0)
    q.agent_free(2, now=1.0)
    q.join("c1", now=10.0)
    assert q.decide(10.0, available=[1, 2]) == [Offer("c1", 1)]
    assert q.next_deadline() == 25.0
    assert q.decide(24.9, available=[2]) == []
    assert q.decide(25.0, available=[1, 2]) == [
        StopRinging("c1", 1, "no_answer"),
        Offer("c1", 2),
    ]


def test_decline_moves_the_call_to_the_next_agent_and_not_back_for_a_while() -> None:
    q = queue()
    q.agent_free(1, now=0.0)
    q.agent_free(2, now=1.0)
    q.join("c1", now=10.0)
    q.decide(10.0, available=[1, 2])
    q.declined("c1", 1, now=12.0)
    q.declined("c1", 1, now=12.0)  # a second report changes nothing
    assert q.decide(12.0, available=[1, 2]) == [Offer("c1", 2)]
    q.declined("c1", 2, now=13.0)
    # Both declined: the caller waits, and agent 1 gets the call again after retry_after.
    assert q.decide(13.0, available=[1, 2]) == [Waiting("c1")]
    assert q.next_deadline() == 42.0
    assert q.decide(41.9, available=[1, 2]) == []
    assert q.decide(42.0, available=[1, 2]) == [Offer("c1", 1)]


def test_nobody_available_means_waiting_once_then_the_first_free_agent_rings() -> None:
    q = queue()
    q.join("c1", now=0.0)
    assert q.decide(0.0, available=[]) == [Waiting("c1")]
    assert q.decide(5.0, available=[]) == []
    assert q.decide(6.0, available=[8]) == [Offer("c1", 8)]


def test_max_wait_overflows_the_call_and_stops_any_ringing() -> None:
    q = queue()
    q.join("idle", now=0.0)
    q.join("ringing", now=0.0)
    assert q.decide(0.0, available=[]) == [Waiting("idle"), Waiting("ringing")]
    assert q.decide(110.0, available=[4]) == [Offer("idle", 4)]
    assert q.next_deadline() == 120.0
    assert q.decide(120.0, available=[]) == [
        StopRinging("idle", 4, "overflow"),
        Overflowed("idle"),
        Overflowed("ringing"),
    ]
    assert len(q) == 0
    assert q.next_deadline() is None


def test_an_answered_or_abandoned_call_leaves_the_queue() -> None:
    q = queue()
    q.join("c1", now=0.0)
    q.decide(0.0, available=[1])
    assert q.ringing("c1") == 1
    q.leave("c1")
    assert "c1" not in q
    assert q.decide(200.0, available=[1]) == []


def test_settings_are_bounded() -> None:
    with pytest.raises(ValueError, match="ring_timeout"):
        QueueSettings(ring_timeout=0)
    with pytest.raises(ValueError, match="max_wait"):
        QueueSettings(max_wait=10_000)
    with pytest.raises(ValueError, match="retry_after"):
        QueueSettings(retry_after=-1)
