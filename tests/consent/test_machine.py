"""Per-party consent machine: every mode × caller behaviour, decision records, timelines."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from voicegw.consent import (
    CallContext,
    CaptureConfig,
    ConsentEvent,
    ConsentInput,
    ConsentMachine,
    ConsentPolicy,
    Decision,
    DecisionMade,
    Dtmf,
    DtmfKeys,
    Hangup,
    Method,
    ModeResolution,
    PartyRole,
    Pause,
    PermissionChanged,
    PromptFinished,
    PromptRef,
    PromptStarted,
    RecordingMode,
    Resume,
    Rule,
    Speech,
    State,
    StopPrompt,
    Withdraw,
    resolve_mode,
)
from voicegw.consent.machine import INITIAL_STATE, TRANSITIONS

PROMPT = PromptRef.for_content("This call may be recorded. Press 1 to agree, 2 to decline.", "v3")
PROBES = (0.5, 3.0, 5.5, 7.0, 12.0, 14.0, 20.0, 31.0)
ANSWER_TIMEOUT = 8.0  # prompt finishes at 5 -> window closes at 13

# Caller behaviours: prompt plays from t=1 to t=5, an answer (if any) comes at t=6.
ASKED: tuple[ConsentInput, ...] = (PromptStarted(1.0), PromptFinished(5.0))
BEHAVIOURS: dict[str, tuple[ConsentInput, ...]] = {
    "yes_key": (*ASKED, Dtmf(6.0, "1")),
    "no_key": (*ASKED, Dtmf(6.0, "2")),
    "yes_speech": (*ASKED, Speech(6.0, "Yeah, sure.", 0.92)),
    "no_speech": (*ASKED, Speech(6.0, "No thanks", 0.88)),
    "mumble": (*ASKED, Speech(6.0, "yes", 0.3)),  # below the confidence floor: no answer
    "silence": ASKED,
    "hangup_in_prompt": (PromptStarted(1.0), Hangup(3.0)),
    "withdraw_mid_call": (*ASKED, Dtmf(6.0, "1"), Dtmf(30.0, "*"), Dtmf(30.5, "9")),
    "pause_resume": (*ASKED, Dtmf(6.0, "1"), Pause(10.0), Resume(15.0)),
}

# mode -> behaviour -> (decisions in order, may_record at each PROBE as T/F)
EXPECTED: dict[RecordingMode, dict[str, tuple[tuple[Decision, ...], str]]] = {
    RecordingMode.NOTIFY: {
        "yes_key": ((Decision.NOTICE_ONLY,), "FFTTTTTT"),
        "no_key": ((Decision.NOTICE_ONLY,), "FFTTTTTT"),  # a notice offers no choice
        "yes_speech": ((Decision.NOTICE_ONLY,), "FFTTTTTT"),
        "no_speech": ((Decision.NOTICE_ONLY,), "FFTTTTTT"),
        "mumble": ((Decision.NOTICE_ONLY,), "FFTTTTTT"),
        "silence": ((Decision.NOTICE_ONLY,), "FFTTTTTT"),
        "hangup_in_prompt": ((Decision.DECLINED,), "FFFFFFFF"),
        "withdraw_mid_call": ((Decision.NOTICE_ONLY, Decision.WITHDRAWN), "FFTTTTTF"),
        "pause_resume": ((Decision.NOTICE_ONLY,), "FFTTFFTT"),
    },
    RecordingMode.OPT_IN: {
        "yes_key": ((Decision.GRANTED,), "FFFTTTTT"),
        "no_key": ((Decision.DECLINED,), "FFFFFFFF"),
        "yes_speech": ((Decision.GRANTED,), "FFFTTTTT"),
        "no_speech": ((Decision.DECLINED,), "FFFFFFFF"),
        "mumble": ((Decision.DECLINED,), "FFFFFFFF"),  # times out
        "silence": ((Decision.DECLINED,), "FFFFFFFF"),
        "hangup_in_prompt": ((Decision.DECLINED,), "FFFFFFFF"),
        "withdraw_mid_call": ((Decision.GRANTED, Decision.WITHDRAWN), "FFFTTTTF"),
        "pause_resume": ((Decision.GRANTED,), "FFFTFFTT"),
    },
    RecordingMode.OPT_OUT: {
        "yes_key": ((Decision.GRANTED,), "FFFTTTTT"),
        "no_key": ((Decision.DECLINED,), "FFFFFFFF"),
        "yes_speech": ((Decision.GRANTED,), "FFFTTTTT"),
        "no_speech": ((Decision.DECLINED,), "FFFFFFFF"),
        "mumble": ((Decision.GRANTED,), "FFFFFTTT"),  # no objection in the window
        "silence": ((Decision.GRANTED,), "FFFFFTTT"),
        "hangup_in_prompt": ((Decision.DECLINED,), "FFFFFFFF"),
        "withdraw_mid_call": ((Decision.GRANTED, Decision.WITHDRAWN), "FFFTTTTF"),
        "pause_resume": ((Decision.GRANTED,), "FFFTFFTT"),
    },
    RecordingMode.OFF: {name: ((Decision.OFF,), "FFFFFFFF") for name in BEHAVIOURS},
}


def resolution(mode: RecordingMode) -> ModeResolution:
    return resolve_mode(ConsentPolicy(default_mode=mode), CallContext("+12125550100"))


def machine(
    mode: RecordingMode, role: PartyRole = PartyRole.CALLER, keys: DtmfKeys | None = None
) -> ConsentMachine:
    config = CaptureConfig(keys=keys or DtmfKeys(), answer_timeout=ANSWER_TIMEOUT)
    return ConsentMachine("caller", role, resolution(mode), now=0.0, prompt=PROMPT, config=config)


def run(
    consent: ConsentMachine, script: Sequence[ConsentInput], until: float = 40.0
) -> list[ConsentEvent]:
    """Feed inputs in order, firing deadlines that fall before each input, as a call loop would."""
    events: list[ConsentEvent] = []
    for step in (*script, None):
        horizon = until if step is None else step.at
        for _ in range(10):  # bounded: each timeout closes the window it belongs to
            deadline = consent.next_deadline()
            if deadline is None or deadline > horizon:
                break
            events.extend(consent.handle_timeout(deadline))
        if step is not None:
            events.extend(consent.handle(step))
    return events


def current(consent: ConsentMachine) -> State:
    """The state, read through a call so type checkers do not pin it between inputs."""
    return consent.state


def timeline(consent: ConsentMachine) -> str:
    return "".join("T" if consent.may_record(t) else "F" for t in PROBES)


@pytest.mark.parametrize("mode", list(RecordingMode))
@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
def test_mode_and_caller_behaviour_give_expected_decisions_and_timeline(
    mode: RecordingMode, behaviour: str
) -> None:
    consent = machine(mode)
    events = run(consent, BEHAVIOURS[behaviour])
    decisions, expected_timeline = EXPECTED[mode][behaviour]
    assert tuple(d.decision for d in consent.decisions) == decisions
    made = tuple(e.record.decision for e in events if isinstance(e, DecisionMade))
    initial = (Decision.OFF,) if mode is RecordingMode.OFF else ()
    assert initial + made == decisions
    assert timeline(consent) == expected_timeline


def test_opt_in_yes_by_key_records_full_evidence() -> None:
    consent = machine(RecordingMode.OPT_IN)
    run(consent, BEHAVIOURS["yes_key"])
    record = consent.decision
    assert record is not None
    assert (record.decision, record.method, record.evidence.digit) == (
        Decision.GRANTED,
        Method.DTMF,
        "1",
    )
    assert record.evidence.reason == "answered_yes"
    assert record.prompt == PROMPT
    assert record.prompt.version == "v3" and len(record.prompt.sha256) == 64
    assert (record.prompt_started_at, record.decided_at) == (1.0, 6.0)
    assert record.policy.rule is Rule.TENANT_DEFAULT
    assert record.allows_recording


def test_opt_in_yes_by_speech_keeps_words_and_confidence() -> None:
    consent = machine(RecordingMode.OPT_IN)
    run(consent, BEHAVIOURS["yes_speech"])
    record = consent.decision
    assert record is not None
    assert (record.method, record.evidence.words, record.evidence.confidence) == (
        Method.SPEECH,
        "Yeah, sure.",
        0.92,
    )


def test_opt_in_silence_declines_at_the_deadline_with_reason() -> None:
    consent = machine(RecordingMode.OPT_IN)
    consent.handle(PromptStarted(1.0))
    consent.handle(PromptFinished(5.0))
    assert consent.next_deadline() == 13.0
    assert consent.handle_timeout(12.9) == ()
    (event,) = consent.handle_timeout(13.0)
    assert isinstance(event, DecisionMade)
    assert (event.record.decision, event.record.method, event.record.evidence.reason) == (
        Decision.DECLINED,
        Method.NONE,
        "no_answer_timeout",
    )
    assert consent.next_deadline() is None


def test_opt_out_silence_grants_by_no_objection() -> None:
    consent = machine(RecordingMode.OPT_OUT)
    run(consent, BEHAVIOURS["silence"])
    record = consent.decision
    assert record is not None
    assert (record.decision, record.method, record.evidence.reason, record.decided_at) == (
        Decision.GRANTED,
        Method.NONE,
        "no_objection_in_window",
        13.0,
    )


def test_notify_decision_is_notice_when_the_prompt_finished() -> None:
    consent = machine(RecordingMode.NOTIFY)
    run(consent, ASKED)
    record = consent.decision
    assert record is not None
    assert (record.decision, record.method, record.decided_at) == (
        Decision.NOTICE_ONLY,
        Method.NOTICE,
        5.0,
    )


def test_hangup_during_prompt_is_a_decline_with_reason() -> None:
    consent = machine(RecordingMode.OPT_IN)
    run(consent, BEHAVIOURS["hangup_in_prompt"])
    record = consent.decision
    assert record is not None
    assert (record.decision, record.evidence.reason, record.decided_at) == (
        Decision.DECLINED,
        "hangup_before_answer",
        3.0,
    )
    assert current(consent) is State.DECLINED


def test_answer_during_the_prompt_stops_the_prompt() -> None:
    consent = machine(RecordingMode.OPT_IN)
    consent.handle(PromptStarted(1.0))
    events = consent.handle(Dtmf(2.5, "1"))
    assert events[0] == StopPrompt(2.5)
    assert isinstance(events[1], DecisionMade)
    assert events[2] == PermissionChanged(2.5, True, State.GRANTED)
    assert consent.handle(PromptFinished(5.0)) == ()  # late prompt end changes nothing


def test_withdraw_sequence_records_the_keys_and_stops_recording() -> None:
    consent = machine(RecordingMode.OPT_IN)
    events = run(consent, BEHAVIOURS["withdraw_mid_call"])
    record = consent.decision
    assert record is not None
    assert (record.decision, record.method, record.evidence.digit, record.decided_at) == (
        Decision.WITHDRAWN,
        Method.DTMF,
        "*9",
        30.5,
    )
    assert PermissionChanged(30.5, False, State.WITHDRAWN) in events
    assert consent.may_record(30.4) and not consent.may_record(30.5)


def test_withdraw_sequence_too_slow_is_not_a_withdrawal() -> None:
    consent = machine(RecordingMode.OPT_IN)
    run(consent, (*ASKED, Dtmf(6.0, "1"), Dtmf(30.0, "*"), Dtmf(34.0, "9")))
    assert current(consent) is State.GRANTED


def test_configurable_keys() -> None:
    keys = DtmfKeys(yes="5", no="6", opt_out="9", withdraw_sequence="##")
    opt_in = machine(RecordingMode.OPT_IN, keys=keys)
    run(opt_in, (*ASKED, Dtmf(6.0, "1"), Dtmf(7.0, "5")))
    assert current(opt_in) is State.GRANTED
    run(opt_in, (Dtmf(20.0, "#"), Dtmf(20.2, "#")))
    assert current(opt_in) is State.WITHDRAWN
    opt_out = machine(RecordingMode.OPT_OUT, keys=keys)
    run(opt_out, (*ASKED, Dtmf(6.0, "9")))
    assert current(opt_out) is State.DECLINED


def test_conversation_after_consent_does_not_withdraw() -> None:
    consent = machine(RecordingMode.OPT_IN)
    run(
        consent, (*BEHAVIOURS["yes_key"], Speech(20.0, "no, no, that's wrong", 0.99), Dtmf(21, "2"))
    )
    assert current(consent) is State.GRANTED


def test_explicit_withdraw_before_answer_declines() -> None:
    consent = machine(RecordingMode.OPT_IN)
    events = run(consent, (PromptStarted(1.0), Withdraw(2.0)))
    assert StopPrompt(2.0) in events
    record = consent.decision
    assert record is not None
    assert (record.decision, record.evidence.reason) == (
        Decision.DECLINED,
        "withdrawn_before_answer",
    )


def test_pause_before_consent_holds_after_consent_until_resume() -> None:
    consent = machine(RecordingMode.OPT_IN)
    run(consent, (PromptStarted(1.0), Pause(2.0), Dtmf(3.0, "1")))
    assert current(consent) is State.PAUSED and not consent.may_record_now()
    run(consent, (Resume(9.0),))
    assert current(consent) is State.GRANTED
    assert [consent.may_record(t) for t in (2.5, 4.0, 9.0)] == [False, False, True]


def test_hangup_after_decision_ends_recording_without_a_new_decision() -> None:
    consent = machine(RecordingMode.OPT_IN)
    run(consent, (*BEHAVIOURS["yes_key"], Hangup(50.0)), until=60)
    assert current(consent) is State.ENDED
    assert [d.decision for d in consent.decisions] == [Decision.GRANTED]
    assert consent.may_record(49.0) and not consent.may_record(50.0)
    assert consent.handle(Resume(51.0)) == ()


def test_agent_consent_is_not_required_but_pause_still_applies() -> None:
    consent = machine(RecordingMode.OPT_IN, role=PartyRole.AGENT)
    assert current(consent) is State.NOT_REQUIRED
    record = consent.decision
    assert record is not None
    assert (record.decision, record.evidence.reason) == (Decision.NOT_REQUIRED, "agent_party")
    run(consent, (Pause(10.0), Resume(15.0)))
    assert timeline(consent) == "TTTTFFTT"


def test_late_inputs_are_clamped_to_keep_the_timeline_ordered() -> None:
    consent = machine(RecordingMode.OPT_IN)
    run(consent, (PromptStarted(1.0), Dtmf(6.0, "1")))
    consent.handle(Pause(4.0))  # arrives late: takes effect now, not in the past
    assert consent.may_record(6.0) is False
    assert consent.timeline[-1] == (6.0, False, State.PAUSED)


def test_nothing_is_allowed_before_the_machine_existed() -> None:
    consent = machine(RecordingMode.OPT_IN, role=PartyRole.AGENT)
    assert consent.may_record(0.0) and not consent.may_record(-1.0)


def test_status_during_a_span_blocks_if_any_part_is_blocked() -> None:
    consent = machine(RecordingMode.OPT_IN, role=PartyRole.AGENT)
    run(consent, (Pause(10.01), Resume(10.5)))
    assert consent.status_during(9.98, 10.0) == (True, State.NOT_REQUIRED)
    assert consent.status_during(10.0, 10.02) == (False, State.PAUSED)
    assert consent.status_during(10.5, 10.52) == (True, State.NOT_REQUIRED)


def test_transition_table_is_complete_and_only_names_known_states() -> None:
    assert set(TRANSITIONS) == set(RecordingMode)
    for table in TRANSITIONS.values():
        for (state, _), step in table.items():
            assert state is not State.ENDED and state is not State.PAUSED
            assert isinstance(step.target, State) and step.reason
    assert {mode for mode, _ in INITIAL_STATE} == set(RecordingMode)
