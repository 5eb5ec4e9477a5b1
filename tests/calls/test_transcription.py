"""Live transcription: VAD segments only to the chosen ASR, the gate honoured every frame.

The audio is real: eSpeak NG speech between stretches of digital silence, at the
8 kHz of a telephone leg. ``KeepingAsr`` is a small in-process provider that keeps
every sample it is sent, so the tests can count and compare exactly what left
the pipeline; the recognition test runs the on-node PocketSphinx engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from voicegw.asr.base import AsrProvider, QueuedAsrStream, TranscriptEvent, TranscriptKind
from voicegw.asr.pocketsphinx_local import PocketsphinxAsr
from voicegw.asr.registry import AsrRegistry
from voicegw.calls.speech_policy import CallSpeech, DisabledReason, SpeechFeature
from voicegw.calls.transcription import CallTranscriber, SinksOpen
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
from voicegw.media.vad import Segment, VadSegmenter, VadSettings
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.processing import Outcome, ProcessingRecord
from voicegw.privacy.registry import Registry
from voicegw.privacy.selection import RefusalCode
from voicegw.privacy.subprocessors import capabilities_for, load_subprocessors
from voicegw.tenant_settings import TenantSettings
from voicegw.tts.espeak_local import EspeakTts

RATE = 8000
FRAME = RATE * 20 // 1000 * 2  # bytes of one 20 ms frame
CALL = CallSpeech(call_id="call-1", tenant="acme", language="en-US")
TRANSCRIBING = TenantSettings(region="sg", transcription_enabled=True)
CALL_START = 50.0  # the call's clock does not start at zero; transcripts must follow it


@cache
def espeak(text: str) -> bytes:
    """eSpeak NG saying ``text`` at 8 kHz (synthesised once, on a loop of its own)."""

    async def synthesize() -> bytes:
        return await EspeakTts().synthesize(text, sample_rate=RATE).read_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, synthesize()).result()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def frames(pcm: bytes) -> list[bytes]:
    padded = pcm + bytes(-len(pcm) % FRAME)
    return [padded[i : i + FRAME] for i in range(0, len(padded), FRAME)]


def reference_segments(pcm: bytes, settings: VadSettings | None = None) -> list[Segment]:
    """What the VAD alone makes of the audio: the yardstick for what the ASR may get."""
    segmenter = VadSegmenter("caller", RATE, settings)
    out: list[Segment] = []
    for i, frame in enumerate(frames(pcm)):
        out += [e for e in segmenter.push(frame, CALL_START + i * 0.02) if isinstance(e, Segment)]
    return out


class KeepingStream(QueuedAsrStream):
    """Keeps the audio; a flush ends the utterance with a final that states its extent."""

    def __init__(self, owner: KeepingAsr, party: str) -> None:
        super().__init__(sample_rate=RATE, party=party)
        self.owner = owner
        self.utterance = bytearray()
        self.position = 0  # samples of stream time

    def push(self, pcm: bytes) -> None:
        self.owner.received += pcm
        self.utterance += pcm

    async def flush(self) -> None:
        if not self.utterance:
            return
        samples = len(self.utterance) // 2
        start = self.position / RATE
        self.position += samples
        self.owner.utterances.append(bytes(self.utterance))
        self.utterance.clear()
        text = f"{samples} samples"
        self._emit(
            TranscriptEvent(TranscriptKind.FINAL, text, start, self.position / RATE, 1.0, "en", "")
        )

    async def close(self) -> None:
        await self.flush()
        self._finish()


class KeepingAsr(AsrProvider):
    def __init__(self, capabilities: ProviderCapabilities | None = None) -> None:
        self._capabilities = capabilities or ProviderCapabilities(
            name="keeping-local", subprocessor_id=None, processing_locations=frozenset(),
            purposes=frozenset({Purpose.ASR}), data_types=frozenset({DataType.AUDIO}),
            languages=frozenset({"en"}),
        )  # fmt: skip
        self.opened = 0
        self.received = bytearray()
        self.utterances: list[bytes] = []

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities

    async def open_stream(
        self, *, language: str, sample_rate: int, party: str, phrases: Sequence[str] | None = None
    ) -> KeepingStream:
        self.opened += 1
        return KeepingStream(self, party)


def registry_of(*providers: AsrProvider) -> AsrRegistry:
    registry: AsrRegistry = Registry("asr")
    for provider in providers:
        registry.register(provider)
    return registry


def transcriber(
    registry: AsrRegistry,
    records: list[ProcessingRecord],
    *,
    settings: TenantSettings = TRANSCRIBING,
    sinks_open: SinksOpen = lambda party, spoken_at=None: True,
    **options: object,
) -> CallTranscriber:
    return CallTranscriber.for_call(
        registry, settings, CALL, parties=["caller", "agent"], sinks_open=sinks_open,
        on_record=records.append, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def play(target: CallTranscriber, pcm: bytes, party: str = "caller") -> None:
    for i, frame in enumerate(frames(pcm)):
        target.push(party, frame, CALL_START + i * 0.02)


async def collect(subscription: AsyncIterable[TranscriptEvent]) -> list[TranscriptEvent]:
    return [event async for event in subscription]


async def test_asr_receives_exactly_the_speech_segments_and_no_other_sample() -> None:
    audio = silence(2.0) + espeak("yes i agree") + silence(1.5) + espeak("no") + silence(1.0)
    expected = reference_segments(audio)
    assert len(expected) == 2
    asr, records = KeepingAsr(), list[ProcessingRecord]()
    target = transcriber(registry_of(asr), records)
    subscription = target.subscribe()
    play(target, audio)
    await target.aclose()
    events = await collect(subscription)

    assert asr.utterances == [segment.pcm for segment in expected]
    sent = len(asr.received) // 2
    assert sent == target.stats("caller").samples_sent
    speech = (len(espeak("yes i agree")) + len(espeak("no"))) // 2
    # Per utterance: its pre-roll, and WebRTC VAD's smoothing (~150 ms) past the voice.
    margin = len(expected) * int((VadSettings().pre_roll_ms / 1000 + 0.15) * RATE)
    assert speech <= sent <= speech + margin  # the silences between never left
    assert sent < len(audio) // 2 / 2
    # One record for the provider's use, counting exactly the audio it was sent.
    (record,) = records
    assert (record.provider, record.outcome) == ("keeping-local", Outcome.OK)
    # Whose audio it was and the rule it was processed under (on the node: nothing left).
    assert (record.party, record.basis) == ("caller", "on_node")
    assert record.audio_seconds == pytest.approx(sent / RATE)
    # Finals on the call's clock, labelled with the speaker.
    assert [(e.kind, e.party) for e in events] == [(TranscriptKind.FINAL, "caller")] * 2
    for event, segment in zip(events, expected, strict=True):
        assert event.start == pytest.approx(segment.start)
        assert event.end == pytest.approx(segment.start + len(segment.pcm) / 2 / RATE)


def consenting_gate() -> RecordingGate:
    """The real consent gate, with the caller's opt-in given before the audio starts."""
    resolution = resolve_mode(
        ConsentPolicy(default_mode=RecordingMode.OPT_IN), CallContext("+6591234567")
    )
    caller = ConsentMachine("caller", PartyRole.CALLER, resolution, now=0.0, config=CaptureConfig())
    gate = RecordingGate(sample_rate=RATE)
    gate.add_party(caller)
    caller.handle(PromptStarted(0.1))
    caller.handle(PromptFinished(1.0))
    caller.handle(Dtmf(1.5, "1"))
    assert gate.sinks_open("caller")
    return gate


