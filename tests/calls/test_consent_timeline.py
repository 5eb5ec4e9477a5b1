"""A recording keeps the call's timeline when the media clock skips ticks.

After a stall longer than its catch-up, the media clock skips ticks (it never
bursts a second of audio at once): the taps publish no frame for them. The
recording must still be the call, sample for sample: a skipped tick is silence
at its place in the file, the audio after it sits at its own media time, and
every interval the metadata lists (a secure pause after the gap) is where the
file is silent.

The real consent flow, gate, recorder, container, storage and keyring, on
SQLite and PostgreSQL; only time is the test's: a :class:`MediaClock` whose
sleep returns when the test moves time on, so the stall happens exactly where
the test puts it. The parties' audio is pushed frame by frame
(:class:`FrameFeed`), every frame a distinct constant, so a frame found in the
file tells which tick it was.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.call_media import KeyPresses
from voicegw.calls.consent_flow import CallInfo, ConsentFlow, ConsentServices, consent_policy
from voicegw.media.clock import MediaClock
from voicegw.media.playback import Playback, PlaybackSource
from voicegw.media.taps import CallTap, FrameFeed, TapConsumer
from voicegw.recording.container import decrypt
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, wrapped_key_of
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import recordings as store
from voicegw.store import tenants
from voicegw.store.prompt_files import PromptLibrary
from voicegw.tenant_settings import ConsentPrompt, Retention, TenantSettings

TENANT = "acme"
CALL = "call-gap"
RATE = 8000
SAMPLES = 160
FRAME = SAMPLES / RATE
STALL_AFTER = 60  # the last tick before the stall
STALL_TO = 72  # the tick the clock wakes up for: 61-67 skipped, 68-72 caught up
PAUSE_AT = 90  # the agent presses pause after this tick
RESUME_AT = 100
LAST = 130

Samples = npt.NDArray[np.int16]


def said(party: str, tick: int) -> bytes:
    """What ``party`` says at ``tick``: a constant no other tick or party uses."""
    value = 1000 + tick if party == "caller" else -(1000 + tick)
    return np.full(SAMPLES, value, dtype="<i2").tobytes()


class ManualTime:
    """Time the test moves on; the clock's sleep returns once it has moved far enough."""

    def __init__(self) -> None:
        self.now = 0.0
        self._moved = asyncio.Event()

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        target = self.now + delay - 1e-6
        while self.now < target:
            self._moved.clear()
            await self._moved.wait()

    def move_to(self, t: float) -> None:
        self.now = max(self.now, t)
        self._moved.set()


class FedCallMedia:
    """:class:`CallMedia` of two parties whose frames the test pushes; no sockets."""

    def __init__(self, clock: MediaClock) -> None:
        self.feeds = {"caller": FrameFeed(), "agent": FrameFeed()}
        self.call_tap = CallTap(self.feeds)
        self.call_tap.attach(clock)
        self.consumers: list[TapConsumer] = []
        self.prompt_started = asyncio.Event()
        self.last_tick = -1
        self._clock = clock
        self._keys = KeyPresses()
        self._ended = asyncio.Event()
        clock.subscribe(self._on_tick)  # after the taps': the tick's frames are out

    def _on_tick(self, index: int, now: float) -> None:
        self.last_tick = index

    @property
    def clock(self) -> MediaClock:
        return self._clock

    @property
    def parties(self) -> tuple[str, ...]:
        return tuple(self.feeds)

    @property
    def ended(self) -> asyncio.Event:
        return self._ended

    def play(self, source: PlaybackSource) -> Playback:
        playback = Playback(source, lambda frame, now: None)
        playback.start(self._clock)
        self.prompt_started.set()
        return playback

    def keys(self) -> KeyPresses:
        return self._keys

    def frames(self, maxsize: int = 50) -> TapConsumer:
        consumer = self.call_tap.tap.add_consumer(maxsize)
        self.consumers.append(consumer)
        return consumer

    def hang_up(self) -> None:
        self.call_tap.detach()
        self._keys.close()
        self._ended.set()

    async def settled(self, tick: int) -> None:
        """Until the clock has run ``tick`` and the flow has taken every frame of it."""
        for _ in range(10_000):  # bounded: each turn lets the clock and the flow run
            if self.last_tick >= tick and all(c.pending == 0 for c in self.consumers):
                return
            await asyncio.sleep(0)
        raise AssertionError(f"tick {tick} never ran through the flow")


