"""Transfers from the softphone: a connected caller to another agent, a queue or a number.

Sans-IO: a :class:`Transfer` takes what happened (:class:`TransferEvent`) and
hands back what to do (:data:`TransferAction`); the agent bridge carries the
actions out on the caller's SIP leg and the agents' WebRTC legs. It reads no
clock and starts no timer (the target's ring timeout is the bridge's).

Modes:

* **blind**: the caller hears hold music while the target rings; the target's
  answer connects the caller to the target and releases the first agent;
* **warm** (attended): the target's answer connects the first agent to the
  target (a consult call, the caller still on hold music); the first agent
  then completes (caller to the target, first agent released) or cancels.

Whatever goes wrong before completion (the target declines, does not answer,
fails, or the first agent cancels) returns the caller to the first agent.
A queue target is blind only: the caller rejoins the queue (with its hold
music) and the first agent is free at once.

The rules are the table :data:`TRANSFER_RULES`: (mode, state, event) -> the
next state and the actions to take.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

__all__ = [
    "TRANSFER_RULES",
    "ConnectCaller",
    "ConnectConsult",
    "DropTarget",
    "HoldCaller",
    "ReleaseAgent",
    "Requeue",
    "ReturnCaller",
    "RingTarget",
    "TargetKind",
    "Transfer",
    "TransferAction",
    "TransferError",
    "TransferEvent",
    "TransferMode",
    "TransferState",
    "TransferTarget",
]


class TransferMode(StrEnum):
    BLIND = "blind"
    WARM = "warm"


class TargetKind(StrEnum):
    AGENT = "agent"
    QUEUE = "queue"
    NUMBER = "number"


class TransferState(StrEnum):
    #: The target is being rung (an agent) or called (a number); the caller hears hold music.
    RINGING = "ringing"
    #: Warm only: the first agent talks to the target; the caller still hears hold music.
    CONSULTING = "consulting"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class TransferEvent(StrEnum):
    TARGET_ANSWERED = "target_answered"
    TARGET_FAILED = "target_failed"
    COMPLETE = "complete"
    CANCEL = "cancel"


#: States after which nothing more happens.
FINAL_STATES: Final = frozenset(
    {TransferState.COMPLETED, TransferState.CANCELLED, TransferState.FAILED}
)


class TransferError(Exception):
    """A transfer request that does not apply now; ``code`` is stable for the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class TransferTarget:
    """Where the caller goes: an agent id, a queue name or an E.164 number (as text)."""

    kind: TargetKind
    value: str

    def label(self) -> str:
        """For the page; a number target is masked by whoever shows it."""
        return f"{self.kind.value}:{self.value}"


# --- actions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldCaller:
    """The caller hears hold music, hears nothing of any agent, and reaches nobody."""


@dataclass(frozen=True, slots=True)
class RingTarget:
    """Ring (or call) the target; ``consult``: as a consult call from the first agent."""

    target: TransferTarget
    consult: bool


@dataclass(frozen=True, slots=True)
class ConnectConsult:
    """The first agent and the target hear each other (the caller stays on hold)."""


@dataclass(frozen=True, slots=True)
class ConnectCaller:
    """The caller and the target hear each other; the recording's agent channel follows."""


@dataclass(frozen=True, slots=True)
class ReleaseAgent:
    """The first agent's call ends (``transferred``); the agent goes to wrap-up."""


@dataclass(frozen=True, slots=True)
class DropTarget:
    """End the target's ring or consult call."""


@dataclass(frozen=True, slots=True)
class ReturnCaller:
    """Hold music stops; the caller and the first agent hear each other again."""


@dataclass(frozen=True, slots=True)
class Requeue:
    """The caller rejoins the named queue (it waits with the queue's hold music)."""

    queue: str


TransferAction = (
    HoldCaller
    | RingTarget
    | ConnectConsult
    | ConnectCaller
    | ReleaseAgent
    | DropTarget
    | ReturnCaller
    | Requeue
)

M, S, E = TransferMode, TransferState, TransferEvent
_RETURN: Final = (DropTarget(), ReturnCaller())
#: (mode, state, event) -> (next state, actions); a missing triple is ``invalid_transfer_state``.
TRANSFER_RULES: Final[
    Mapping[
        tuple[TransferMode, TransferState, TransferEvent],
        tuple[TransferState, tuple[TransferAction, ...]],
    ]
] = MappingProxyType(
    {
        (M.BLIND, S.RINGING, E.TARGET_ANSWERED): (S.COMPLETED, (ConnectCaller(), ReleaseAgent())),
        (M.BLIND, S.RINGING, E.TARGET_FAILED): (S.FAILED, _RETURN),
        (M.BLIND, S.RINGING, E.CANCEL): (S.CANCELLED, _RETURN),
        (M.WARM, S.RINGING, E.TARGET_ANSWERED): (S.CONSULTING, (ConnectConsult(),)),
        (M.WARM, S.RINGING, E.TARGET_FAILED): (S.FAILED, _RETURN),
        (M.WARM, S.RINGING, E.CANCEL): (S.CANCELLED, _RETURN),
        (M.WARM, S.CONSULTING, E.COMPLETE): (S.COMPLETED, (ConnectCaller(), ReleaseAgent())),
        (M.WARM, S.CONSULTING, E.TARGET_FAILED): (S.FAILED, _RETURN),
        (M.WARM, S.CONSULTING, E.CANCEL): (S.CANCELLED, _RETURN),
    }
)


class Transfer:
    """One transfer of one caller, from the agent ``from_agent``; see the module docstring."""

    def __init__(self, mode: TransferMode, target: TransferTarget, from_agent: int) -> None:
        if target.kind is TargetKind.QUEUE and mode is TransferMode.WARM:
            raise TransferError("invalid_target", "a queue takes blind transfers only")
        if target.kind is TargetKind.AGENT and target.value == str(from_agent):
            raise TransferError("invalid_target", "an agent cannot transfer to themselves")
        self.mode = mode
        self.target = target
        self.from_agent = from_agent
        self.state = TransferState.RINGING
        #: Why the transfer failed or was cancelled (``declined``, ``no_answer``, ...).
        self.reason: str | None = None

    @property
    def over(self) -> bool:
        return self.state in FINAL_STATES

    def start(self) -> list[TransferAction]:
        """What to do first: hold the caller, then ring the target (or requeue)."""
        if self.target.kind is TargetKind.QUEUE:
            self.state = TransferState.COMPLETED
            return [HoldCaller(), Requeue(self.target.value), ReleaseAgent()]
        consult = self.mode is TransferMode.WARM
        return [HoldCaller(), RingTarget(self.target, consult=consult)]

    def handle(self, event: TransferEvent, reason: str | None = None) -> list[TransferAction]:
        """Move on ``event``; raises :class:`TransferError` when it does not apply now."""
        rule = TRANSFER_RULES.get((self.mode, self.state, event))
        if rule is None:
            raise TransferError(
                "invalid_transfer_state",
                f"cannot {event.value} a {self.mode.value} transfer that is {self.state.value}",
            )
        self.state, actions = rule
        if self.state in (TransferState.FAILED, TransferState.CANCELLED):
            self.reason = reason or event.value
        return list(actions)
