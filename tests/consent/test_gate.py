"""The recording gate: silence of the same length, exact intervals, one switch for every sink."""

from __future__ import annotations

import pytest

from voicegw.consent import (
    CallContext,
    CaptureConfig,
    ConsentMachine,
    ConsentPolicy,
    Dtmf,
    PartyRole,
    PromptFinished,
    PromptStarted,
    RecordingGate,
    RecordingMode,
    resolve_mode,
)

RATE = 8000
SAMPLES = 160  # 20 ms
FRAME_SECONDS = SAMPLES / RATE


def frame(n: int) -> bytes:
    return bytes([(n % 250) + 1]) * (2 * SAMPLES)  # never silent, so blanking is visible


def machine(
    party: str, role: PartyRole, mode: RecordingMode = RecordingMode.OPT_IN
) -> ConsentMachine:
    resolution = resolve_mode(ConsentPolicy(default_mode=mode), CallContext("+12125550100"))
    return ConsentMachine(party, role, resolution, now=0.0, config=CaptureConfig())


def pump(gate: RecordingGate, party: str, first: int, last: int) -> list[bytes]:
    return [gate.admit(party, frame(n), n * FRAME_SECONDS) for n in range(first, last)]


@pytest.fixture
def gate() -> RecordingGate:
    gate = RecordingGate(sample_rate=RATE)
    gate.add_party(machine("caller", PartyRole.CALLER))
    gate.add_party(machine("agent", PartyRole.AGENT))
    return gate


def consent_granted_at(gate: RecordingGate, t: float) -> None:
    caller = gate.machine("caller")
    assert caller is not None
    caller.handle(PromptStarted(0.04))
    caller.handle(PromptFinished(t - 0.02))
    caller.handle(Dtmf(t, "1"))


def test_caller_is_silent_until_consent_then_passes_unchanged(gate: RecordingGate) -> None:
    consent_granted_at(gate, 0.1)
    out = pump(gate, "caller", 0, 10)
    assert out[:5] == [bytes(2 * SAMPLES)] * 5
    assert out[5:] == [frame(n) for n in range(5, 10)]
    assert [(i.reason, i.start_sample, i.end_sample) for i in gate.intervals("caller")] == [
        ("pending", 0, 320),  # frames 0-1 (prompt starts at 0.04)
        ("prompting", 320, 640),  # frames 2-3
        ("awaiting_answer", 640, 800),  # frame 4
    ]
    assert gate.position("caller") == 10 * SAMPLES


def test_pause_mid_frame_blanks_that_frame_and_resume_mid_frame_the_whole_frame(
    gate: RecordingGate,
) -> None:
    consent_granted_at(gate, 0.0 + 0.1)
    pump(gate, "caller", 0, 25)
    gate.pause_all(0.51)  # inside frame 25 [0.50, 0.52)
    gate.resume_all(0.71)  # inside frame 35 [0.70, 0.72)
    out = pump(gate, "caller", 25, 50)
    blank = bytes(2 * SAMPLES)
    assert out[:11] == [blank] * 11  # frames 25..35
    assert out[11:] == [frame(n) for n in range(36, 50)]
    assert all(len(o) == 2 * SAMPLES for o in out)
    pause = gate.intervals("caller")[-1]
    assert (pause.party, pause.reason, pause.start_sample, pause.end_sample) == (
        "caller",
        "paused",
        25 * SAMPLES,
        36 * SAMPLES,
    )
    assert (pause.start_time, pause.end_time) == pytest.approx((0.50, 0.72))
    assert pause.samples == 11 * SAMPLES == 1760


def test_pause_on_a_frame_boundary_takes_effect_on_the_next_frame(gate: RecordingGate) -> None:
    pump(gate, "agent", 0, 10)
    gate.pause_all(0.2)
    out = pump(gate, "agent", 9, 12)  # frame 9 is [0.18, 0.20): before the pause
    assert out == [frame(9), bytes(2 * SAMPLES), bytes(2 * SAMPLES)]


