"""Live transcription of one call: tap frames → VAD → policy-chosen ASR → subscribers.

Per party, 16-bit PCM frames go through a :class:`~voicegw.media.vad.VadSegmenter`;
only the finished speech segments (pre-roll included) are sent to the ASR, one
segment per utterance, followed by a flush. Sending whole segments rather than
streaming every frame is what makes data minimisation exact (DESIGN invariant 8):
the provider receives the segment's samples and nothing of the silence, the
hang-over or the audio around it. The price is that interim results cover a
segment only once it has ended; the final arrives one decode after the speech.

``live=True`` trades that exactness for partial results while the caller is still
speaking (the agent's live-transcript panel): once the VAD confirms speech, the
utterance so far (pre-roll included) goes to the ASR and every further frame
follows as it arrives, until the VAD ends the utterance and the stream is
flushed. Still only speech leaves: silence between utterances is never sent, but
up to the VAD's hang-over of trailing non-speech is, since it is sent before the
VAD knows it is trailing. A gate that closes mid-utterance stops the audio at
once and ends the utterance there (what was sent was allowed when spoken).

The consent gate is asked for every frame by the frame's media time, as the
recorder is (``sinks_open(party, t)``). While it is closed — secure pause,
withdrawal, a party without consent, audio from before a post-dated resume —
frames are not even classified, an utterance in progress is discarded (never
flushed), and segments queued but not yet sent are dropped, so no audio reaches
the ASR until the gate opens again. The segmenter restarts afresh then: pre-roll
never carries audio from before the pause. A final for a segment that was sent
while the gate was open may still arrive during the pause; it is delivered, since
the speech it covers was allowed when it was spoken.

Transcript timestamps are moved from the ASR stream's time (seconds of audio
pushed) onto the call's clock (the tap frames' times), and every event is
labelled with its party. Events fan out to subscribers through bounded queues;
a subscriber that does not keep up loses its own oldest events (counted on it),
never anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from voicegw.asr.base import AsrProvider, AsrStream, TranscriptEvent
from voicegw.asr.failover import FailoverAsr
from voicegw.asr.registry import AsrRegistry
from voicegw.calls.speech_policy import (
    FEATURES,
    CallSpeech,
    SpeechDecision,
    SpeechFeature,
    plan_speech,
)
from voicegw.media.taps import TapFrame
from voicegw.media.vad import Segment, SpeechStart, VadEvent, VadSegmenter, VadSettings
from voicegw.privacy.capabilities import Purpose
from voicegw.privacy.errors import ProviderError
from voicegw.privacy.processing import ProcessingContext, RecordSink
from voicegw.tenant_settings import TenantSettings

__all__ = [
    "CallTranscriber",
    "PartyStats",
    "SinksOpen",
    "TranscriptSubscription",
]

log = logging.getLogger("voicegw.calls.transcription")


class SinksOpen(Protocol):
    """``RecordingGate.sinks_open``: may a sink take ``party``'s audio right now, and
    (given ``spoken_at``, a frame's media time) was that audio allowed when spoken."""

    def __call__(self, party: str, spoken_at: float | None = None, /) -> bool: ...


_PUSH_MS = 20  # segments go to the provider in frames of this size, as a live stream would
_SPANS_KEPT = 64  # segments whose stream→call time mapping is kept for late events
#: Live mode queues frames, not segments: this many per allowed segment of backlog.
_LIVE_ITEMS_PER_SEGMENT = 250  # 5 s of 20 ms frames


class TranscriptSubscription:
    """One subscriber's bounded queue of events; iterate with ``async for``."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.dropped = 0
        self._queue: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue(maxsize)
        self._closed = False

    def offer(self, event: TranscriptEvent | None) -> None:
        """Queue without waiting; when full the oldest queued event is lost."""
        if self._closed:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)
        if event is None:
            self._closed = True

    def get_nowait(self) -> TranscriptEvent | None:
        """The next queued event, or ``None`` when nothing is queued (or at the end)."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def __aiter__(self) -> TranscriptSubscription:
        return self

    async def __anext__(self) -> TranscriptEvent:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # later reads end too
            raise StopAsyncIteration
        return event


@dataclass
class PartyStats:
    """What happened to one party's audio; amounts only, no content."""

    frames: int = 0
    blocked_frames: int = 0  # arrived while the gate was closed: never classified
    utterances: int = 0  # segments the VAD closed while the gate was open
    discarded_utterances: int = 0  # in progress or queued when the gate closed
    segments: int = 0  # sent to the ASR
    dropped_segments: int = 0  # ASR too far behind: backlog full
    samples_sent: int = 0  # samples the ASR received


@dataclass(frozen=True)
class _Chunk:
    """Live mode: audio of the utterance in progress; ``start`` (call clock) on its first."""

    pcm: bytes
    start: float | None


class _EndUtterance:
    """Live mode: the VAD (or a closing gate) ended the utterance: flush the stream."""


_END = _EndUtterance()
_Item = Segment | _Chunk | _EndUtterance


@dataclass(frozen=True)
class _Span:
    """Where one segment sits on the ASR stream's time and on the call's clock."""

    stream_start: float
    call_start: float


class _Party:
    def __init__(self, name: str, segmenter: VadSegmenter, backlog: int) -> None:
        self.name = name
        self.segmenter = segmenter
        self.stats = PartyStats()
        self.gate_open = True
        # Unbounded as a queue so the end marker always fits; _enqueue enforces the bound.
        self.backlog: asyncio.Queue[_Item | None] = asyncio.Queue()
        self.recent: deque[tuple[float, bytes]] = deque()  # live mode: frames for pre-roll
        self.streaming = False  # live mode: an utterance is being sent
        self.backlog_limit = backlog
        self.worker: asyncio.Task[None] | None = None
        self.pump: asyncio.Task[None] | None = None
        self.stream: AsrStream | None = None
        self.stream_time = 0.0
        self.spans: deque[_Span] = deque(maxlen=_SPANS_KEPT)
        self.failed = False
        self.last_t = 0.0


class CallTranscriber:
    """Transcribes the parties of one call with the ASR the residency policy chose.

    ``asr`` is ``None`` when transcription is off for this call (tenant switch off,
    no eligible provider): frames are then ignored and no ASR stream is opened.
    Use :meth:`for_call` to build one from the tenant's settings.
    """

    def __init__(
        self,
        asr: AsrProvider | None,
        *,
        parties: Sequence[str],
        sinks_open: SinksOpen,
        language: str = "en-US",
        sample_rate: int = 8000,
        vad: VadSettings | None = None,
        phrases: Sequence[str] | None = None,
        backlog: int = 8,
        decision: SpeechDecision | None = None,
        live: bool = False,
    ) -> None:
        self.asr = asr
        self.live = live
        self.decision = decision
        self.language = language
        self.sample_rate = sample_rate
        self._sinks_open = sinks_open
        self._vad = vad or VadSettings()
        self._phrases = None if phrases is None else tuple(phrases)
        self._backlog = backlog
        self._parties = {name: self._new_party(name) for name in parties}
        self._subscribers: list[TranscriptSubscription] = []
        self._push_bytes = sample_rate * _PUSH_MS // 1000 * 2
        self._closed = False

    @classmethod
    def for_call(
        cls,
        registry: AsrRegistry,
        settings: TenantSettings,
        call: CallSpeech,
        *,
        parties: Sequence[str],
        sinks_open: SinksOpen,
        on_record: RecordSink,
        on_decision: Callable[[SpeechDecision], None] | None = None,
        sample_rate: int = 8000,
        vad: VadSettings | None = None,
        preference: tuple[str, ...] = (),
        flush_timeout: float = 5.0,
        feature: SpeechFeature = SpeechFeature.TRANSCRIPTION,
        phrases: Sequence[str] | None = None,
        live: bool = False,
    ) -> CallTranscriber:
        """Ask the speech policy, then transcribe through failover over its eligible list.

        ``feature`` is :attr:`SpeechFeature.SPOKEN_ANSWER` when listening for a consent
        answer or a menu intent, with the expected ``phrases`` (a grammar for local
        engines, hints for vendors); that does not depend on the transcription switch.
        """
        if FEATURES[feature][0] is not Purpose.ASR:
            raise ValueError(f"{feature.value} is not a speech-to-text feature")
        plan = plan_speech(
            registry,
            settings,
            call,
            feature,
            preference=preference,
            on_decision=on_decision,
        )
        asr = None
        if plan.enabled:
            asr = FailoverAsr(
                plan.providers,
                context=ProcessingContext(
                    call_id=call.call_id, tenant=call.tenant, bases=plan.decision.bases
                ),
                on_record=on_record,
                flush_timeout=flush_timeout,
            )
        return cls(
            asr,
            parties=parties,
            sinks_open=sinks_open,
            language=call.language,
            sample_rate=sample_rate,
            vad=vad,
            phrases=phrases,
            decision=plan.decision,
            live=live,
        )

    @property
    def active(self) -> bool:
        return self.asr is not None and not self._closed

    def _new_party(self, name: str) -> _Party:
        return _Party(name, VadSegmenter(name, self.sample_rate, self._vad), self._backlog)

    def _ids(self, p: _Party) -> dict[str, str | None]:
        call_id = None if self.decision is None else self.decision.call_id
        return {"call_id": call_id, "party": p.name}

    def stats(self, party: str) -> PartyStats:
        return self._parties[party].stats

    # --- subscribers -------------------------------------------------------------

    def subscribe(self, maxsize: int = 100) -> TranscriptSubscription:
        subscription = TranscriptSubscription(maxsize)
        if self._closed:
            subscription.offer(None)
        else:
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: TranscriptSubscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
        subscription.offer(None)

    def _publish(self, event: TranscriptEvent) -> None:
        for subscription in self._subscribers:
            subscription.offer(event)

    # --- audio in ----------------------------------------------------------------

    def push(self, party: str, pcm: bytes, t: float) -> None:
        """One frame of ``party`` starting at ``t`` on the call's clock; never waits."""
        p = self._parties.get(party)
        if p is None or not self.active or p.failed:
            return
        p.stats.frames += 1
        p.last_t = t
        if not self._sinks_open(party, t):
            if p.gate_open:
                self._discard(p)
            p.stats.blocked_frames += 1
            return
        p.gate_open = True
        events = p.segmenter.push(pcm, t)
        if self.live:
            self._stream_live(p, pcm, t, events)
            return
        for event in events:
            if isinstance(event, Segment):
                self._enqueue(p, event)

    def push_frame(self, frame: TapFrame) -> None:
        if frame.sample_rate != self.sample_rate:
            raise ValueError(f"tap frame at {frame.sample_rate} Hz, expected {self.sample_rate}")
        self.push(frame.party, frame.pcm, frame.time)

    async def consume(self, frames: AsyncIterable[TapFrame]) -> None:
        """Feed frames from a tap consumer until it ends."""
        async for frame in frames:
            self.push_frame(frame)

    def _stream_live(self, p: _Party, pcm: bytes, t: float, events: list[VadEvent]) -> None:
        """Live mode: send the utterance as it is spoken (module docstring)."""
        keep = (self._vad.pre_roll_ms + self._vad.min_utterance_ms) / 1000 + 0.1
        if p.recent and t - p.recent[-1][0] >= 1.5 * len(pcm) / (2 * self.sample_rate):
            # Ticks were skipped (the VAD broke there too): no pre-roll from before the gap.
            p.recent.clear()
        p.recent.append((t, pcm))
        while p.recent and p.recent[0][0] < t - keep:
            p.recent.popleft()
        sent_this_frame = False
        for event in events:
            if isinstance(event, Segment):
                p.stats.utterances += 1
                if p.streaming:
                    p.streaming = False
                    self._enqueue_live(p, _END)
            elif isinstance(event, SpeechStart):
                # The VAD's pre-roll and the candidate frames up to this one; after a
                # max-length split the next piece starts here, with nothing before it.
                since = event.t - self._vad.pre_roll_ms / 1000 if event.t <= t else event.t
                first = [(ft, f) for ft, f in p.recent if ft >= since - 1e-6]
                start = first[0][0] if first else event.t
                p.streaming = True
                sent_this_frame = True
                self._enqueue_live(p, _Chunk(b"".join(f for _, f in first), start))
        if p.streaming and not sent_this_frame:
            self._enqueue_live(p, _Chunk(pcm, None))

    def _enqueue_live(self, p: _Party, item: _Chunk | _EndUtterance) -> None:
        if isinstance(item, _Chunk) and (
            p.backlog.qsize() >= p.backlog_limit * _LIVE_ITEMS_PER_SEGMENT
        ):
            # The ASR is too far behind: give up on this utterance, finalise what it has.
            p.stats.dropped_segments += 1
            p.streaming = False
            log.warning("transcription.backlog_full", extra=self._ids(p))
            item = _END
        p.backlog.put_nowait(item)
        if p.worker is None:
            p.worker = asyncio.get_running_loop().create_task(self._work(p))

    def _discard(self, p: _Party) -> None:
        # Closed gate: forget the utterance in progress and anything not yet sent.
        # A fresh segmenter also forgets the pre-roll captured before the pause.
        p.gate_open = False
        discarded = int(p.segmenter.in_speech)
        p.segmenter = VadSegmenter(p.name, self.sample_rate, self._vad)
        while not p.backlog.empty():
            if isinstance(p.backlog.get_nowait(), Segment):
                discarded += 1
        p.recent.clear()
        if p.streaming:
            # Live: part of the utterance already went out; end it there, send no more.
            p.streaming = False
            self._enqueue_live(p, _END)
        p.stats.discarded_utterances += discarded
        if discarded:
            log.info("transcription.discarded", extra={**self._ids(p), "utterances": discarded})

    def _enqueue(self, p: _Party, segment: Segment) -> None:
        p.stats.utterances += 1
        if p.backlog.qsize() >= p.backlog_limit:
            p.stats.dropped_segments += 1
            log.warning("transcription.backlog_full", extra=self._ids(p))
            return
        p.backlog.put_nowait(segment)
        if p.worker is None:
            p.worker = asyncio.get_running_loop().create_task(self._work(p))

    # --- ASR side ------------------------------------------------------------------

    async def _work(self, p: _Party) -> None:
        while (item := await p.backlog.get()) is not None:
            try:
                if isinstance(item, Segment):
                    await self._send(p, item)
                elif isinstance(item, _Chunk):
                    await self._send_chunk(p, item)
                else:
                    await self._end_utterance(p)
            except ProviderError as exc:
                # Every eligible provider failed: transcription ends for this party,
                # the call goes on.
                p.failed = True
                log.warning(
                    "transcription.unavailable", extra={**self._ids(p), "error": type(exc).__name__}
                )
                return

    async def _stream_of(self, p: _Party) -> AsrStream:
        stream = p.stream
        if stream is None:
            assert self.asr is not None
            stream = p.stream = await self.asr.open_stream(
                language=self.language,
                sample_rate=self.sample_rate,
                party=p.name,
                phrases=self._phrases,
            )
            p.pump = asyncio.get_running_loop().create_task(self._pump(p, stream))
        return stream

    async def _send_chunk(self, p: _Party, chunk: _Chunk) -> None:
        stream = await self._stream_of(p)
        if not self._sinks_open(p.name):
            return  # the gate closed while this waited: the discard queued the utterance's end
        if chunk.start is not None:
            p.spans.append(_Span(p.stream_time, chunk.start))
        size = self._push_bytes
        for i in range(0, len(chunk.pcm), size):
            stream.push(chunk.pcm[i : i + size])
        samples = len(chunk.pcm) // 2
        p.stream_time += samples / self.sample_rate
        p.stats.samples_sent += samples

    async def _end_utterance(self, p: _Party) -> None:
        if p.stream is not None:
            p.stats.segments += 1
            await p.stream.flush()

    async def _send(self, p: _Party, segment: Segment) -> None:
        stream = await self._stream_of(p)
        # Asked again at the last moment: the gate may have closed while this segment
        # waited in the backlog or while the stream was opening.
        if not self._sinks_open(p.name):
            p.stats.discarded_utterances += 1
            return
        p.spans.append(_Span(p.stream_time, segment.start))
        pcm, size = segment.pcm, self._push_bytes
        for i in range(0, len(pcm), size):
            stream.push(pcm[i : i + size])
        samples = len(pcm) // 2
        p.stream_time += samples / self.sample_rate
        p.stats.samples_sent += samples
        p.stats.segments += 1
        await stream.flush()

    async def _pump(self, p: _Party, stream: AsrStream) -> None:
        try:
            async for event in stream:
                self._publish(self._on_call_clock(p, event))
        except ProviderError as exc:
            log.warning(
                "transcription.stream_failed", extra={**self._ids(p), "error": type(exc).__name__}
            )

    @staticmethod
    def _on_call_clock(p: _Party, event: TranscriptEvent) -> TranscriptEvent:
        span = p.spans[0] if p.spans else _Span(0.0, 0.0)
        for candidate in reversed(p.spans):
            if candidate.stream_start <= event.start + 1e-6:
                span = candidate
                break
        shift = span.call_start - span.stream_start
        return replace(event, start=event.start + shift, end=event.end + shift, party=p.name)

    # --- end -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """End of call: send the utterances in progress (gate permitting), drain, stop."""
        if self._closed:
            return
        self._closed = True  # frames pushed from here on are ignored
        if self.asr is not None:
            for p in self._parties.values():
                if p.failed:
                    continue
                if self._sinks_open(p.name):
                    for event in p.segmenter.finish(p.last_t):
                        if isinstance(event, Segment) and not self.live:
                            self._enqueue(p, event)
                    if p.streaming:
                        p.streaming = False
                        p.stats.utterances += 1
                        self._enqueue_live(p, _END)
                else:
                    self._discard(p)
            await asyncio.gather(*(self._stop(p) for p in self._parties.values()))
        for subscription in self._subscribers:
            subscription.offer(None)
        self._subscribers.clear()

    async def _stop(self, p: _Party) -> None:
        if p.worker is not None:
            p.backlog.put_nowait(None)
            await p.worker
        if p.stream is not None:
            with contextlib.suppress(ProviderError):
                await p.stream.close()
        if p.pump is not None:
            await p.pump
