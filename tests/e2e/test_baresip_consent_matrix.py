"""Every recording mode x every caller behaviour, with a real baresip caller (issue #6).

Modes ``off``, ``notify``, ``opt_in``, ``opt_out``; behaviours: presses the
accept key, presses the decline key, stays silent until the answer timeout,
hangs up during the prompt, withdraws mid-call (``*9``), and a secure
pause + resume on the call. Where a combination has no meaning (``off`` x
anything, a key pressed under ``notify``) the defined outcome is asserted:
``off`` plays no prompt and keeps nothing, ``notify`` ignores answer keys.

For every recorded call the test decrypts what is on disk and checks it
sample by sample against the gate's own account of the call:

* the caller channel is digital zero in exactly the stretches the recording's
  metadata lists as suppressed, and carries what baresip sent everywhere else
  (100 ms windows correlated with baresip's ``enc`` recording);
* those stretches start and end on the frames the gate semantics demand: the
  first frame kept is the first whose 20 ms lie wholly after the consent
  instant (or the resume, post-dated by the jitter guard), and a withdrawal or
  pause blanks everything from the next frame on at the latest;
* the consent evidence is stored, audited, and the recording points at the
  decision that allowed it; pause and resume are in the audit chain.

Secure pause/resume is asked for over HTTP, as a tenant admin, through the
gateway's admin API (``POST /api/v1/tenants/{tenant}/calls/{call_id}/secure-pause``
and ``…/secure-resume``), which acts through the live call's
:class:`~voicegw.calls.consent_flow.ConsentFlow` like the agent's softphone
does; the answer's ``at`` (the media-clock instant the change took effect) is
what the file is checked against. The call here has no agent leg (the echo
service answers it); under ``off`` there is nothing to pause and the route
says so (409).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import select

from tests.e2e import consent_gateway
from tests.e2e.consent_gateway import (
    EPS,
    FRAME,
    FRAME_SECONDS,
    NUMBER_URI,
    TENANT,
    WINDOW,
    Gateway,
    GatewayFactory,
    Pcm,
    Stretch,
    as_float,
    best_match,
    dial,
    merged,
    opens_at,
    recorded_files,
    requires_baresip,
    settings_for,
    stored_decisions,
    until,
)
from tests.e2e.peers import DOMAIN, EVENT_TIMEOUT, RATE, Baresip
from voicegw.calls.consent_flow import ConsentOutcome, FlowConfig
from voicegw.calls.sip_calls import InboundCall
from voicegw.consent import State
from voicegw.recording.container import decrypt
from voicegw.recording.metadata import interval_values, open_stored, wrapped_key_of
from voicegw.store import recordings as store
from voicegw.store.models import AuditEvent
from voicegw.tenant_settings import RecordingMode, TenantSettings

pytestmark = [pytest.mark.e2e, requires_baresip]

# The shared gateway and caller (tests/e2e/consent_gateway.py).
sessions = consent_gateway.sessions
clock = consent_gateway.clock
tts = consent_gateway.tts
prompt_audio = consent_gateway.prompt_audio
gateway = consent_gateway.gateway
source_wav = consent_gateway.source_wav
phone = consent_gateway.phone

TALK = 60  # packets (1.2 s) of echoed audio per stretch the test inspects
GUARD = FlowConfig().open_guard
#: A caller number in an all-party-consent jurisdiction (US-CA, area code 415).
ALL_PARTY_CALLER = "+14155550123"


class Behaviour(enum.StrEnum):
    YES = "yes"
    NO = "no"
    SILENCE = "silence"
    HANGUP_IN_PROMPT = "hangup-in-prompt"
    WITHDRAW = "withdraw"
    PAUSE = "pause"


@dataclasses.dataclass(frozen=True)
class Expected:
    """The caller's stored decisions (decision, reason) in order, and whether a file exists."""

    decisions: tuple[tuple[str, str], ...]
    recorded: bool


NOTICE = ("notice-only", "notice_played")
YES = ("granted", "answered_yes")
HUNG_UP = ("declined", "hangup_before_answer")
WITHDRAWN = ("withdrawn", "withdrawn")

