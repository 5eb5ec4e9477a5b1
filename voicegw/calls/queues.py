"""A tenant's call queue: which waiting caller rings which agent, and when to give up.

Sans-IO: the queue never reads a clock or starts a timer. Its driver tells it
what happened (a call joined, an agent declined, an agent finished a call),
asks :meth:`CallQueue.decide` with ``now`` and the agents that could take a
call right now, executes the actions it gets back, and calls ``decide`` again
at :meth:`CallQueue.next_deadline` (or at the next event).

Rules:

* callers are served first come, first served;
* a call rings the available agent who has been idle longest (an agent never
  seen finishing a call counts as idle since the queue first saw it; ties go
  to the lower agent id, so selection is deterministic);
* an agent rings for at most ``ring_timeout`` seconds; declining or letting it
  ring out moves the call on to the next agent, and the same agent is not
  offered that call again for ``retry_after`` seconds;
* with nobody to ring, the caller waits (:class:`Waiting`: hold music);
* after ``max_wait`` seconds in the queue the call overflows (:class:`Overflowed`).

Which queue a call joins is :class:`QueueTable`'s answer: a tenant's queue
whose ``numbers`` hold the dialled number, else the tenant's ``default`` queue
(every agent of the tenant, the node's default settings). A queue rings only
agents who have every one of its ``skills``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_QUEUE",
    "CallQueue",
    "Offer",
    "Overflowed",
    "QueueAction",
    "QueueDefinition",
    "QueueSettings",
    "QueueTable",
    "StopRinging",
    "Waiting",
]


@dataclass(frozen=True, slots=True)
class QueueSettings:
    ring_timeout: float = 15.0
    max_wait: float = 120.0
    #: How long an agent who declined (or missed) a call is not offered it again.
    retry_after: float = 30.0

    def __post_init__(self) -> None:
        if not (0 < self.ring_timeout <= 300 and 0 < self.max_wait <= 3600):
            raise ValueError("ring_timeout must be within 0..300 s and max_wait within 0..3600 s")
        if self.retry_after < 0:
            raise ValueError("retry_after must not be negative")


#: The queue of a tenant's calls that no configured queue claims.
DEFAULT_QUEUE: Final = "default"


@dataclass(frozen=True, slots=True)
class QueueDefinition:
    """One queue of one tenant: what it answers, whom it rings and how long it waits."""

    name: str
    tenant_id: str
    #: Dialled numbers (E.164) whose calls join this queue.
    numbers: frozenset[str] = frozenset()
    #: An agent must have all of these to be rung.
    skills: frozenset[str] = frozenset()
    settings: QueueSettings = field(default_factory=lambda: QueueSettings())
    #: Waiting callers hear hold music (False: ringback, the call stays unanswered).
    hold_music: bool = True
    #: Where a caller who waited ``max_wait`` goes: another queue of the tenant, or the
    #: overflow treatment (a final status, or the announcement and BYE) when None.
    overflow_queue: str | None = None
    #: Final status for an unanswered caller who overflowed (None: the bridge's default).
    overflow_status: int | None = None

    def admits(self, skills: frozenset[str]) -> bool:
        return self.skills <= skills


class QueueTable:
    """The queues of every tenant, looked up by dialled number or by name."""

    def __init__(
        self, queues: Iterable[QueueDefinition] = (), default: QueueSettings | None = None
    ) -> None:
        self.default = default or QueueSettings()
        self._by_name: dict[tuple[str, str], QueueDefinition] = {}
        self._by_number: dict[tuple[str, str], QueueDefinition] = {}
        for queue in queues:
            key = (queue.tenant_id, queue.name)
            if key in self._by_name:
                raise ValueError(f"queue {queue.name} of {queue.tenant_id} is defined twice")
            self._by_name[key] = queue
            for number in queue.numbers:
                if (queue.tenant_id, number) in self._by_number:
                    raise ValueError(f"number {number} is in two queues of {queue.tenant_id}")
                self._by_number[(queue.tenant_id, number)] = queue
        for queue in self._by_name.values():
            target = queue.overflow_queue
            known = target in (None, DEFAULT_QUEUE) or (queue.tenant_id, target) in self._by_name
            if not known or target == queue.name:
                raise ValueError(f"queue {queue.name} overflows to unknown queue {target}")

    def for_call(self, tenant_id: str, dialled: str | None) -> QueueDefinition:
        """The queue a call to ``dialled`` joins (the tenant's default one if none claims it)."""
        found = self._by_number.get((tenant_id, dialled)) if dialled is not None else None
        return found or self.get(tenant_id, DEFAULT_QUEUE) or self._default(tenant_id)

    def get(self, tenant_id: str, name: str) -> QueueDefinition | None:
        found = self._by_name.get((tenant_id, name))
        if found is None and name == DEFAULT_QUEUE:
            return self._default(tenant_id)
        return found

    def names(self, tenant_id: str) -> frozenset[str]:
        return frozenset({DEFAULT_QUEUE} | {n for t, n in self._by_name if t == tenant_id})

    def _default(self, tenant_id: str) -> QueueDefinition:
        return QueueDefinition(DEFAULT_QUEUE, tenant_id, settings=self.default)

    @property
    def definitions(self) -> Mapping[tuple[str, str], QueueDefinition]:
        return self._by_name


@dataclass(frozen=True, slots=True)
class Offer:
    """Ring ``agent_id`` with call ``call``."""

    call: str
    agent_id: int


@dataclass(frozen=True, slots=True)
class StopRinging:
    """Stop ringing ``agent_id`` (``reason``: ``no_answer`` or ``overflow``)."""

    call: str
    agent_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """Nobody can take the call now: the caller waits (once per call)."""

    call: str


@dataclass(frozen=True, slots=True)
class Overflowed:
    """The call waited ``max_wait``: it leaves the queue for the overflow treatment."""

    call: str


QueueAction = Offer | StopRinging | Waiting | Overflowed


@dataclass(slots=True)
class _Queued:
    key: str
    give_up_at: float
    ringing: int | None = None
    ring_until: float = math.inf
    waiting: bool = False
    #: agent -> when the agent may be offered this call again
    not_before: dict[int, float] = field(default_factory=dict)


class CallQueue:
    """The calls waiting for one tenant's agents (see the module docstring for the rules)."""

    def __init__(self, settings: QueueSettings | None = None) -> None:
        self.settings = settings or QueueSettings()
        self._calls: dict[str, _Queued] = {}  # insertion order is arrival order
        self._idle_since: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call: object) -> bool:
        return call in self._calls

    def ringing(self, call: str) -> int | None:
        queued = self._calls.get(call)
        return None if queued is None else queued.ringing

    # --- what happened ------------------------------------------------------------------

    def join(self, call: str, now: float, *, passed_over: Iterable[int] = ()) -> None:
        """``passed_over``: agents not to ring for ``retry_after`` (who just transferred it)."""
        if call in self._calls:
            raise ValueError("call is already queued")
        self._calls[call] = _Queued(
            call,
            give_up_at=now + self.settings.max_wait,
            not_before={agent: now + self.settings.retry_after for agent in passed_over},
        )

    def leave(self, call: str) -> None:
        """The call was answered by its agent or the caller hung up."""
        self._calls.pop(call, None)

    def declined(self, call: str, agent_id: int, now: float) -> None:
        """The ringing agent declined (or the offer otherwise failed). Idempotent."""
        queued = self._calls.get(call)
        if queued is not None and queued.ringing == agent_id:
            self._passed_over(queued, now)

    def agent_free(self, agent_id: int, now: float) -> None:
        """``agent_id`` finished a call at ``now``: idle from then on."""
        self._idle_since[agent_id] = now

    # --- decisions ----------------------------------------------------------------------

    def decide(self, now: float, available: Iterable[int]) -> list[QueueAction]:
        """What to do now; ``available`` are agents who could be rung right now."""
        candidates = set(available)
        for agent_id in sorted(candidates):
            self._idle_since.setdefault(agent_id, now)
        busy = {q.ringing for q in self._calls.values() if q.ringing is not None}
        free = candidates - busy
        actions: list[QueueAction] = []
        for queued in list(self._calls.values()):
            if queued.ringing is not None and now >= min(queued.ring_until, queued.give_up_at):
                gave_up = now >= queued.give_up_at
                actions.append(
                    StopRinging(queued.key, queued.ringing, "overflow" if gave_up else "no_answer")
                )
                self._passed_over(queued, now)
            if now >= queued.give_up_at:
                del self._calls[queued.key]
                actions.append(Overflowed(queued.key))
                continue
            queued.not_before = {a: t for a, t in queued.not_before.items() if t > now}
            if queued.ringing is not None:
                continue
            eligible = [a for a in free if a not in queued.not_before]
            if eligible:
                agent_id = min(eligible, key=lambda a: (self._idle_since[a], a))
                free.discard(agent_id)
                queued.ringing = agent_id
                queued.ring_until = now + self.settings.ring_timeout
                actions.append(Offer(queued.key, agent_id))
            elif not queued.waiting:
                queued.waiting = True
                actions.append(Waiting(queued.key))
        return actions

    def next_deadline(self) -> float | None:
        """When :meth:`decide` has something to do without any new event (None: never)."""
        deadlines = [
            min(q.ring_until, q.give_up_at, *q.not_before.values()) for q in self._calls.values()
        ]
        return min(deadlines, default=None)

    def _passed_over(self, queued: _Queued, now: float) -> None:
        assert queued.ringing is not None
        queued.not_before[queued.ringing] = now + self.settings.retry_after
        queued.ringing = None
        queued.ring_until = math.inf
