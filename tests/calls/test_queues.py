"""The call queue's rules, on a clock the test moves by hand."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from voicegw.calls.agent_bridge import queue_definitions
from voicegw.calls.queues import (
    DEFAULT_QUEUE,
    CallQueue,
    Offer,
    Overflowed,
    QueueDefinition,
    QueueSettings,
    QueueTable,
    StopRinging,
    Waiting,
)
from voicegw.config import Settings

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


def test_an_agent_who_just_transferred_the_caller_is_not_rung_with_it_again() -> None:
    q = queue()
    q.join("c1", now=0.0, passed_over=[1])
    assert q.decide(0.0, available=[1]) == [Waiting("c1")]
    assert q.decide(29.0, available=[1, 2]) == [Offer("c1", 2)]
    q2 = queue()
    q2.join("c2", now=0.0, passed_over=[1])
    assert q2.decide(30.0, available=[1]) == [Offer("c2", 1)]  # retry_after later, it may


# --- which queue, with which skills --------------------------------------------------------

SPANISH = QueueDefinition(
    "spanish",
    "acme",
    numbers=frozenset({"+6561230001"}),
    skills=frozenset({"es"}),
    settings=QueueSettings(ring_timeout=10.0),
)


def test_a_dialled_number_picks_its_queue_and_other_numbers_the_tenants_default() -> None:
    table = QueueTable([SPANISH], default=SETTINGS)
    assert table.for_call("acme", "+6561230001") is SPANISH
    fallback = table.for_call("acme", "+6561239999")
    assert (fallback.name, fallback.skills, fallback.settings) == (
        DEFAULT_QUEUE,
        frozenset(),
        SETTINGS,
    )
    # The number is acme's queue's: another tenant's calls to it never join that queue.
    assert table.for_call("globex", "+6561230001").name == DEFAULT_QUEUE
    assert table.names("acme") == {"default", "spanish"}
    assert table.names("globex") == {"default"}


def test_a_queue_admits_only_agents_with_every_skill_it_requires() -> None:
    assert SPANISH.admits(frozenset({"es", "billing"}))
    assert not SPANISH.admits(frozenset({"billing"}))
    assert QueueDefinition("any", "acme").admits(frozenset())


@pytest.mark.parametrize(
    ("queues", "problem"),
    [
        ([SPANISH, SPANISH], "defined twice"),
        (
            [SPANISH, QueueDefinition("other", "acme", numbers=frozenset({"+6561230001"}))],
            "two queues",
        ),
        ([QueueDefinition("x", "acme", overflow_queue="nowhere")], "unknown queue"),
        ([QueueDefinition("x", "acme", overflow_queue="x")], "unknown queue"),
    ],
)
def test_ambiguous_or_dangling_queue_tables_are_refused(
    queues: list[QueueDefinition], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        QueueTable(queues)


QUEUE_CONFIG = {
    "name": "spanish",
    "tenant": "acme",
    "numbers": ["+6561230001"],
    "skills": ["es"],
    "ring_timeout": 10,
    "music": "ringback",
    "overflow_queue": "default",
}


def test_queues_in_the_config_become_the_bridges_queue_definitions() -> None:
    settings = Settings(queues=[QUEUE_CONFIG])
    (queue_def,) = queue_definitions(settings.queues)
    assert queue_def == QueueDefinition(
        "spanish",
        "acme",
        numbers=frozenset({"+6561230001"}),
        skills=frozenset({"es"}),
        settings=QueueSettings(ring_timeout=10.0, max_wait=120.0, retry_after=30.0),
        hold_music=False,
        overflow_queue="default",
        overflow_status=480,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"skills": ["Spanish!"]},  # skills are lower-case words
        {"numbers": ["6561230001"]},  # E.164 only
        {"overflow_queue": "nowhere"},
        {"ring_timeout": 0},
        {"overflow_status": 200},
    ],
)
def test_bad_queue_config_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(queues=[{**QUEUE_CONFIG, **change}])


def test_a_queue_name_twice_for_one_tenant_is_refused() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Settings(queues=[QUEUE_CONFIG, QUEUE_CONFIG])
    assert len(Settings(queues=[QUEUE_CONFIG, {**QUEUE_CONFIG, "tenant": "globex"}]).queues) == 2
