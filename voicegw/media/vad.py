"""Voice activity segmentation over WebRTC's VAD, sans-IO.

One :class:`VadSegmenter` per party. Feed it 16-bit mono PCM frames of 10, 20 or
30 ms with their start time; it returns the events the frame caused. Only the
resulting segments are meant to reach cloud ASR (DESIGN invariant 8).

The state machine::

    SILENCE --voiced--> CANDIDATE --voiced span >= min_utterance--> SPEECH
       ^                   | unvoiced >= hang-over (too short:       | unvoiced >= hang-over
       +-------------------+ dropped, no events)                    | or length >= max_utterance
       +------------------------------------------------------------+

``SpeechStart`` is emitted when a candidate becomes speech, i.e. ``min_utterance_ms``
after the onset, but carries the onset time: brief clicks and coughs then never
produce a start without a segment.

Frames are expected contiguous (a jitter buffer upstream conceals losses). A
frame starting half a frame or more after the previous one ended (the media
clock skipped ticks after a stall) is a break: an utterance in progress ends
where its voice ended, a candidate and the pre-roll are forgotten, so a
segment's audio always runs without a hole from its start to its end. WebRTC
VAD smooths its own decisions over a few frames, so a segment's end lands up to
~150 ms after the voice stops, before ``hangover_ms`` is added.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, auto

import webrtcvad

SAMPLE_RATES = (8000, 16000)
FRAME_MS = (10, 20, 30)


@dataclass(frozen=True)
class VadSettings:
    aggressiveness: int = 2
    pre_roll_ms: int = 300
    hangover_ms: int = 400
    min_utterance_ms: int = 200
    max_utterance_ms: int = 15_000

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        for name in ("pre_roll_ms", "hangover_ms", "min_utterance_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_utterance_ms <= self.min_utterance_ms:
            raise ValueError("max_utterance_ms must exceed min_utterance_ms")


@dataclass(frozen=True)
class SpeechStart:
    party: str
    t: float


@dataclass(frozen=True)
class SpeechEnd:
    party: str
    t: float


@dataclass(frozen=True)
class Segment:
    """One utterance: ``pcm`` covers ``[start, end)``, pre-roll included."""

    party: str
    start: float
    end: float
    pcm: bytes
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.end - self.start


VadEvent = SpeechStart | SpeechEnd | Segment


class _State(Enum):
    SILENCE = auto()
    CANDIDATE = auto()
    SPEECH = auto()


@dataclass(frozen=True)
class _Frame:
    t: float
    pcm: bytes


class VadSegmenter:
    """Per-party speech segmenter. ``push(frame, t)`` returns the events it caused."""

    def __init__(self, party: str, sample_rate: int, settings: VadSettings | None = None) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample rate must be one of {SAMPLE_RATES}, not {sample_rate}")
        self.party = party
        self.sample_rate = sample_rate
        self.settings = settings or VadSettings()
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        self._frame_bytes = {sample_rate * ms // 1000 * 2: ms for ms in FRAME_MS}
        self._state = _State.SILENCE
        # Frames before the onset; bounded by pre-roll, sized once the frame length is known.
        self._pre_roll: deque[_Frame] = deque()
        self._utterance: list[_Frame] = []
        self._onset = 0.0
        self._last_voiced_end = 0.0
        self._pre_roll_start = 0.0
        self._last_frame_end = 0.0

    def push(self, frame: bytes, t: float) -> list[VadEvent]:
        """Classify one frame starting at ``t`` seconds and advance the state machine."""
        ms = self._frame_bytes.get(len(frame))
        if ms is None:
            raise ValueError(
                f"frame of {len(frame)} bytes is not 10, 20 or 30 ms of 16-bit PCM "
                f"at {self.sample_rate} Hz"
            )
        end = t + ms / 1000
        broken = self._break() if t - self._last_frame_end >= ms / 2000 else None
        self._last_frame_end = end
        voiced = self._vad.is_speech(frame, self.sample_rate)
        item = _Frame(t, frame)
        events = _STEPS[self._state](self, item, end, voiced)
        return [*broken, *events] if broken else events

    def finish(self, t: float) -> list[VadEvent]:
        """End of stream at ``t``: close an utterance in progress, drop a candidate."""
        events: list[VadEvent] = []
        if self._state is _State.SPEECH:
            events = self._close()
        self._reset()
        return events

    @property
    def in_speech(self) -> bool:
        return self._state is _State.SPEECH

    # --- state steps -------------------------------------------------------------

    def _step_silence(self, item: _Frame, end: float, voiced: bool) -> list[VadEvent]:
        if not voiced:
            self._remember(item)
            return []
        self._state = _State.CANDIDATE
        self._onset = item.t
        self._pre_roll_start = self._pre_roll[0].t if self._pre_roll else item.t
        self._utterance = [*self._pre_roll, item]
        self._pre_roll.clear()
        self._last_voiced_end = end
        return self._maybe_confirm()

    def _step_candidate(self, item: _Frame, end: float, voiced: bool) -> list[VadEvent]:
        self._utterance.append(item)
        if voiced:
            self._last_voiced_end = end
            return self._maybe_confirm()
        if self._silent_for(end) >= self.settings.hangover_ms:
            # Too short to be speech: its frames become pre-roll for what follows.
            frames = self._utterance
            self._reset()
            for frame in frames:
                self._remember(frame)
        return []

    def _step_speech(self, item: _Frame, end: float, voiced: bool) -> list[VadEvent]:
        self._utterance.append(item)
        if voiced:
            self._last_voiced_end = end
            if _ms(end - self._pre_roll_start) >= self.settings.max_utterance_ms:
                return self._split(end)
            return []
        if self._silent_for(end) >= self.settings.hangover_ms:
            events = self._close()
            self._reset()
            return events
        return []

    # --- helpers -----------------------------------------------------------------

    def _maybe_confirm(self) -> list[VadEvent]:
        if _ms(self._last_voiced_end - self._onset) < self.settings.min_utterance_ms:
            return []
        self._state = _State.SPEECH
        return [SpeechStart(self.party, self._onset)]

    def _silent_for(self, end: float) -> float:
        return _ms(end - self._last_voiced_end)

    def _close(self) -> list[VadEvent]:
        start = self._pre_roll_start
        stop = self._last_voiced_end
        pcm = b"".join(f.pcm for f in self._utterance if f.t < stop - 1e-9)
        return [
            SpeechEnd(self.party, stop),
            Segment(self.party, start, stop, pcm, self.sample_rate),
        ]

    def _split(self, end: float) -> list[VadEvent]:
        # A monologue longer than max_utterance is cut so downstream ASR gets bounded
        # segments; the next piece continues without pre-roll (it is contiguous).
        events = self._close()
        self._utterance = []
        self._onset = self._pre_roll_start = end
        self._last_voiced_end = end
        events.append(SpeechStart(self.party, end))
        return events

    def _remember(self, item: _Frame) -> None:
        self._pre_roll.append(item)
        while self._pre_roll and (
            _ms(self._last_frame_end - self._pre_roll[0].t) > self.settings.pre_roll_ms
        ):
            self._pre_roll.popleft()

    def _reset(self) -> None:
        self._state = _State.SILENCE
        self._utterance = []

    def _break(self) -> list[VadEvent]:
        """A gap before this frame: what came before cannot run on into it."""
        events = self._close() if self._state is _State.SPEECH else []
        self._reset()
        self._pre_roll.clear()
        return events


def _ms(seconds: float) -> float:
    """Seconds to milliseconds, rounded to the microsecond.

    Frame times are sums of floats: without rounding, the same audio could end an
    utterance at 399.99999 ms of silence when its clock starts at 100 s and at
    400 ms when it starts at 0, and so segment differently.
    """
    return round(seconds * 1000, 3)


_STEPS = {
    _State.SILENCE: VadSegmenter._step_silence,
    _State.CANDIDATE: VadSegmenter._step_candidate,
    _State.SPEECH: VadSegmenter._step_speech,
}