#: mode -> behaviour -> what must hold. ``off`` has no flow at all: no decision is stored.
OUTCOMES: dict[str, dict[Behaviour, Expected]] = {
    "off": {b: Expected((), recorded=False) for b in Behaviour},
    "notify": {
        # notify asks nothing: answer keys pressed during the notice change nothing.
        Behaviour.YES: Expected((NOTICE,), recorded=True),
        Behaviour.NO: Expected((NOTICE,), recorded=True),
        Behaviour.SILENCE: Expected((NOTICE,), recorded=True),
        Behaviour.HANGUP_IN_PROMPT: Expected((HUNG_UP,), recorded=False),
        Behaviour.WITHDRAW: Expected((NOTICE, WITHDRAWN), recorded=True),
        Behaviour.PAUSE: Expected((NOTICE,), recorded=True),
    },
    "opt_in": {
        Behaviour.YES: Expected((YES,), recorded=True),
        Behaviour.NO: Expected((("declined", "answered_no"),), recorded=False),
        Behaviour.SILENCE: Expected((("declined", "no_answer_timeout"),), recorded=False),
        Behaviour.HANGUP_IN_PROMPT: Expected((HUNG_UP,), recorded=False),
        Behaviour.WITHDRAW: Expected((YES, WITHDRAWN), recorded=True),
        Behaviour.PAUSE: Expected((YES,), recorded=True),
    },
    "opt_out": {
        Behaviour.YES: Expected((YES,), recorded=True),
        Behaviour.NO: Expected((("declined", "opted_out"),), recorded=False),
        Behaviour.SILENCE: Expected((("granted", "no_objection_in_window"),), recorded=True),
        Behaviour.HANGUP_IN_PROMPT: Expected((HUNG_UP,), recorded=False),
        Behaviour.WITHDRAW: Expected((YES, WITHDRAWN), recorded=True),
        Behaviour.PAUSE: Expected((YES,), recorded=True),
    },
}

CASES = [(mode, b) for mode, table in OUTCOMES.items() for b in table]


# --- what the caller does -------------------------------------------------------------------------


@dataclasses.dataclass
class Instants:
    """Media-clock instants the test caused, for the checks on the file."""

    paused: float | None = None
    resumed: float | None = None


async def talk(call: InboundCall, packets: int = TALK) -> None:
    """Let ``packets`` more echoed packets (20 ms each) go to baresip."""
    sent = call.transport.leg.summary().packets_sent
    await until(lambda: call.transport.leg.summary().packets_sent >= sent + packets)


async def press(phone: Baresip, keys: str) -> None:
    for key in keys:
        await phone.command("sndcode", key)


async def hang_up(phone: Baresip) -> None:
    await phone.command("hangup")
    assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"


async def until_recording_allowed(gw: Gateway, mode: str, phone: Baresip) -> None:
    """Get the caller to a recording state the quickest way the mode offers."""
    if mode == "notify":
        await gw.state(State.NOTICE_ONLY)
        return
    await gw.state(State.AWAITING_ANSWER)
    await press(phone, "1")
    assert (await gw.state(State.GRANTED, State.DECLINED)).state is State.GRANTED


async def secure(gw: Gateway, action: str, call_id: str) -> float:
    """Pause or resume over the admin API; the media-clock instant it took effect."""
    status, body = await gw.secure(action, call_id)
    assert status == 200, body
    paused = action == "pause"
    assert body["call_id"] == call_id
    assert body["recording"] == {
        "state": "paused" if paused else "recording",
        "secure_pause": paused,
    }
    at: float = body["at"]
    return at