async def play_through_a_pause(
    asr: KeepingAsr, audio: bytes, paused_at: float, resumed_at: float, guard: float = 0.0
) -> tuple[CallTranscriber, list[TranscriptEvent]]:
    """The caller's audio through the real consent gate, paused and resumed by the agent
    at those media times; the resume post-dated by ``guard``, as the consent flow does."""
    gate = consenting_gate()
    target = transcriber(registry_of(asr), [], sinks_open=gate.sinks_open)
    subscription = target.subscribe()
    for i, frame in enumerate(frames(audio)):
        now = CALL_START + i * 0.02
        if paused_at <= now < paused_at + 0.02:
            gate.pause_all(now)
        if resumed_at <= now < resumed_at + 0.02:
            gate.resume_all(now + guard)
        target.push("caller", frame, now)
        await asyncio.sleep(0)  # let the ASR worker run as it would between real frames
    await target.aclose()
    return target, await collect(subscription)


async def test_secure_pause_discards_the_open_utterance_and_nothing_reaches_the_asr() -> None:
    card = espeak("my card number is four one one one two two two two")
    before, after = espeak("yes i agree"), espeak("no")
    audio = silence(1.0) + before + silence(1.0) + card + silence(1.0) + after + silence(1.0)
    card_start = CALL_START + (len(silence(1.0) + before + silence(1.0)) // 2) / RATE
    # The agent presses "secure pause" one second into the card number; resume after it.
    paused = (card_start + 1.0, card_start + len(card) / 2 / RATE + 0.5)
    asr = KeepingAsr()
    target, events = await play_through_a_pause(asr, audio, *paused)

    assert len(asr.utterances) == 2  # before and after the pause: the card was never flushed
    assert not any(frame in asr.received for frame in frames(card) if any(frame))
    stats = target.stats("caller")
    assert stats.discarded_utterances == 1
    assert stats.blocked_frames == pytest.approx((paused[1] - paused[0]) / 0.02, abs=1)
    assert [e.end <= paused[0] or e.start >= paused[1] for e in events] == [True, True]


async def test_speech_from_before_a_post_dated_resume_never_reaches_the_asr() -> None:
    # The caller talks through the pause and on past the agent's resume, which the
    # consent flow post-dates on the media clock by the jitter buffer's delay.
    speech = espeak("my card number is four one one one two two two two")
    audio = silence(1.0) + speech + silence(1.0)
    paused_at, resumed_at, guard = CALL_START + 0.5, CALL_START + 2.0, 0.24
    asr = KeepingAsr()
    target, events = await play_through_a_pause(asr, audio, paused_at, resumed_at, guard)

    first_allowed = round((resumed_at + guard - CALL_START) / 0.02)
    held_back = frames(audio)[round((paused_at - CALL_START) / 0.02) : first_allowed]
    assert events and all(e.start >= resumed_at + guard - 1e-6 for e in events)
    assert not any(frame in asr.received for frame in held_back if any(frame))
    assert target.stats("caller").blocked_frames == first_allowed - 25


async def test_pocketsphinx_grammar_hears_yes_i_agree_through_the_pipeline_at_8khz() -> None:
    local = PocketsphinxAsr()
    records: list[ProcessingRecord] = []
    try:
        target = transcriber(
            registry_of(local), records, settings=TenantSettings(region="eu"),
            feature=SpeechFeature.SPOKEN_ANSWER, phrases=["yes i agree", "no", "i do not agree"],
        )  # fmt: skip
        subscription = target.subscribe()
        answer = espeak("yes i agree")
        play(target, silence(1.0) + answer + silence(1.0))
        await target.aclose()
        events = await collect(subscription)
    finally:
        await local.aclose()
    (final,) = events
    assert (final.kind, final.text, final.party) == (TranscriptKind.FINAL, "yes i agree", "caller")
    spoken = (CALL_START + 1.0, CALL_START + 1.0 + len(answer) / 2 / RATE)
    assert spoken[0] - 0.1 <= final.start < final.end <= spoken[1] + 0.1
    (record,) = records
    assert (record.provider, record.subprocessor, record.purpose) == (
        "pocketsphinx-local", None, Purpose.ASR,
    )  # fmt: skip
    assert (record.party, record.basis, record.locations) == ("caller", "on_node", ())


async def test_transcription_off_opens_no_asr_stream_and_the_call_goes_on() -> None:
    asr, records = KeepingAsr(), list[ProcessingRecord]()
    target = transcriber(registry_of(asr), records, settings=TenantSettings(region="sg"))
    assert not target.active
    assert target.decision is not None
    assert target.decision.disabled is DisabledReason.TENANT_DISABLED
    subscription = target.subscribe()
    play(target, silence(0.5) + espeak("yes i agree") + silence(1.0))
    await target.aclose()
    assert await collect(subscription) == []
    assert asr.opened == 0 and not asr.received and records == []


async def test_eu_tenant_with_only_an_asia_vendor_approved_transcribes_nothing() -> None:
    listing = load_subprocessors(Path(__file__).parents[2] / "config" / "subprocessors.toml")
    declared = capabilities_for(
        listing["zhongkejin"], name="zhongkejin", purposes=frozenset({Purpose.ASR}),
        languages=frozenset({"en"}),
    )  # fmt: skip
    singapore = KeepingAsr(declared)
    settings = TenantSettings(
        region="eu", transcription_enabled=True, approved_subprocessors=("zhongkejin",)
    )
    records: list[ProcessingRecord] = []
    target = transcriber(registry_of(singapore), records, settings=settings)
    assert not target.active
    assert target.decision is not None
    assert target.decision.disabled is DisabledReason.NO_ELIGIBLE_PROVIDER
    refusal = target.decision.refusal("zhongkejin")
    assert refusal is not None and refusal.codes == (RefusalCode.REGION_NOT_PERMITTED,)
    play(target, silence(0.5) + espeak("yes i agree") + silence(1.0))
    await target.aclose()
    assert singapore.opened == 0 and not singapore.received and records == []


async def test_slow_subscriber_loses_only_its_own_events() -> None:
    asr = KeepingAsr()
    target = transcriber(registry_of(asr), [])
    fast, slow = target.subscribe(maxsize=100), target.subscribe(maxsize=1)
    words = ("yes", "no", "maybe")
    play(target, b"".join(silence(1.0) + espeak(w) for w in words) + silence(1.0))
    await target.aclose()
    assert len(await collect(fast)) == 3 and fast.dropped == 0
    assert await collect(slow) == []  # its one slot ends up holding the end marker
    assert slow.dropped == 3


async def test_each_party_gets_its_own_stream_and_label() -> None:
    asr = KeepingAsr()
    target = transcriber(registry_of(asr), [])
    subscription = target.subscribe()
    caller = silence(0.5) + espeak("yes") + silence(1.0)
    agent = silence(0.5) + espeak("thank you") + silence(1.0)
    for i, (a, b) in enumerate(zip(frames(caller), frames(agent), strict=False)):
        target.push("caller", a, CALL_START + i * 0.02)
        target.push("agent", b, CALL_START + i * 0.02)
    target.push("stranger", frames(caller)[0], CALL_START)  # not a party of this call: ignored
    await target.aclose()
    events = await collect(subscription)
    assert sorted(e.party for e in events) == ["agent", "caller"]
    assert asr.opened == 2


# --- live mode: partial results while the caller is still speaking --------------------------


async def test_live_mode_sends_speech_as_it_is_spoken_and_still_never_the_silences() -> None:
    answer = espeak("yes i agree to the recording of this call")
    audio = silence(2.0) + answer + silence(1.5) + espeak("no") + silence(1.0)
    expected = reference_segments(audio)
    asr, records = KeepingAsr(), list[ProcessingRecord]()
    target = transcriber(registry_of(asr), records, live=True)
    subscription = target.subscribe()
    speech_ends = CALL_START + (len(silence(2.0) + answer) // 2) / RATE
    sent_while_speaking = 0
    for i, frame in enumerate(frames(audio)):
        now = CALL_START + i * 0.02
        target.push("caller", frame, now)
        await asyncio.sleep(0)  # the ASR worker runs between frames, as on a live call
        if now < speech_ends - 0.5:
            sent_while_speaking = len(asr.received)
    await target.aclose()
    events = await collect(subscription)

    # Audio reached the ASR half a second before the words ended, not after the segment.
    assert sent_while_speaking > RATE  # > 0.5 s of audio in bytes
    assert len(asr.utterances) == len(expected) == 2
    speech = (len(answer) + len(espeak("no"))) // 2
    sent = len(asr.received) // 2
    # Per utterance at most its pre-roll, the VAD's smoothing and the hang-over beyond speech.
    vad = VadSettings()
    margin = 2 * int((vad.pre_roll_ms + vad.hangover_ms) / 1000 * RATE + 0.15 * RATE)
    assert speech <= sent <= speech + margin  # the silences between never left
    assert target.stats("caller").samples_sent == sent
    # Each utterance starts at its pre-roll on the call's clock, as in segment mode.
    for event, segment in zip(events, expected, strict=True):
        assert event.start == pytest.approx(segment.start, abs=0.03)
    (record,) = records
    assert record.audio_seconds == pytest.approx(sent / RATE)


async def test_live_mode_stops_sending_the_moment_the_gate_closes() -> None:
    card = espeak("my card number is four one one one two two two two")
    audio = silence(1.0) + card + silence(1.0)
    gate = consenting_gate()
    asr, records = KeepingAsr(), list[ProcessingRecord]()
    target = transcriber(registry_of(asr), records, sinks_open=gate.sinks_open, live=True)
    paused_at = CALL_START + 1.0 + 1.0  # one second into the card number
    sent_before_pause = 0
    for i, frame in enumerate(frames(audio)):
        now = CALL_START + i * 0.02
        if paused_at <= now < paused_at + 0.02:
            gate.pause_all(now)
            sent_before_pause = len(asr.received)
        target.push("caller", frame, now)
        await asyncio.sleep(0)
    await target.aclose()

    assert sent_before_pause > 0  # live: the start of the utterance had gone out
    assert len(asr.received) == sent_before_pause  # not one frame after the pause
    assert len(asr.utterances) == 1  # ended where the gate closed


async def test_pocketsphinx_partials_reach_subscribers_while_the_caller_speaks() -> None:
    local = PocketsphinxAsr(partial_interval=0.3)
    records: list[ProcessingRecord] = []
    sentence = "yes i agree to the recording of this call"
    words = espeak(sentence)
    audio = silence(1.0) + words + silence(1.0)
    speech_ends = CALL_START + (len(silence(1.0) + words) // 2) / RATE
    pushed_until = CALL_START
    partials: list[tuple[TranscriptEvent, float]] = []
    try:
        await local.warm_up()  # the worker's model is loaded before the call, as in serve
        # Generic mode: a grammar of whole sentences has no hypothesis for half of one.
        target = transcriber(registry_of(local), records, live=True, flush_timeout=30.0)
        subscription = target.subscribe()

        async def listen() -> list[TranscriptEvent]:
            seen = []
            async for event in subscription:
                if event.kind is TranscriptKind.PARTIAL:
                    partials.append((event, pushed_until))
                seen.append(event)
            return seen

        listening = asyncio.create_task(listen())
        for i, frame in enumerate(frames(audio)):
            pushed_until = CALL_START + (i + 1) * 0.02
            target.push("caller", frame, pushed_until - 0.02)
            await asyncio.sleep(0.02)  # real time: the caller is speaking
        await target.aclose()
        events = await asyncio.wait_for(listening, 60)
    finally:
        await local.aclose()
    assert partials, events
    first, heard_at = partials[0]
    assert heard_at < speech_ends  # a partial result before the words were over
    assert (first.party, first.text != "") == ("caller", True)
    assert first.start >= CALL_START + 0.5  # on the call's clock, near the words' start
    assert events[-1].kind is TranscriptKind.FINAL and events[-1].text
    assert all(e.kind is TranscriptKind.PARTIAL for e in events[:-1])
