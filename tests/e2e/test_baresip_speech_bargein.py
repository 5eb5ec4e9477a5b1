"""Barge-in on a live call: a baresip caller talks over a long eSpeak prompt and it stops.

The gateway answers, plays a long synthesised announcement and listens to the
caller's tapped audio with :func:`~voicegw.calls.bargein.play_with_barge_in`.
baresip's microphone is silence, then spoken words starting at a known second.

What must hold, from both ends of the call:

* gateway events: the voice onset the gateway saw is the caller's (it sits where
  the caller's words arrive), and the prompt was cancelled within 100 ms of it;
* baresip's own recording of what it received: the announcement it heard is
  exactly the frames sent before the cancellation, nothing of the prompt after it,
  and it stops within 100 ms of the caller's speech start plus the path latency,
  which is measured on the call (audio in: 200 OK to the caller's first frame
  played out of the gateway's jitter buffer; audio out: one 20 ms frame and the
  loopback hop) and printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.e2e.peers import (
    EVENT_TIMEOUT,
    RATE,
    REALM,
    SECRET,
    Baresip,
    Sessions,
    acme_store,
    aligned_correlation,
    loopback_sip_service,
)
from voicegw.calls.bargein import BargeInController, BargeInRecord, play_with_barge_in
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_calls import InboundCall, SipCalls, SipCallsConfig
from voicegw.media.clock import MediaClock
from voicegw.media.playback import BufferSource, PlaybackOutcome, PlaybackResult
from voicegw.media.ports import PortAllocator
from voicegw.media.taps import TapFrame
from voicegw.store import tenants
from voicegw.tts.espeak_local import EspeakTts

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed"),
]

PROMPT_URI = f"sip:echo@{REALM}"  # the router's echo user; its service slot plays the prompt
PROMPT = (
    "Thank you for calling. Your call is important to us. Please listen carefully, as our "
    "menu options have changed. For account balances and recent payments, press one. For "
    "new orders, press two. For anything else, please stay on the line and an agent will "
    "be with you shortly."
)
SPEECH_STARTS = 2.5  # seconds into baresip's microphone audio
CALLER_WORDS = "stop, I want to talk to an agent"
CALL_SECONDS = 12  # baresip's input length: it hangs up when the file ends
BARGE_IN_LIMIT = 0.100
FRAME = 0.02
#: |sample| above this (full scale 1.0) is sound, not line silence or dither.
SOUND = 0.02


async def espeak(text: str) -> np.ndarray:
    pcm = await EspeakTts(words_per_minute=160).synthesize(text, sample_rate=RATE).read_all()
    return np.frombuffer(pcm, dtype="<i2")


def first_sound(samples: np.ndarray) -> int:
    loud = np.flatnonzero(np.abs(samples) > SOUND)
    assert loud.size, "no sound at all"
    return int(loud[0])


@dataclass
class PromptCall:
    """What the gateway saw on the call, on its media clock."""

    answered: float = 0.0
    prompt_started: float = 0.0
    first_caller_audio: float | None = None
    result: PlaybackResult | None = None
    barge_ins: list[BargeInRecord] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class PromptService:
    """A call handler: answer, play the prompt with barge-in, then wait for the hang-up."""

    def __init__(self, clock: MediaClock, prompt: np.ndarray) -> None:
        self.clock = clock
        self.prompt = prompt
        self.seen = PromptCall()

    async def __call__(self, call: InboundCall) -> None:
        seen = self.seen
        seen.answered = self.clock.now()
        call.answer()
        await asyncio.wait_for(call.confirmed.wait(), EVENT_TIMEOUT)
        media = call.media(self.clock)
        arrivals = media.frames()
        watcher = asyncio.create_task(self._first_audio(arrivals))
        controller = BargeInController(clock=self.clock.now, on_barge_in=seen.barge_ins.append)
        seen.prompt_started = self.clock.now()
        try:
            seen.result = await play_with_barge_in(
                media, BufferSource(self.prompt, 160), controller
            )
        finally:
            seen.done.set()
        await media.ended.wait()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    async def _first_audio(self, frames: AsyncIterator[TapFrame]) -> None:
        async for frame in frames:
            if not frame.filled:  # the caller's first real frame out of the jitter buffer
                self.seen.first_caller_audio = frame.time  # the start of the 20 ms it covers
                return


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    async with acme_store(tmp_path / "voicegw.db", {"alice": "secret"}) as sessions:
        yield sessions


@pytest.fixture
async def caller_wav(tmp_path: Path) -> Path:
    words = (await espeak(CALLER_WORDS)).astype(np.float32) / 32768
    lead = np.zeros(int(SPEECH_STARTS * RATE), dtype=np.float32)
    tail = np.zeros(int(CALL_SECONDS * RATE) - len(lead) - len(words), dtype=np.float32)
    path = tmp_path / "caller.wav"
    soundfile.write(path, np.concatenate([lead, words, tail]), RATE, subtype="PCM_16")
    return path


async def test_caller_speech_stops_a_long_prompt_within_100_ms_plus_path_latency(
    sessions: Sessions, caller_wav: Path, tmp_path: Path
) -> None:
    prompt = await espeak(PROMPT)
    prompt_seconds = len(prompt) / RATE
    assert prompt_seconds > 3 * SPEECH_STARTS  # still playing when the caller speaks

    clock = MediaClock()
    clock.start()
    service = PromptService(clock, prompt)
    sip = loopback_sip_service(sessions, SECRET)

    async def owner(number: str) -> str | None:
        async with sessions() as session:
            found = await tenants.tenant_for_number(session, number)
            return None if found is None else found.tenant_id

    calls = SipCalls(
        sip,
        Router(owner),
        PortAllocator("127.0.0.1", 44000, 44999),
        {Service.ECHO: service},
        SipCallsConfig(),
    )
    calls.attach()
    phone = Baresip(tmp_path / "alice", caller_wav, rtp_ports="45000-45999")
    await phone.start()
    try:
        await sip.start()
        udp = sip.transports.bound.udp
        assert udp is not None
        await phone.register("alice", "secret", udp[1])
        await phone.command("dial", PROMPT_URI)
        assert await phone.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
        await asyncio.wait_for(service.seen.done.wait(), SPEECH_STARTS + prompt_seconds + 5)
        await asyncio.sleep(1.0)  # let baresip take in whatever is still on its way
        await phone.command("hangup")
        await phone.event("CALL_CLOSED")
    finally:
        await phone.stop()
        await calls.close()
        await sip.stop()
        await clock.stop()

    seen = service.seen
    assert seen.result is not None and seen.result.outcome is PlaybackOutcome.CANCELLED
    (barge_in,) = seen.barge_ins
    assert seen.first_caller_audio is not None

    # Gateway events: the onset it saw is where the caller's words arrive ...
    sent, received = phone.recording("enc"), phone.recording("dec")
    spoken_at = first_sound(sent) / RATE  # the caller's speech start on baresip's microphone
    assert abs(spoken_at - SPEECH_STARTS) < 0.05
    expected_onset = seen.first_caller_audio + spoken_at
    assert expected_onset - 0.06 <= barge_in.onset <= expected_onset + 0.1, (
        barge_in,
        expected_onset,
    )
    # ... and the prompt was cancelled within 100 ms of it.
    assert barge_in.latency <= BARGE_IN_LIMIT, barge_in

    # baresip's recording of what it received: the prompt up to the cancellation, then nothing.
    correlation, lag = aligned_correlation(prompt.astype(np.float32) / 32768, received)
    assert correlation > 0.9, correlation
    heard = seen.result.frames * 160
    prompt_end = lag + heard  # index in baresip's received audio where the prompt stopped
    scaled = prompt.astype(np.float32) / 32768
    # What came next in the prompt had sound in it: had it been sent, baresip would hold it.
    assert np.abs(scaled[heard : heard + RATE // 2]).max() > 5 * SOUND
    after = received[prompt_end + 80 : prompt_end + RATE // 2]
    assert after.size == 0 or np.abs(after).max() < SOUND, np.abs(after).max()

    # In the caller's own time: how long the prompt went on after it started speaking.
    heard_until = prompt_end / RATE
    overhang = heard_until - spoken_at
    path_in = seen.first_caller_audio - seen.answered  # 200 OK -> first frame played out
    path_out = FRAME  # a cancelled tick's frame is the last; loopback adds microseconds
    print(
        f"barge-in: gateway onset->cancel {barge_in.latency * 1000:.0f} ms; caller heard the "
        f"prompt {overhang * 1000:.0f} ms past its speech start; path in {path_in * 1000:.0f} ms, "
        f"out {path_out * 1000:.0f} ms"
    )
    assert overhang <= BARGE_IN_LIMIT + path_in + path_out + FRAME, (overhang, path_in)