async def act_with_consent(
    gw: Gateway, call: InboundCall, phone: Baresip, mode: str, behaviour: Behaviour
) -> Instants:
    """Play ``behaviour`` on a call whose mode asks or notifies; returns when baresip hung up."""
    instants = Instants()
    if behaviour is Behaviour.HANGUP_IN_PROMPT:
        await gw.state(State.PROMPTING)
        await hang_up(phone)
        return instants
    if behaviour in (Behaviour.YES, Behaviour.NO):
        key = "1" if behaviour is Behaviour.YES else "2"
        if mode == "notify":  # no question: a key pressed while the notice plays
            await gw.state(State.PROMPTING)
            await press(phone, key)
            await gw.state(State.NOTICE_ONLY)
        else:
            await gw.state(State.AWAITING_ANSWER)
            await press(phone, key)
            await gw.state(State.GRANTED, State.DECLINED)
    elif behaviour is Behaviour.SILENCE:
        await gw.state(State.NOTICE_ONLY, State.GRANTED, State.DECLINED)
    elif behaviour is Behaviour.WITHDRAW:
        await until_recording_allowed(gw, mode, phone)
        await talk(call)
        await press(phone, "*9")
        await gw.state(State.WITHDRAWN)
    elif behaviour is Behaviour.PAUSE:
        await until_recording_allowed(gw, mode, phone)
        await talk(call)
        instants.paused = await secure(gw, "pause", call.id)
        await talk(call)
        instants.resumed = await secure(gw, "resume", call.id)
    await talk(call, TALK + 15)  # the resume opens GUARD late: keep a second to compare
    await hang_up(phone)
    return instants


async def act_without_flow(
    gw: Gateway, call: InboundCall, phone: Baresip, behaviour: Behaviour
) -> None:
    """``off``: the same keys and actions; there is no prompt and no flow to act on."""
    if behaviour is Behaviour.HANGUP_IN_PROMPT:
        await hang_up(phone)
        return
    keys = {Behaviour.YES: "1", Behaviour.NO: "2", Behaviour.WITHDRAW: "*9"}.get(behaviour, "")
    await talk(call, 10)
    await press(phone, keys)
    if behaviour is Behaviour.PAUSE:
        status, body = await gw.secure("pause", call.id)
        assert (status, body["error"]["code"]) == (409, "not_recording"), body
    await talk(call)
    await hang_up(phone)


# --- checks ---------------------------------------------------------------------------------------


def closes_at(stretch: Stretch, instant: float) -> None:
    """Recording closed at ``instant`` and took effect on the next frame at the latest.

    The frame ``instant`` lands in is blank if the tick came after it, and kept if
    it was already through the gate: its audio left the jitter buffer at the
    frame's start, so it was spoken before ``instant`` either way.
    """
    assert instant - FRAME_SECONDS - EPS < stretch.start_time < instant + FRAME_SECONDS + EPS, (
        stretch,
        instant,
    )


def allowing(outcome: ConsentOutcome) -> tuple[float, int]:
    """(instant, stored record id) of the caller decision that allowed recording."""
    decision = next(d for d in outcome.decisions if d.party == "caller" and d.allows_recording)
    stored = next(
        s for s in outcome.stored if s.party == "caller" and s.decision == decision.decision.value
    )
    return decision.decided_at, stored.record_id


def matches_what_baresip_sent(audio: npt.NDArray[np.int16], sent: Pcm) -> None:
    """``audio`` is what baresip sent, in order, frame by frame.

    The whole stretch is aligned with baresip's own recording of what it sent (one
    unambiguous lag: the chirps never repeat); then each 20 ms frame must be found
    within 100 ms of that lag, because the jitter buffer may drop or repeat a frame
    when it adapts, and a key press replaces audio with RFC 4733 events. Frames so
    spoilt may miss, no more than 1 in 10. (A single 20 ms frame correlates at
    0.85-1.0 with its own original, against about 0 for silence.)
    """
    pcm = as_float(audio)
    assert len(pcm) >= 8 * WINDOW, len(pcm)
    _, lag = best_match(pcm, sent)
    reach = WINDOW
    scores = []
    for k in range(0, len(pcm) - FRAME + 1, FRAME):
        lo = max(0, k + lag - reach)
        near = sent[lo : k + lag + reach + FRAME]
        scores.append(best_match(pcm[k : k + FRAME], near)[0] if len(near) >= FRAME else 0.0)
    good = sum(s > 0.8 for s in scores)
    assert good >= 0.9 * len(scores), " ".join(f"{s:.2f}" for s in scores)