def test_pause_closes_every_sink_at_once_and_resume_reopens(gate: RecordingGate) -> None:
    consent_granted_at(gate, 0.1)
    assert gate.sinks_open("caller") and gate.sinks_open("agent")
    gate.pause_all(1.0)
    assert not gate.sinks_open("caller") and not gate.sinks_open("agent")
    gate.resume_all(2.0)
    assert gate.sinks_open("caller") and gate.sinks_open("agent")


def test_a_post_dated_resume_keeps_audio_spoken_before_it_out_of_every_sink(
    gate: RecordingGate,
) -> None:
    consent_granted_at(gate, 0.1)
    gate.pause_all(1.0)
    gate.resume_all(2.24)  # pressed at 2.0, post-dated by the jitter buffer's delay
    assert gate.sinks_open("caller")
    assert not gate.sinks_open("caller", 2.0) and not gate.sinks_open("caller", 2.22)
    assert gate.sinks_open("caller", 2.24) and gate.sinks_open("agent", 2.3)
    # The same stretch the recorder blanks.
    assert pump(gate, "caller", 100, 113) == [bytes(2 * SAMPLES)] * 12 + [frame(112)]


def test_withdrawal_of_one_party_leaves_the_other_recorded(gate: RecordingGate) -> None:
    consent_granted_at(gate, 0.1)
    gate.withdraw("caller", 0.3)
    assert not gate.sinks_open("caller") and gate.sinks_open("agent")
    assert pump(gate, "caller", 15, 17) == [bytes(2 * SAMPLES)] * 2
    assert pump(gate, "agent", 15, 17) == [frame(15), frame(16)]
    assert gate.intervals("caller")[-1].reason == "withdrawn"


def test_declined_party_stays_silent_for_the_whole_call(gate: RecordingGate) -> None:
    caller = gate.machine("caller")
    assert caller is not None
    caller.handle(PromptStarted(0.0))
    caller.handle(Dtmf(0.5, "2"))
    out = pump(gate, "caller", 0, 500)
    assert set(out) == {bytes(2 * SAMPLES)}
    assert not gate.sinks_open("caller")
    assert gate.intervals("caller")[-1].reason == "declined"
    assert gate.intervals("caller")[-1].end_sample == 500 * SAMPLES


def test_unknown_party_is_never_recorded() -> None:
    gate = RecordingGate(sample_rate=RATE)
    assert gate.admit("stranger", frame(1), 0.0) == bytes(2 * SAMPLES)
    assert not gate.sinks_open("stranger")
    assert gate.intervals("stranger")[0].reason == "unknown_party"


def test_party_added_after_frames_arrived_keeps_its_sample_position() -> None:
    gate = RecordingGate(sample_rate=RATE)
    gate.admit("agent", frame(0), 0.0)
    gate.add_party(machine("agent", PartyRole.AGENT))
    assert gate.admit("agent", frame(1), FRAME_SECONDS) == frame(1)
    assert gate.position("agent") == 2 * SAMPLES
    with pytest.raises(ValueError, match="already"):
        gate.add_party(machine("agent", PartyRole.AGENT))


def test_recording_off_blanks_everyone() -> None:
    gate = RecordingGate(sample_rate=RATE)
    gate.add_party(machine("agent", PartyRole.AGENT, RecordingMode.OFF))
    assert gate.admit("agent", frame(0), 0.0) == bytes(2 * SAMPLES)
    assert gate.intervals("agent")[0].reason == "off"


def test_odd_frame_length_is_refused(gate: RecordingGate) -> None:
    with pytest.raises(ValueError, match="whole number of samples"):
        gate.admit("agent", b"\x00\x01\x02", 0.0)


def test_admitted_frames_are_passed_through_without_copying(gate: RecordingGate) -> None:
    original = frame(3)
    assert gate.admit("agent", original, 0.0) is original
