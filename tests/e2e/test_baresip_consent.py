"""A real baresip dials a tenant number behind ``with_consent``: prompt, DTMF, encrypted recording.

The gateway is the real stack in process (SipService + SipCalls + the consent
wrapper around the echo service, eSpeak prompts, the recorder with
LocalFilesystemStorage and LocalKeyring on SQLite). baresip runs headless with
``aufile`` as its microphone (non-repeating tones and chirps made here),
``sndfile`` writing what it sends and receives, and ``ctrl_tcp`` to dial, send
digits and hang up. Every wait is on an event (baresip's ctrl_tcp events, the
wrapper's consent state changes, the flow's outcome) bounded by a timeout;
nothing is timed with sleeps.

What is checked on the decrypted file: the caller channel is digital silence
up to the consent instant the flow stored, and after it carries what baresip
sent (normalised correlation with baresip's own ``enc`` recording).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.e2e import consent_gateway
from tests.e2e.consent_gateway import (
    ANSWER_TIMEOUT,
    INPUT_SECONDS,
    RATE,
    RECORDED_PACKETS,
    TENANT,
    Baresip,
    GatewayFactory,
    Pcm,
    as_float,
    caller_decision_at,
    check_recorded_from,
    dial,
    recorded_files,
    requires_baresip,
    settings_for,
    spectral_match,
    stored_decisions,
    talk_then_hang_up,
    tone_sequence,
)
from voicegw.asr.pocketsphinx_local import PocketsphinxAsr
from voicegw.asr.registry import AsrRegistry
from voicegw.consent import State
from voicegw.privacy.registry import Registry
from voicegw.store import recordings as store
from voicegw.tenant_settings import ConsentCapture, SpokenAnswers
from voicegw.tts.espeak_local import EspeakTts

pytestmark = [pytest.mark.e2e, requires_baresip]

# The shared gateway and caller (tests/e2e/consent_gateway.py).
sessions = consent_gateway.sessions
clock = consent_gateway.clock
tts = consent_gateway.tts
prompt_audio = consent_gateway.prompt_audio
gateway = consent_gateway.gateway
source_wav = consent_gateway.source_wav
phone = consent_gateway.phone


# --- the calls ----------------------------------------------------------------------------------


async def test_opt_in_caller_presses_1_after_the_prompt_and_is_recorded_from_the_key_on(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway(settings_for("opt_in")) as gw:
        call = await dial(gw, phone)
        await gw.state(State.AWAITING_ANSWER)
        await phone.command("sndcode", "1")
        granted = await gw.state(State.GRANTED, State.DECLINED)
        assert granted.state is State.GRANTED and granted.call_id == call.id
        await talk_then_hang_up(call, phone)
        call_id, outcome = await gw.outcome()

    assert call_id == call.id
    assert sorted(await stored_decisions(gw, call.id)) == [
        ("agent", "not-required", "agent_party"),
        ("caller", "granted", "answered_yes"),
    ]
    assert len(recorded_files(gw)) == 1
    await check_recorded_from(gw, phone, outcome, caller_decision_at(outcome))


async def test_opt_in_caller_presses_2_and_nothing_is_recorded(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway(settings_for("opt_in")) as gw:
        call = await dial(gw, phone)
        await gw.state(State.AWAITING_ANSWER)
        await phone.command("sndcode", "2")
        assert (await gw.state(State.GRANTED, State.DECLINED)).state is State.DECLINED
        await talk_then_hang_up(call, phone)
        _, outcome = await gw.outcome()

    assert outcome.recording is None
    assert ("caller", "declined", "answered_no") in await stored_decisions(gw, call.id)
    async with gw.sessions() as session:
        assert await store.list_recordings(session, TENANT, call_id=call.id) == []
    assert recorded_files(gw) == []


async def test_opt_in_silent_caller_is_declined_at_the_timeout_and_nothing_is_recorded(
    gateway: GatewayFactory, phone: Baresip
) -> None:
    async with gateway(settings_for("opt_in")) as gw:
        call = await dial(gw, phone)
        asked = await gw.state(State.AWAITING_ANSWER)
        declined = await gw.state(State.GRANTED, State.DECLINED)
        assert declined.state is State.DECLINED
        assert declined.at - asked.at >= ANSWER_TIMEOUT - 0.05
        await phone.command("hangup")
        assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"
        _, outcome = await gw.outcome()

    assert outcome.recording is None
    assert ("caller", "declined", "no_answer_timeout") in await stored_decisions(gw, call.id)
    assert recorded_files(gw) == []


async def test_notify_prompt_is_heard_by_baresip_and_recording_starts_after_the_notice(
    gateway: GatewayFactory, phone: Baresip, prompt_audio: Pcm
) -> None:
    async with gateway(settings_for("notify")) as gw:
        call = await dial(gw, phone)
        noticed = await gw.state(State.NOTICE_ONLY)
        await talk_then_hang_up(call, phone)
        _, outcome = await gw.outcome()

    # What baresip received holds the prompt, as eSpeak itself says it.
    assert spectral_match(prompt_audio, phone.recording("dec")) > 0.9
    (decision,) = [d for d in outcome.decisions if d.party == "caller"]
    assert decision.prompt_started_at is not None
    prompt_seconds = len(prompt_audio) / RATE
    assert decision.decided_at >= decision.prompt_started_at + prompt_seconds - 0.1
    assert noticed.at >= decision.prompt_started_at
    assert ("caller", "notice-only", "notice_played") in await stored_decisions(gw, call.id)
    await check_recorded_from(gw, phone, outcome, decision.decided_at)


# --- spoken consent -----------------------------------------------------------------------------

SPEECH_STARTS = 3.0  # seconds into baresip's audio: after the prompt (~1.5 s once answered)
#: The tenant's spoken answers: the prompt's own two (the built-in table is too many for a grammar).
ANSWERS = SpokenAnswers(yes=("yes i agree",), no=("no i do not agree",))
TONES_AFTER_SPEECH = 1.5  # seconds of silence between the answer and the tones that follow


@pytest.fixture
async def asr() -> AsyncIterator[AsrRegistry]:
    registry: AsrRegistry = Registry("asr")
    local = PocketsphinxAsr()
    registry.register(local)
    yield registry
    await local.aclose()


async def test_opt_in_caller_says_yes_i_agree_and_is_recorded_from_the_recognised_answer(
    gateway: GatewayFactory, asr: AsrRegistry, tmp_path: Path
) -> None:
    # baresip's microphone: silence through the prompt, "yes i agree" (eSpeak, 8 kHz),
    # silence, then the tones whose presence after the answer proves recording.
    answer = as_float(
        np.frombuffer(
            await EspeakTts(words_per_minute=160)
            .synthesize("yes i agree", sample_rate=RATE)
            .read_all(),
            dtype="<i2",
        )
    )
    lead = np.zeros(int(SPEECH_STARTS * RATE), dtype=np.float32)
    gap = np.zeros(int(TONES_AFTER_SPEECH * RATE), dtype=np.float32)
    audio = np.concatenate([lead, answer, gap, tone_sequence(INPUT_SECONDS, seed=11)])
    wav = tmp_path / "answer.wav"
    soundfile.write(wav, audio, RATE, subtype="PCM_16")
    settings = settings_for("opt_in").model_copy(
        update={
            "consent_capture": ConsentCapture(
                methods=("dtmf", "speech"), timeout_seconds=10, spoken_answers={"en": ANSWERS}
            )
        }
    )
    phone = Baresip(tmp_path / "speaker", wav, rtp_ports="43000-43999")
    await phone.start()
    try:
        async with gateway(settings, asr) as gw:
            call = await dial(gw, phone)
            decided = await gw.state(State.GRANTED, State.DECLINED)
            assert decided.state is State.GRANTED
            await talk_then_hang_up(call, phone, packets=RECORDED_PACKETS + 2 * 50)
            _, outcome = await gw.outcome()
    finally:
        await phone.stop()

    (decision,) = [d for d in outcome.decisions if d.party == "caller"]
    assert decision.method.value == "speech", decision
    assert ("caller", "granted", "answered_yes") in await stored_decisions(gw, call.id)
    evidence = decision.evidence
    assert evidence.words == "yes i agree"
    assert evidence.confidence is not None and evidence.confidence > 0.6
    # The words were said before the consent instant, so they are not in the file; the
    # tones that start TONES_AFTER_SPEECH after them are (the grant came after the words).
    skip = round((TONES_AFTER_SPEECH + 0.5) * RATE)
    await check_recorded_from(gw, phone, outcome, decision.decided_at, skip=skip)