async def check_recording(
    gw: Gateway, phone: Baresip, outcome: ConsentOutcome, call_id: str, instants: Instants
) -> None:
    result = outcome.recording
    assert result is not None and result.complete
    assert outcome.first_frame_time is not None
    async with gw.sessions() as session:
        row = await store.get_recording(session, TENANT, result.recording_id)
    assert row is not None and row.state == "finished" and row.call_id == call_id
    consent_at, record_id = allowing(outcome)
    assert row.consent_record_id == record_id, "the recording must rest on the allowing decision"
    with open_stored(gw.storage, row) as handle:
        plaintext = decrypt(handle, gw.keyring, wrapped_key=wrapped_key_of(row))
    stereo = np.frombuffer(plaintext, dtype="<i2").reshape(-1, 2)
    caller = stereo[:, 0]
    assert row.duration_seconds == pytest.approx(len(caller) / RATE)

    # The metadata lists exactly the gate's suppressed stretches, in file samples.
    gate_caller = outcome.intervals["caller"]
    assert [i for i in row.intervals if i["party"] == "caller"] == interval_values(gate_caller)
    stretches = merged(gate_caller)

    # Where the gate blanked the caller, the file holds digital zero: sample for sample.
    for s in stretches:
        assert not caller[s.start_sample : s.end_sample].any(), s
    # Before consent: blank from the first frame up to the consent instant.
    lead, *rest = stretches
    assert lead.start_sample == 0 and lead.start_time == pytest.approx(outcome.first_frame_time)
    opens_at(lead, consent_at)
    expected_more = 0
    if instants.paused is not None:
        assert instants.resumed is not None
        expected_more = 1
        (pause,) = rest
        assert set(pause.reasons) == {"paused"}
        closes_at(pause, instants.paused)
        opens_at(pause, instants.resumed + GUARD)
        # Every sink at once: the agent channel is paused over the same frames.
        agent = [i for i in outcome.intervals["agent"] if i.reason == "paused"]
        assert [(i.start_sample, i.end_sample) for i in agent] == [
            (pause.start_sample, pause.end_sample)
        ]
    withdrawals = [
        d.decided_at
        for d in outcome.decisions
        if d.party == "caller" and d.decision.value == "withdrawn"
    ]
    if withdrawals:
        expected_more = 1
        (withdrawn,) = rest
        assert set(withdrawn.reasons) == {"withdrawn"}
        closes_at(withdrawn, withdrawals[0])
        assert withdrawn.end_sample == len(caller), "nothing after a withdrawal"
    assert len(rest) == expected_more, stretches

    # Everywhere else the file carries what baresip sent, in order.
    sent = phone.recording("enc")
    ends = [s.start_sample for s in rest] + [len(caller)]
    kept = [(s.end_sample, end) for s, end in zip(stretches, ends, strict=True)]
    for start, end in kept:
        if end > start:  # nothing is kept after a withdrawal
            matches_what_baresip_sent(caller[start + FRAME : end - FRAME], sent)

    if instants.paused is not None:
        async with gw.sessions() as session:
            actions = (
                await session.execute(
                    select(AuditEvent.action, AuditEvent.actor)
                    .where(
                        AuditEvent.tenant_id == TENANT,
                        AuditEvent.target == f"tenant/{TENANT}/calls/{call_id}",
                    )
                    .order_by(AuditEvent.seq)
                )
            ).all()
        # In the audit chain, in order, with the token that asked for each over HTTP.
        actor = f"token:{gw.admin_token_id}"
        assert [(a, who) for a, who in actions if a.startswith("call.secure")] == [
            ("call.secure_pause", actor),
            ("call.secure_resume", actor),
        ]


async def check_nothing_kept(gw: Gateway, call_id: str) -> None:
    async with gw.sessions() as session:
        assert await store.list_recordings(session, TENANT, call_id=call_id) == []
    assert recorded_files(gw) == []


