"""The transfer state machine: what each event does to a blind or warm transfer."""

from __future__ import annotations

import pytest

from voicegw.calls.agent_transfers import (
    ConnectCaller,
    ConnectConsult,
    DropTarget,
    HoldCaller,
    ReleaseAgent,
    Requeue,
    ReturnCaller,
    RingTarget,
    TargetKind,
    Transfer,
    TransferError,
    TransferEvent,
    TransferMode,
    TransferState,
    TransferTarget,
)

AGENT_2 = TransferTarget(TargetKind.AGENT, "2")
E = TransferEvent


def test_a_blind_transfer_holds_the_caller_rings_the_target_and_hands_over_on_answer() -> None:
    transfer = Transfer(TransferMode.BLIND, AGENT_2, from_agent=1)
    assert transfer.start() == [HoldCaller(), RingTarget(AGENT_2, consult=False)]
    assert transfer.state is TransferState.RINGING
    assert transfer.handle(E.TARGET_ANSWERED) == [ConnectCaller(), ReleaseAgent()]
    assert transfer.state is TransferState.COMPLETED and transfer.over


def test_a_warm_transfer_consults_first_and_hands_over_only_when_completed() -> None:
    transfer = Transfer(TransferMode.WARM, AGENT_2, from_agent=1)
    assert transfer.start() == [HoldCaller(), RingTarget(AGENT_2, consult=True)]
    assert transfer.handle(E.TARGET_ANSWERED) == [ConnectConsult()]
    assert transfer.state is TransferState.CONSULTING and not transfer.over
    assert transfer.handle(E.COMPLETE) == [ConnectCaller(), ReleaseAgent()]
    assert transfer.state is TransferState.COMPLETED


@pytest.mark.parametrize("mode", list(TransferMode))
@pytest.mark.parametrize(
    ("event", "state"),
    [(E.TARGET_FAILED, TransferState.FAILED), (E.CANCEL, TransferState.CANCELLED)],
)
def test_a_failed_or_cancelled_ring_returns_the_caller_to_the_first_agent(
    mode: TransferMode, event: TransferEvent, state: TransferState
) -> None:
    transfer = Transfer(mode, AGENT_2, from_agent=1)
    transfer.start()
    assert transfer.handle(event, "declined") == [DropTarget(), ReturnCaller()]
    assert transfer.state is state and transfer.reason == "declined"


@pytest.mark.parametrize("event", [E.TARGET_FAILED, E.CANCEL])
def test_a_consult_that_ends_or_is_cancelled_returns_the_caller(event: TransferEvent) -> None:
    transfer = Transfer(TransferMode.WARM, AGENT_2, from_agent=1)
    transfer.start()
    transfer.handle(E.TARGET_ANSWERED)
    assert transfer.handle(event) == [DropTarget(), ReturnCaller()]
    assert transfer.over and transfer.reason == event.value


def test_a_queue_target_releases_the_agent_at_once_and_requeues_the_caller() -> None:
    transfer = Transfer(TransferMode.BLIND, TransferTarget(TargetKind.QUEUE, "sales"), 1)
    assert transfer.start() == [HoldCaller(), Requeue("sales"), ReleaseAgent()]
    assert transfer.state is TransferState.COMPLETED


def test_a_queue_takes_no_warm_transfer_and_an_agent_cannot_transfer_to_themselves() -> None:
    with pytest.raises(TransferError) as warm_queue:
        Transfer(TransferMode.WARM, TransferTarget(TargetKind.QUEUE, "sales"), 1)
    assert warm_queue.value.code == "invalid_target"
    with pytest.raises(TransferError) as self_target:
        Transfer(TransferMode.BLIND, TransferTarget(TargetKind.AGENT, "1"), 1)
    assert self_target.value.code == "invalid_target"


@pytest.mark.parametrize(
    ("mode", "events", "refused"),
    [
        # A blind transfer has nothing to complete: the target's answer completes it.
        (TransferMode.BLIND, [], E.COMPLETE),
        # Completing before the target answered would hand the caller to a ringing phone.
        (TransferMode.WARM, [], E.COMPLETE),
        # Over is over: nothing moves a finished transfer.
        (TransferMode.WARM, [E.TARGET_ANSWERED, E.COMPLETE], E.CANCEL),
        (TransferMode.BLIND, [E.CANCEL], E.TARGET_ANSWERED),
    ],
)
def test_events_that_do_not_apply_are_refused_and_change_nothing(
    mode: TransferMode, events: list[TransferEvent], refused: TransferEvent
) -> None:
    transfer = Transfer(mode, AGENT_2, from_agent=1)
    transfer.start()
    for event in events:
        transfer.handle(event)
    before = transfer.state
    with pytest.raises(TransferError) as error:
        transfer.handle(refused)
    assert error.value.code == "invalid_transfer_state"
    assert transfer.state is before