def notice_wav() -> bytes:
    """Half a second of tone: the shortest notice a tenant may upload."""
    t = np.arange(RATE // 2) / RATE
    wav = io.BytesIO()
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    soundfile.write(wav, pcm, RATE, subtype="PCM_16", format="WAV")
    return wav.getvalue()


def settings() -> TenantSettings:
    return TenantSettings(
        region="eu",
        recording_mode="notify",
        consent_prompt=ConsentPrompt(text=None, audio_file="notice.wav", version=1),
        retention=Retention(recordings_days=30),
    )


async def test_skipped_ticks_are_silence_in_place_and_a_later_pause_is_where_the_metadata_says(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    tenant_settings = settings()
    async with sessions() as session, session.begin():
        await tenants.create_tenant(
            session, actor="test", tenant_id=TENANT, name=TENANT, settings=tenant_settings
        )
    library = PromptLibrary(tmp_path / "prompts")
    library.save(TENANT, "notice.wav", notice_wav())
    storage = LocalFilesystemStorage(tmp_path / "recordings")
    keyring = LocalKeyring(tmp_path / "keys")
    time = ManualTime()
    clock = MediaClock(time=time.time, sleep=time.sleep)
    media = FedCallMedia(clock)
    flow = ConsentFlow(
        media,
        CallInfo(TENANT, CALL, "eu", "+12125550100"),
        tenant_settings,
        consent_policy(tenant_settings),
        ConsentServices(sessions=sessions, storage=storage, keys=keyring, prompt_files=library),
    )
    run = asyncio.create_task(flow.run())
    spoken: set[int] = set()
    try:
        await asyncio.wait_for(media.prompt_started.wait(), 30)
        for tick in range(LAST + 1):
            if STALL_AFTER < tick < STALL_TO:
                continue  # the stall: the clock sleeps through these, nothing is pushed
            if tick != STALL_TO:
                for party, feed in media.feeds.items():
                    feed.push(said(party, tick))
                spoken.add(tick)
            time.move_to(tick * FRAME)
            if tick == 0:
                clock.start()
            await media.settled(tick)
            if tick == PAUSE_AT:
                paused_at = await flow.pause(actor="agent")
            if tick == RESUME_AT:
                await flow.resume(actor="agent")
        assert clock.schedule is not None and clock.schedule.skipped == STALL_TO - 5 - STALL_AFTER
        media.hang_up()
        outcome = await asyncio.wait_for(run, 60)
    finally:
        media.hang_up()
        await clock.stop()
        if not run.done():
            run.cancel()

    assert outcome.recording is not None and outcome.recording.complete
    assert outcome.first_frame_time is not None
    first = round(outcome.first_frame_time / FRAME)
    async with sessions() as session:
        row = await store.get_recording(session, TENANT, outcome.recording.recording_id)
    assert row is not None
    with open_stored(storage, row) as handle:
        stereo = np.frombuffer(decrypt(handle, keyring, wrapped_key=wrapped_key_of(row)), "<i2")
    caller, agent = stereo[0::2], stereo[1::2]

    # The file is exactly the call's media time: first frame to the end of the last tick.
    media_samples = round(((LAST + 1) * FRAME - outcome.first_frame_time) * RATE)
    assert caller.size == agent.size == media_samples == (LAST + 1 - first) * SAMPLES
    assert row.duration_seconds is not None
    assert abs(row.duration_seconds - (LAST + 1 - first) * FRAME) < 1e-9

    def at(channel: Samples, tick: int) -> Samples:
        start = (tick - first) * SAMPLES
        return channel[start : start + SAMPLES]

    # The skipped ticks, and the caught-up ones nothing was pushed for: silence, in place.
    for tick in range(STALL_AFTER + 1, STALL_TO + 1):
        assert not at(caller, tick).any() and not at(agent, tick).any(), tick
    skipped = [i for i in row.intervals if i["reason"] == "skipped"]
    assert skipped == [
        {
            "party": "*",
            "reason": "skipped",
            "start_sample": (STALL_AFTER + 1 - first) * SAMPLES,
            "end_sample": (STALL_TO - 5 + 1 - first) * SAMPLES,
        }
    ]

    # The pause after the gap: listed at the samples of its media time, silent exactly there.
    (pause,) = [i for i in outcome.intervals["caller"] if i.reason == "paused"]
    pause_start = round((pause.start_time - outcome.first_frame_time) * RATE)
    pause_end = round((pause.end_time - outcome.first_frame_time) * RATE)
    assert pause.start_time == pytest.approx(paused_at + FRAME)  # from the next frame on
    for party, channel in (("caller", caller), ("agent", agent)):
        listed = [
            (i["start_sample"], i["end_sample"])
            for i in row.intervals
            if i["party"] == party and i["reason"] == "paused"
        ]
        assert listed == [(pause_start, pause_end)]
        assert not channel[pause_start:pause_end].any()
        # what was said just before and just after it is at its own tick's place
        before, after = pause_start // SAMPLES + first - 1, pause_end // SAMPLES + first
        assert at(channel, before).tobytes() == said(party, before)
        assert at(channel, after).tobytes() == said(party, after)

    # Everywhere else each tick holds what was said at that tick, or silence where listed.
    blanked = np.zeros(caller.size, dtype=bool)
    blanked_agent = np.zeros(agent.size, dtype=bool)
    for interval in row.intervals:
        if interval["party"] in ("caller", "*"):
            blanked[interval["start_sample"] : interval["end_sample"]] = True
        if interval["party"] in ("agent", "*"):
            blanked_agent[interval["start_sample"] : interval["end_sample"]] = True
    for tick in range(first, LAST + 1):
        start = (tick - first) * SAMPLES
        for party, channel, mask in (
            ("caller", caller, blanked),
            ("agent", agent, blanked_agent),
        ):
            frame = at(channel, tick)
            if mask[start : start + SAMPLES].all() or tick not in spoken:
                assert not frame.any(), (party, tick)
            else:
                assert frame.tobytes() == said(party, tick), (party, tick)
    assert all(tick in spoken for tick in range(STALL_TO + 1, LAST + 1))