# --- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "behaviour"), CASES, ids=[f"{m}-{b}" for m, b in CASES])
async def test_recording_mode_and_caller_behaviour_give_exactly_the_defined_file(
    gateway: GatewayFactory,
    phone: Baresip,
    mode: RecordingMode,
    behaviour: Behaviour,
) -> None:
    expected = OUTCOMES[mode][behaviour]
    async with gateway(settings_for(mode)) as gw:
        call = await dial(gw, phone)
        if mode == "off":
            await act_without_flow(gw, call, phone, behaviour)
            outcome = None
            await asyncio.wait_for(call.ended.wait(), EVENT_TIMEOUT)
        else:
            instants = await act_with_consent(gw, call, phone, mode, behaviour)
            call_id, outcome = await gw.outcome()
            assert call_id == call.id

    caller_decisions = [(d, r) for p, d, r in await stored_decisions(gw, call.id) if p == "caller"]
    assert caller_decisions == list(expected.decisions)
    if outcome is None:
        # off: no flow at all, so no prompt, no state, no decision, nothing kept.
        assert gw.states.empty() and gw.outcomes.empty()
        await check_nothing_kept(gw, call.id)
        return
    assert outcome.resolution.mode.value == mode
    if expected.recorded:
        assert len(recorded_files(gw)) == 1
        await check_recording(gw, phone, outcome, call.id, instants)
    else:
        assert outcome.recording is None
        await check_nothing_kept(gw, call.id)


# --- all-party consent ----------------------------------------------------------------------------


async def dial_as_public_caller(gw: Gateway, phone: Baresip, number: str) -> InboundCall:
    """Call the tenant number from ``number`` without credentials (as a carrier trunk would)."""
    account = (
        f"<sip:{number}@{DOMAIN};transport=udp>"
        f';outbound="sip:127.0.0.1:{gw.port};transport=udp";regint=0'
    )
    await phone.command("uanew", account)
    await phone.command("dial", NUMBER_URI)
    call = await asyncio.wait_for(gw.offered.get(), EVENT_TIMEOUT)
    assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    return call


def all_party_notify() -> TenantSettings:
    return settings_for("notify").model_copy(update={"all_party_consent_jurisdictions": ("US-CA",)})


@pytest.mark.parametrize("answers", ["1", ""], ids=["presses-1", "silent"])
async def test_all_party_consent_caller_under_notify_is_asked_and_honoured(
    gateway: GatewayFactory, phone: Baresip, answers: str
) -> None:
    async with gateway(all_party_notify()) as gw:
        call = await dial_as_public_caller(gw, phone, ALL_PARTY_CALLER)
        # Asked, not merely told: the question waits for an answer.
        await gw.state(State.AWAITING_ANSWER)
        await press(phone, answers)
        decided = await gw.state(State.GRANTED, State.DECLINED)
        await talk(call)
        await hang_up(phone)
        _, outcome = await gw.outcome()

    resolution = outcome.resolution
    assert (resolution.mode.value, resolution.rule.value) == ("opt_in", "jurisdiction")
    assert (resolution.configured_mode.value, resolution.jurisdiction) == ("notify", "US-CA")
    async with gw.sessions() as session:
        (record,) = [
            r for r in await store.list_consent_records(session, TENANT, call.id)
            if r.party == "caller"
        ]  # fmt: skip
    assert (record.mode, record.policy_rule, record.jurisdiction) == (
        "opt_in",
        "jurisdiction",
        "US-CA",
    )
    if answers:
        assert decided.state is State.GRANTED and record.decision == "granted"
        await check_recording(gw, phone, outcome, call.id, Instants())
    else:
        assert decided.state is State.DECLINED
        assert (record.decision, record.evidence["reason"]) == ("declined", "no_answer_timeout")
        assert outcome.recording is None
        await check_nothing_kept(gw, call.id)


async def test_caller_outside_the_all_party_jurisdictions_gets_the_tenants_notice(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway(all_party_notify()) as gw:
        call = await dial_as_public_caller(gw, phone, "+4930901821")  # DE: not listed
        await gw.state(State.NOTICE_ONLY)
        await talk(call)
        await hang_up(phone)
        _, outcome = await gw.outcome()
    assert (outcome.resolution.mode.value, outcome.resolution.rule.value) == (
        "notify",
        "tenant_default",
    )
    await check_recording(gw, phone, outcome, call.id, Instants())
